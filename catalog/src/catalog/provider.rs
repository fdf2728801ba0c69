//! DataFusion's view of the persisted catalog: one [`CatalogProvider`] whose schemas and
//! tables are exactly what [`CatalogStore`] holds. Nothing is registered by hand anywhere else,
//! so what a query sees is what survives a restart.
//!
//! Managed tables are read at their newest Delta version on every lookup (a query never sees
//! a stale snapshot): the table opened last time is kept, and one HEAD of its next log file
//! tells whether it is still the newest; only then is the log read again, from where it was.
//! A version is resolved once into its data files ([`crate::delta::ManagedTable`]), so a scan
//! plans plain Parquet reads without replaying the log.
//! External tables and views are re-planned from their stored statement and cached per catalog
//! version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use datafusion::logical_expr::CreateExternalTable;

use deltalake::DeltaTable;

use super::state::{CatalogState, TableEntry};
use super::store::CatalogStore;
use crate::error::{Error, Result};

/// Shared by the catalog provider and each schema provider.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<CatalogStore>,
    /// A session used to re-plan views and external tables; set once the engine is built.
    pub(crate) planner: OnceLock<SessionState>,
    /// The same session without catalogs, for re-planning external table definitions.
    pub(crate) detached: OnceLock<SessionState>,
    cache: Mutex<HashMap<(String, String), CachedProvider>>,
    /// Managed tables by location, as last opened.
    managed: Mutex<HashMap<String, OpenedTable>>,
}

/// A managed table's Delta table at the version it was read, and its provider at that version.
#[derive(Clone)]
struct OpenedTable {
    table: DeltaTable,
    provider: Arc<dyn TableProvider>,
}

impl std::fmt::Debug for OpenedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedTable").field("version", &self.table.version()).finish()
    }
}

/// A re-planned external table or view and the catalog version it was planned at.
type CachedProvider = (u64, Arc<dyn TableProvider>);

impl Shared {
    pub(crate) fn new(store: Arc<CatalogStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            planner: OnceLock::new(),
            detached: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
            managed: Mutex::new(HashMap::new()),
        })
    }

    fn planner(&self) -> DfResult<&SessionState> {
        self.planner
            .get()
            .ok_or_else(|| DataFusionError::Internal("catalog planner used before the engine was built".into()))
    }

    /// Open what `schema.table` refers to, or `None` if it does not exist.
    pub(crate) async fn open(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let snapshot = self.store.snapshot();
        let Some(entry) = snapshot.table(schema, table).cloned() else {
            return Ok(None);
        };
        let key = (schema.to_string(), table.to_string());
        if !matches!(entry, TableEntry::Managed { .. })
            && let Some((v, p)) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned())
            && v == snapshot.version
        {
            return Ok(Some(p));
        }
        let provider = match &entry {
            TableEntry::Managed { location, .. } => self.managed(location, &snapshot).await?,
            TableEntry::External { sql, .. } => {
                let state = self.detached.get().ok_or_else(|| {
                    DataFusionError::Internal("catalog planner used before the engine was built".into())
                })?;
                match plan_one(state, sql).await? {
                    LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => {
                        external_table_provider(state, &cmd).await?
                    }
                    other => {
                        return Err(corrupt(schema, table, format!("not CREATE EXTERNAL TABLE: {}", other.display())));
                    }
                }
            }
            TableEntry::View { sql } => {
                let state = self.planner()?;
                match plan_one(state, sql).await? {
                    LogicalPlan::Ddl(DdlStatement::CreateView(v)) => {
                        Arc::new(ViewTable::new((*v.input).clone(), v.definition.clone())) as Arc<dyn TableProvider>
                    }
                    other => {
                        return Err(corrupt(schema, table, format!("not CREATE VIEW: {}", other.display())));
                    }
                }
            }
        };
        if !matches!(entry, TableEntry::Managed { .. })
            && let Ok(mut c) = self.cache.lock()
        {
            c.insert(key, (snapshot.version, provider.clone()));
        }
        Ok(Some(provider))
    }
}

impl Shared {
    /// The provider of the managed table at `location` at its newest version.
    async fn managed(&self, location: &str, catalog: &CatalogState) -> Result<Arc<dyn TableProvider>> {
        let warehouse = self.store.warehouse();
        let opened = self.managed.lock().ok().and_then(|m| m.get(location).cloned());
        let table = match opened {
            Some(opened) => {
                let version = opened.table.version().unwrap_or(0);
                if !crate::delta::has_commit(warehouse, location, version + 1).await? {
                    return Ok(opened.provider);
                }
                let mut table = opened.table;
                table.update_incremental(None).await?;
                table
            }
            None => crate::delta::open_table(warehouse, location).await?,
        };
        let delta = table.table_provider().await?;
        let provider: Arc<dyn TableProvider> = Arc::new(crate::delta::ManagedTable::new(&table, delta)?);
        if let Ok(mut m) = self.managed.lock() {
            // Tables dropped since are forgotten here too.
            m.retain(|l, _| catalog.has_location(l));
            let newer = m.get(location).is_some_and(|o| o.table.version() > table.version());
            if !newer {
                m.insert(location.to_string(), OpenedTable { table, provider: provider.clone() });
            }
        }
        Ok(provider)
    }
}

/// Plan a single stored statement.
async fn plan_one(state: &SessionState, sql: &str) -> Result<LogicalPlan> {
    let mut stmts = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    let stmt = stmts.pop_front().ok_or_else(|| Error::internal(format!("empty stored statement: {sql}")))?;
    Ok(state.statement_to_plan(stmt).await?)
}

fn corrupt(schema: &str, table: &str, detail: String) -> Error {
    Error::Corrupt { path: format!("the stored definition of {schema}.{table}"), detail }
}

/// Build the table provider for an external table definition with DataFusion's file factories.
pub(crate) async fn external_table_provider(
    state: &SessionState,
    cmd: &CreateExternalTable,
) -> Result<Arc<dyn TableProvider>> {
    let file_type = cmd.file_type.to_uppercase();
    let factory = state.table_factories().get(file_type.as_str()).ok_or_else(|| {
        Error::invalid(format!("unknown file format '{}': use PARQUET, CSV, JSON, AVRO or JSON_API", cmd.file_type))
    })?;
    Ok(factory.create(state, cmd).await?)
}

/// The warehouse as a DataFusion catalog: the stored schemas, and the reserved `system` schema.
#[derive(Debug)]
pub struct WarehouseCatalog {
    shared: Arc<Shared>,
    system: Arc<dyn SchemaProvider>,
}

impl WarehouseCatalog {
    pub(crate) fn new(shared: Arc<Shared>, system: Arc<dyn SchemaProvider>) -> Self {
        Self { shared, system }
    }
}

impl CatalogProvider for WarehouseCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.store.snapshot().schemas.keys().cloned().collect();
        names.push(crate::system::SYSTEM_SCHEMA.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == crate::system::SYSTEM_SCHEMA {
            Some(self.system.clone())
        } else if self.shared.store.snapshot().schemas.contains_key(name) {
            Some(Arc::new(WarehouseSchema { name: name.to_string(), shared: self.shared.clone() }))
        } else {
            None
        }
    }

    fn register_schema(
        &self,
        name: &str,
        _schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        Err(DataFusionError::Plan(format!(
            "schema '{name}' can only be created with CREATE SCHEMA through the warehouse"
        )))
    }
}

/// One schema of the warehouse.
#[derive(Debug)]
pub struct WarehouseSchema {
    name: String,
    shared: Arc<Shared>,
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        self.shared
            .store
            .snapshot()
            .schemas
            .get(&self.name)
            .map(|s| s.tables.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.shared.open(&self.name, name).await.map_err(Error::into_datafusion)
    }

    fn register_table(&self, name: String, _table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "table '{name}' can only be created with CREATE TABLE through the warehouse"
        )))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.shared.store.snapshot().table(&self.name, name).is_some()
    }
}
