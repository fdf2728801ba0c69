//! Building the engine and the sessions statements run in.
//!
//! - [`engine`]: [`Engine`], the one engine builder every entry point uses (server, CLI,
//!   scheduler): memory pool, spill folder, object stores, functions, the persistent catalog;
//! - [`query`]: [`Session`], one caller's session with its own per-query pool and the
//!   statistics of what it ran (peak memory, spills);
//! - [`pool`]: the per-query pool inside the global one;
//! - [`joins`]: the memory-aware hash / sort-merge join choice.

pub mod engine;
pub mod joins;
pub mod pool;
pub mod query;

pub use engine::{CLUSTER_JOB_NODE, ClusterHook, Engine, EngineConfig, memory_scaled_sizes};
pub use query::{Origin, QueryStats, Session};
