//! StreamPulse's catalog and storage layer.
//!
//! - [`storage`]: where the warehouse lives (local folder or S3) and how to reach it;
//! - [`state`]: the persisted catalog (schemas, tables, views, users), committed atomically;
//! - [`provider`]: that catalog as DataFusion sees it: the only door through which tables
//!   enter the engine;
//! - [`engine`]: the one engine builder used by every entry point, and DDL execution.
//!
//! This crate knows storage and tables, not networks: the Flight SQL service lives in
//! `streampulse-server`, and a Ballista executor can link this crate without it.

pub mod engine;
pub mod error;
pub mod memory;
pub mod provider;
pub mod state;
pub mod storage;

pub use engine::{CATALOG_NAME, Engine, EngineConfig, IngestMode, Planned, StatementKind};
pub use error::{CatalogError, Result};
pub use state::{CatalogState, CatalogStore, DEFAULT_SCHEMA, TableEntry, UserEntry};
pub use storage::{S3Config, Warehouse};
