//! The reserved `system` schema: tables that show the process's own state, snapshotted on
//! every scan. Today `system.queries` ([`queries`]); the scheduler's `system.tasks` and
//! `system.runs` join here. No user schema may be called `system`.

pub mod queries;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};

pub use queries::{QueryHandle, QueryLog, QueryRecord, QueryState};

/// The reserved schema's name.
pub const SYSTEM_SCHEMA: &str = "system";

/// The tables of the `system` schema.
pub const SYSTEM_TABLES: [&str; 1] = ["queries"];

/// DataFusion's view of the `system` schema.
#[derive(Debug)]
pub struct SystemSchema {
    queries: Arc<QueryLog>,
}

impl SystemSchema {
    pub fn new(queries: Arc<QueryLog>) -> Self {
        Self { queries }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SYSTEM_TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "queries" => {
                let batch = self.queries.batch().map_err(|e| e.into_datafusion())?;
                Ok(Some(Arc::new(MemTable::try_new(QueryLog::schema(), vec![vec![batch]])?)))
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
