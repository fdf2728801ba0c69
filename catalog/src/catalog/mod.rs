//! The persisted catalog: what it holds ([`state`]), how it is stored and committed
//! ([`store`]), and how DataFusion sees it ([`provider`]: the only door through which tables
//! enter the engine, so what a query sees is what survives a restart).

pub mod provider;
pub mod state;
pub mod store;

pub use state::{CatalogState, DEFAULT_SCHEMA, PipeEntry, Role, SchemaEntry, TableEntry, TaskEntry, UserEntry};
pub use store::{CATALOG_DIR, CatalogStore};

/// The name of the one catalog (Flight SQL "catalog", SQL `catalog.schema.table`).
pub const CATALOG_NAME: &str = "streampulse";
