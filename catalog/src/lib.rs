//! The StreamPulse warehouse core: catalog, sessions, SQL, DDL, DML and Delta storage.
//!
//! This crate knows storage and tables, not networks: the Flight SQL service, the CLI and the
//! scheduler live in `streampulse-server` and call in here, and a Ballista executor can link
//! this crate without them. Folders name what they do:
//!
//! | module | what is there |
//! |---|---|
//! | [`catalog`] | the persisted catalog (state, store, DataFusion's view of it) |
//! | [`session`] | the engine builder, per-query memory pools, session statistics |
//! | [`sql`] | statement splitting, `${param}`s, planning, **the one script runner** |
//! | [`ddl`] | CREATE / DROP of schemas, managed and external tables, views |
//! | [`dml`] | INSERT OVERWRITE, UPDATE / DELETE, MERGE INTO, bulk load |
//! | [`sources`] | data that is not files: `STORED AS JSON_API` (paged HTTP APIs) and its allow-list |
//! | [`delta`] | Delta tables: opening, types, staging files, creating and removing folders |
//! | [`storage`] | where the warehouse lives (local or S3) and how to reach it |
//! | [`schedule`] | tasks: schedules, the task statements, runs, the journal, the scheduler |
//! | [`ingest`] | `COPY INTO` and pipes: exactly-once loads of landing files, the ledger, maintenance |
//! | [`system`] | the reserved `system` schema: queries, tasks, runs, copy history, load errors, pipes |
//! | [`error`] | the one error type, by kind |
//!
//! Dependencies run one way: `error` ← `storage` ← `delta` ← `catalog` ← `sources` ←
//! `session` ← `ddl`, `dml`, `ingest` ← `sql` ← `schedule`; `system` reads `session`'s statistics and the journal,
//! and the engine owns the query log and the task runtime.

pub mod catalog;
pub mod ddl;
pub mod delta;
pub mod dml;
pub mod error;
pub mod ingest;
pub mod schedule;
pub mod session;
pub mod sources;
pub mod sql;
pub mod storage;
pub mod system;

pub use catalog::{CATALOG_NAME, CatalogState, CatalogStore, DEFAULT_SCHEMA, Role, TableEntry, UserEntry};
pub use delta::{FileListTable, ManagedTable};
pub use dml::LoadMode;
pub use error::{Error, ErrorKind, Result};
pub use session::{CLUSTER_JOB_NODE, ClusterHook, Engine, EngineConfig, Origin, QueryStats, Session};
pub use sql::{Planned, ScriptError, StatementKind, StatementOutput, StatementReport};
pub use storage::{S3Config, Warehouse};
pub use system::{QueryHandle, QueryLog, QueryState};
