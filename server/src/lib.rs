//! The `streampulse` binary's library: configuration, authentication, the Flight SQL service
//! and the command line. It wires the engine from `streampulse-catalog` to protocols; it holds
//! no table or storage logic of its own.

pub mod auth;
pub mod cli;
pub mod config;
pub mod flight;
pub mod status;
