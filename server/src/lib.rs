//! The `streampulse` binary's library: it wires the warehouse core (`streampulse-engine`) to
//! protocols and operators; it holds no table or storage logic of its own.
//!
//! | module | what is there |
//! |---|---|
//! | [`cli`] | the command line, one file per subcommand |
//! | [`config`] | settings: flags, env vars, TOML file, defaults, the generated reference |
//! | [`auth`] | users, passwords, tokens, the one `authorization` header parser |
//! | [`admission`] | the statement queue (`--max-concurrent-queries`) |
//! | [`flight`] | the Flight SQL service and the one error → gRPC status mapping |
//! | [`serve`] | composes the services `serve` runs |
//! | [`demo`] | `serve --demo` |

pub mod admission;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod flight;
pub mod http;
pub mod serve;
