//! The reserved `system` schema: tables that show the process's own state, snapshotted on
//! every scan: `system.queries` ([`queries`], this process's recent statements) and the
//! scheduler's `system.tasks`, `system.runs` and `system.run_history` ([`tasks`], from the
//! catalog, the run journal and the rolled-up history, so every server shows the same), and
//! the loads' `system.copy_history`, `system.load_errors` and `system.pipes` ([`ingest`]). No
//! user schema may be called `system`.

pub mod ingest;
pub mod queries;
pub mod tasks;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};

pub use queries::{QueryHandle, QueryLog, QueryRecord, QueryState};

use crate::catalog::CatalogStore;
use crate::ingest::Ingest;
use crate::schedule::Tasks;

/// The reserved schema's name.
pub const SYSTEM_SCHEMA: &str = "system";

/// The tables of the `system` schema.
pub const SYSTEM_TABLES: [&str; 7] =
    ["copy_history", "load_errors", "pipes", "queries", "run_history", "runs", "tasks"];

/// DataFusion's view of the `system` schema.
#[derive(Debug)]
pub struct SystemSchema {
    queries: Arc<QueryLog>,
    tasks: Arc<Tasks>,
    catalog: Arc<CatalogStore>,
    ingest: Arc<Ingest>,
}

impl SystemSchema {
    pub fn new(queries: Arc<QueryLog>, tasks: Arc<Tasks>, catalog: Arc<CatalogStore>, ingest: Arc<Ingest>) -> Self {
        Self { queries, tasks, catalog, ingest }
    }
}

fn table(batch: arrow::array::RecordBatch) -> DfResult<Option<Arc<dyn TableProvider>>> {
    Ok(Some(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?)))
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SYSTEM_TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let df = |e: crate::error::Error| e.into_datafusion();
        match name {
            "queries" => table(self.queries.batch().map_err(df)?),
            "tasks" => {
                let catalog = self.catalog.refresh().await.map_err(df)?;
                let runs = self.tasks.journal().list(None).await.map_err(df)?;
                table(tasks::tasks_batch(&catalog, &runs).map_err(df)?)
            }
            "run_history" => Ok(Some(tasks::history_provider(self.catalog.warehouse()).await.map_err(df)?)),
            "runs" => {
                let runs = self.tasks.journal().list(None).await.map_err(df)?;
                table(tasks::runs_batch(&self.tasks, &runs).map_err(df)?)
            }
            "copy_history" | "load_errors" => {
                let catalog = self.catalog.refresh().await.map_err(df)?;
                let which = if name == "copy_history" { "history" } else { "errors" };
                table(ingest::ledger_rows(self.catalog.warehouse(), &catalog, which).await.map_err(df)?)
            }
            "pipes" => {
                let catalog = self.catalog.refresh().await.map_err(df)?;
                table(ingest::pipes_batch(&catalog, &self.ingest).map_err(df)?)
            }
            _ => Ok(None),
        }
    }

    fn register_table(&self, name: String, _table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!("schema 'system' is reserved: cannot create table '{name}' in it")))
    }

    fn table_exist(&self, name: &str) -> bool {
        SYSTEM_TABLES.contains(&name)
    }
}
