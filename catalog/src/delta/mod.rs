//! Delta tables as the warehouse uses them: opening one, the types Delta can store, staging
//! rows on disk before a write, and creating or removing a managed table's folder.
//!
//! Everything that touches deltalake's API directly lives here, so DDL, DML and the table
//! provider share one way of doing each thing.

mod files;
mod reader;
mod sink;
mod staging;
mod table;
mod types;

use std::sync::Arc;

use datafusion::execution::session_state::SessionStateBuilder;
use deltalake::DeltaTable;
use deltalake::delta_datafusion::planner::DeltaPlanner;
use object_store::ObjectStoreExt;

use crate::error::Result;
use crate::storage::Warehouse;

pub use files::{FileListTable, ManagedTable};
pub use sink::{ManagedSink, table_writer_properties};
pub use staging::Staged;
pub use table::{Source, count_rows, create_table, delete_location};
pub use types::{cast_plan_to, delta_compatible_plan, delta_compatible_schema, delta_type};

/// Open the Delta table stored at `location` (relative to the warehouse root) at its newest version.
pub async fn open_table(warehouse: &Warehouse, location: &str) -> Result<DeltaTable> {
    let url = warehouse.url(location)?;
    Ok(deltalake::open_table_with_storage_options(url, warehouse.storage_options()).await?)
}

/// Whether the Delta table at `location` has a commit numbered `version`: one HEAD of its log
/// file. Versions are consecutive, so a table read at version `v` is still the newest exactly
/// when commit `v + 1` does not exist.
pub async fn has_commit(warehouse: &Warehouse, location: &str, version: u64) -> Result<bool> {
    let path = warehouse.path(&format!("{location}/_delta_log/{version:020}.json"));
    match warehouse.store().head(&path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The caller's session (its memory pool, spill directory, functions) with deltalake's query
/// planner, which knows the plan nodes deltalake's writes, updates and deletes build.
pub fn delta_session(session: &crate::session::Session) -> Arc<dyn datafusion::catalog::Session> {
    Arc::new(
        SessionStateBuilder::new_from_existing(session.ctx().state())
            .with_runtime_env(Arc::clone(session.runtime()))
            .with_query_planner(DeltaPlanner::new())
            .build(),
    )
}
