//! The one engine builder every entry point uses (server, CLI, later the scheduler).
//!
//! [`Engine::open`] builds a DataFusion session with a bounded memory pool
//! (`FairSpillPool` inside `TrackConsumersPool`, so a failure names the biggest consumers), a
//! spill directory, object stores for local paths and any `s3://` bucket, all functions from
//! `streampulse-udfs`, and the persistent catalog as the only catalog.
//!
//! Statements are planned by DataFusion; DDL is then carried out here against the persistent
//! catalog (managed tables become Delta tables under the warehouse root), while queries and
//! DML run on DataFusion with the catalog's table providers (Delta's `insert_into` commits
//! once at the end, so a failed INSERT leaves the table exactly as it was).

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue, SchemaReference, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::spill_file::{SpillFile, SpillWriter};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DmlStatement, WriteOp};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{CreateExternalTable, CreateMemoryTable, DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{DataType as SqlDataType, HiveDistributionStyle, Statement as SqlStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
use deltalake::delta_datafusion::planner::DeltaPlanner;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use crate::error::{CatalogError, Result};
use crate::memory::{MemoryAwareJoinSelection, QueryPool};
use crate::provider::{Shared, WarehouseCatalog};
use crate::state::{CatalogState, CatalogStore, DEFAULT_SCHEMA, TableEntry};
use crate::storage::{S3Config, Warehouse};

/// The name of the one catalog (Flight SQL "catalog", SQL `catalog.schema.table`).
pub const CATALOG_NAME: &str = "streampulse";

/// Everything needed to build an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Local folder or `s3://bucket/prefix`.
    pub warehouse: String,
    /// S3 endpoint, region and keys.
    pub s3: S3Config,
    /// Memory pool size in bytes shared by all queries.
    pub memory_limit: usize,
    /// Memory one query may reserve (within `memory_limit`); `memory_limit` when `None`.
    pub query_memory_limit: Option<usize>,
    /// Where operators spill; the OS temp folder when `None`.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes of spill files alive at once, all queries together; DataFusion's 100 GiB
    /// default when `None`.
    pub spill_max_size: Option<u64>,
    /// Spill file compression: `uncompressed`, `lz4_frame` or `zstd`.
    pub spill_compression: Option<String>,
    /// Partitions per query; the number of cores when `None`.
    pub target_partitions: Option<usize>,
}

impl EngineConfig {
    /// A config for `warehouse` with the given memory limit and defaults for the rest.
    pub fn new(warehouse: impl Into<String>, memory_limit: usize) -> Self {
        Self {
            warehouse: warehouse.into(),
            s3: S3Config::default(),
            memory_limit,
            query_memory_limit: None,
            spill_dir: None,
            spill_max_size: None,
            spill_compression: None,
            target_partitions: None,
        }
    }
}

/// What kind of statement was planned: decides how a protocol runs and answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Produces rows.
    Query,
    /// Changes data; answers a row count.
    Dml,
    /// Changes the catalog.
    Ddl,
    /// Changes the session (SET).
    Session,
}

/// A planned statement, not yet run.
#[derive(Debug, Clone)]
pub enum Planned {
    /// SELECT, SHOW, EXPLAIN, ...
    Query(LogicalPlan),
    /// INSERT, COPY.
    Dml(LogicalPlan),
    /// CREATE / DROP of schemas, tables, views.
    Ddl(Box<Ddl>),
    /// SET and other session statements.
    Session(LogicalPlan),
}

/// A DDL statement with what DataFusion's plan does not carry.
#[derive(Debug, Clone)]
pub struct Ddl {
    /// The planned statement.
    pub statement: DdlStatement,
    /// `PARTITIONED BY` columns of a `CREATE TABLE`.
    pub partition_columns: Vec<String>,
    /// The statement text, stored for external tables and views.
    pub sql: String,
}

impl Planned {
    /// The statement's kind.
    pub fn kind(&self) -> StatementKind {
        match self {
            Planned::Query(_) => StatementKind::Query,
            Planned::Dml(_) => StatementKind::Dml,
            Planned::Ddl(_) => StatementKind::Ddl,
            Planned::Session(_) => StatementKind::Session,
        }
    }

    /// Whether running it can change data or the catalog. True for DDL and DML, and for a
    /// query that wraps a write (`EXPLAIN ANALYZE INSERT ...` executes the insert).
    pub fn writes(&self) -> bool {
        match self {
            Planned::Ddl(_) | Planned::Dml(_) => true,
            Planned::Session(_) => false,
            Planned::Query(plan) => {
                let mut writes = false;
                let _ = plan.apply_with_subqueries(|p| {
                    if matches!(p, LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Ddl(_)) {
                        writes = true;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                writes
            }
        }
    }

    /// The logical plan, for queries, DML and session statements.
    pub fn logical_plan(&self) -> Option<&LogicalPlan> {
        match self {
            Planned::Query(p) | Planned::Dml(p) | Planned::Session(p) => Some(p),
            Planned::Ddl(_) => None,
        }
    }
}

/// Schema of the single-row answer to DML: `count UInt64`.
pub fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

/// The warehouse engine: catalog + DataFusion session template.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<CatalogStore>,
    base: SessionState,
    memory_limit: usize,
    /// The server-wide pool every query's [`QueryPool`] draws from.
    global_pool: Arc<dyn MemoryPool>,
    query_memory_limit: usize,
}

/// What one statement cost: its peak reserved memory and what it spilled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Highest total the statement's operators had reserved in the memory pool, in bytes.
    pub peak_memory: usize,
    /// Spill files written.
    pub spill_count: usize,
    /// Bytes written to spill files.
    pub spilled_bytes: usize,
}

/// Batch size and sort merge reservation for a per-query cap. A plan registers dozens of
/// spilling operators (each partition of each sort, aggregate and join), and the fair pool gives
/// each an equal share; under a small cap a share must still hold one batch and a sort must
/// still reserve room to merge its spills. DataFusion's defaults (8,192 rows, 10 MiB) assume
/// gigabytes: from 1 GiB down they shrink in proportion, to at least 1,024 rows and 256 KiB.
pub fn memory_scaled_sizes(query_memory_limit: usize) -> (usize, usize) {
    const GIB: usize = 1 << 30;
    let scale = |full: usize, floor: usize| {
        if query_memory_limit >= GIB { full } else { (full as u128 * query_memory_limit as u128 / GIB as u128) as usize }
            .max(floor)
    };
    (scale(8192, 1024), scale(10 << 20, 256 << 10))
}

/// Spill files and bytes written by every operator of an executed plan.
fn plan_spills(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
    let (mut count, mut bytes) = plan
        .metrics()
        .map_or((0, 0), |m| (m.spill_count().unwrap_or(0), m.spilled_bytes().unwrap_or(0)));
    for child in plan.children() {
        let (c, b) = plan_spills(child);
        count += c;
        bytes += b;
    }
    (count, bytes)
}

impl Engine {
    /// Build the engine over the warehouse described by `config`.
    pub async fn open(config: EngineConfig) -> Result<Self> {
        let warehouse = Warehouse::open(&config.warehouse, config.s3.clone())?;
        let store = Arc::new(CatalogStore::open(warehouse.clone()).await?);

        let top_consumers = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        let pool: Arc<dyn MemoryPool> =
            Arc::new(TrackConsumersPool::new(FairSpillPool::new(config.memory_limit), top_consumers));
        let query_memory_limit = config.query_memory_limit.unwrap_or(config.memory_limit).min(config.memory_limit);
        let disk = match &config.spill_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    CatalogError::Config(format!("cannot create spill folder {}: {e}", dir.display()))
                })?;
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.clone()]))
            }
            None => DiskManagerBuilder::default(),
        };
        let disk = match config.spill_max_size {
            Some(bytes) => disk.with_max_temp_directory_size(bytes),
            None => disk,
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool))
            .with_disk_manager_builder(disk)
            .with_object_store_registry(warehouse.object_store_registry())
            .build_arc()?;

        let mut session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_SCHEMA);
        if let Some(n) = config.target_partitions {
            session_config = session_config.with_target_partitions(n.max(1));
        }
        // Plain Utf8 everywhere: Delta and older Flight SQL clients do not know the view types.
        session_config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        session_config.options_mut().execution.parquet.schema_force_view_types = false;
        if let Some(compression) = &config.spill_compression {
            session_config
                .options_mut()
                .set("datafusion.execution.spill_compression", compression)
                .map_err(|e| CatalogError::Config(format!("spill compression '{compression}': {e}")))?;
        }

        let shared = Shared::new(store.clone());
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(CATALOG_NAME.to_string(), Arc::new(WarehouseCatalog::new(shared.clone())));

        // The default physical rules, with the memory-aware join choice right after DataFusion's
        // own join selection (see memory::MemoryAwareJoinSelection).
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == MemoryAwareJoinSelection::AFTER)
            .map_or(0, |i| i + 1);
        rules.insert(at, Arc::new(MemoryAwareJoinSelection::new(query_memory_limit)));
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .with_catalog_list(catalogs)
            .build();
        let ctx = SessionContext::new_with_state(state);
        streampulse_udfs::register_all(&ctx)?;
        let base = ctx.state();
        // The catalog re-plans views and external tables with the same functions and stores.
        let _ = shared.planner.set(base.clone());
        // External tables are re-planned without any catalog: planning CREATE EXTERNAL TABLE
        // looks its own name up, which would recurse into the very table being opened.
        let detached = SessionStateBuilder::new_from_existing(base.clone())
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let _ = shared.detached.set(detached);
        info!(
            warehouse = %warehouse.root(),
            memory_limit = config.memory_limit,
            query_memory_limit,
            spill_max_size = config.spill_max_size,
            "engine ready"
        );
        Ok(Self { store, base, memory_limit: config.memory_limit, global_pool: pool, query_memory_limit })
    }

    /// A fresh session over the shared catalog and functions, with its own [`QueryPool`]: what
    /// it runs is capped at the per-query limit inside the global pool, and its peak is kept.
    pub fn session(&self) -> SessionContext {
        let pool = Arc::new(QueryPool::new(Arc::clone(&self.global_pool), self.query_memory_limit));
        match RuntimeEnvBuilder::from_runtime_env(self.base.runtime_env()).with_memory_pool(pool).build_arc() {
            Ok(runtime) => {
                let mut config = self.base.config().clone();
                let (batch_size, sort_reservation) = memory_scaled_sizes(self.query_memory_limit);
                let options = config.options_mut();
                let batch_size = options.execution.batch_size.get().min(batch_size);
                if let Ok(size) = datafusion::common::config::ConfigNonZeroUsize::try_new(batch_size) {
                    options.execution.batch_size = size;
                }
                options.execution.sort_spill_reservation_bytes =
                    options.execution.sort_spill_reservation_bytes.min(sort_reservation);
                SessionContext::new_with_state(
                    SessionStateBuilder::new_from_existing(self.base.clone())
                        .with_config(config)
                        .with_runtime_env(runtime)
                        .build(),
                )
            }
            Err(e) => {
                warn!(error = %e, "cannot build a per-query runtime; using the shared pool alone");
                SessionContext::new_with_state(self.base.clone())
            }
        }
    }

    /// The per-query memory cap in bytes.
    pub fn query_memory_limit(&self) -> usize {
        self.query_memory_limit
    }

    /// What `ctx`'s statements cost since the last [`Engine::reset_stats`]. Spills count the
    /// plans passed to [`Engine::record_spills`] (the engine does it for the plans it runs).
    pub fn stats(ctx: &SessionContext) -> QueryStats {
        let runtime = ctx.runtime_env();
        match runtime.memory_pool.downcast_ref::<QueryPool>() {
            Some(pool) => {
                let (spill_count, spilled_bytes) = pool.spills();
                QueryStats { peak_memory: pool.peak(), spill_count, spilled_bytes }
            }
            None => QueryStats::default(),
        }
    }

    /// Start measuring the next statement of `ctx`.
    pub fn reset_stats(ctx: &SessionContext) {
        if let Some(pool) = ctx.runtime_env().memory_pool.downcast_ref::<QueryPool>() {
            pool.reset();
        }
    }

    /// Add an executed plan's spills to `ctx`'s statistics.
    pub fn record_spills(ctx: &SessionContext, plan: &Arc<dyn ExecutionPlan>) {
        if let Some(pool) = ctx.runtime_env().memory_pool.downcast_ref::<QueryPool>() {
            let (count, bytes) = plan_spills(plan);
            pool.add_spills(count, bytes);
        }
    }

    /// The persistent catalog.
    pub fn catalog(&self) -> &Arc<CatalogStore> {
        &self.store
    }

    /// The global memory pool size in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// Catch up with catalog changes made by other processes.
    pub async fn refresh(&self) -> Result<Arc<CatalogState>> {
        self.store.refresh().await
    }

    /// Split a script into statements, each with its own source text (stored verbatim for
    /// external tables and views, and shown in errors).
    pub fn parse(&self, sql: &str) -> Result<Vec<(String, DFStatement)>> {
        let mut out = Vec::new();
        for text in split_statements(sql)? {
            let mut parser = DFParserBuilder::new(text.as_str()).with_dialect(&GenericDialect {}).build()?;
            let mut statements = parser.parse_statements()?;
            match (statements.pop_front(), statements.is_empty()) {
                (None, _) => continue,
                (Some(statement), true) => out.push((text, statement)),
                (Some(_), false) => {
                    return Err(CatalogError::Unsupported(format!("cannot split statements in: {text}")));
                }
            }
        }
        Ok(out)
    }

    /// Plan one statement in `ctx`; `sql` is its source text.
    pub async fn plan(&self, ctx: &SessionContext, sql: &str, statement: DFStatement) -> Result<Planned> {
        self.store.refresh().await?;
        let sql = sql.to_string();
        let (statement, partition_columns) = take_partition_columns(statement)?;
        reject_runtime_settings(&statement)?;
        let plan = ctx.state().statement_to_plan(statement).await?;
        Ok(match plan {
            LogicalPlan::Ddl(statement) => Planned::Ddl(Box::new(Ddl { statement, partition_columns, sql })),
            LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => Planned::Dml(plan),
            LogicalPlan::Statement(_) => Planned::Session(plan),
            other => Planned::Query(other),
        })
    }

    /// Plan a single SQL statement given as text.
    pub async fn plan_sql(&self, ctx: &SessionContext, sql: &str) -> Result<Planned> {
        let mut statements = self.parse(sql)?;
        if statements.len() != 1 {
            return Err(CatalogError::Unsupported(format!(
                "expected exactly one SQL statement, found {}",
                statements.len()
            )));
        }
        let (text, statement) = statements.remove(0);
        self.plan(ctx, &text, statement).await
    }

    /// The physical plan of a query, DML or session statement.
    pub async fn physical_plan(&self, ctx: &SessionContext, plan: LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        let df = ctx.execute_logical_plan(plan).await?;
        Ok(df.create_physical_plan().await?)
    }

    /// Run a physical plan as a stream of batches.
    pub fn execute(&self, ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Result<SendableRecordBatchStream> {
        Ok(datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())?)
    }

    /// Run a DML plan to the end and return the number of rows it changed.
    pub async fn run_dml(&self, ctx: &SessionContext, plan: LogicalPlan) -> Result<u64> {
        if let LogicalPlan::Dml(dml) = &plan {
            if matches!(dml.op, WriteOp::Delete | WriteOp::Update) {
                return self.delete_or_update(ctx, dml).await;
            }
            if matches!(dml.op, WriteOp::Insert(InsertOp::Overwrite)) {
                if let Some(rows) = self.overwrite_partitions(ctx, dml).await? {
                    return Ok(rows);
                }
            }
        }
        let physical = self.physical_plan(ctx, plan).await?;
        let stream = self.execute(ctx, Arc::clone(&physical))?;
        let rows = count_rows(stream).await;
        Self::record_spills(ctx, &physical);
        rows
    }

    /// Run a planned statement whose answer is not a row stream (DDL, DML, SET).
    /// Returns the affected row count for DML, `None` otherwise.
    pub async fn run_command(&self, ctx: &SessionContext, planned: Planned) -> Result<Option<u64>> {
        match planned {
            Planned::Ddl(ddl) => {
                self.run_ddl(ctx, *ddl).await?;
                Ok(None)
            }
            Planned::Dml(plan) => Ok(Some(self.run_dml(ctx, plan).await?)),
            Planned::Session(plan) => {
                ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(None)
            }
            Planned::Query(plan) => {
                ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(None)
            }
        }
    }

    /// `INSERT OVERWRITE` into a partitioned managed table replaces only the partitions that
    /// the new rows fall in (dynamic partition overwrite), in one Delta commit: rerunning a
    /// daily job for one day replaces that day and leaves the others alone, and a failed run
    /// changes nothing. Returns `None` for tables without partitions (whole-table overwrite).
    async fn overwrite_partitions(&self, ctx: &SessionContext, dml: &DmlStatement) -> Result<Option<u64>> {
        let (schema, table) = self.resolve(ctx, &dml.table_name)?;
        let Some(TableEntry::Managed { location, partition_columns }) =
            self.store.refresh().await?.table(&schema, &table).cloned()
        else {
            return Ok(None);
        };
        if partition_columns.is_empty() {
            return Ok(None);
        }
        // The new rows stream into a staging file in the spill directory (under --spill-max-size)
        // while their distinct partition values are collected, so the output never sits in
        // memory whatever its size; then one Delta write of the staged rows replaces exactly
        // those partitions. The staging file goes when `staged` is dropped, on every path.
        let input = delta_compatible_plan((*dml.input).clone())?;
        let physical = ctx.execute_logical_plan(input).await?.create_physical_plan().await?;
        let schema = physical.schema();
        let indices = partition_columns
            .iter()
            .map(|c| schema.index_of(c).map_err(|e| CatalogError::Unsupported(format!("INSERT OVERWRITE: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let stream = datafusion::physical_plan::execute_stream(Arc::clone(&physical), ctx.task_ctx())?;
        let staging = Staged::write(ctx, stream, &indices, "INSERT OVERWRITE staging").await;
        Self::record_spills(ctx, &physical);
        let staged = staging?;
        let rows = staged.rows;
        if rows == 0 {
            return Ok(Some(0));
        }
        let predicate = staged
            .tuples
            .iter()
            .map(|tuple| {
                partition_columns
                    .iter()
                    .zip(tuple)
                    .map(|(c, v)| {
                        let column = Expr::Column(Column::new_unqualified(c.clone()));
                        if v.is_null() { column.is_null() } else { column.eq(Expr::Literal(v.clone(), None)) }
                    })
                    .reduce(Expr::and)
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|conjunctions| conjunctions.into_iter().reduce(Expr::or))
            .ok_or_else(|| CatalogError::Unsupported("INSERT OVERWRITE found no partition values".into()))?;
        let warehouse = self.store.warehouse();
        let delta = deltalake::open_table_with_storage_options(warehouse.url(&location)?, warehouse.storage_options()).await?;
        delta
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(staged.scan(ctx, &schema).await?)
            .with_session_state(delta_session(ctx))
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate)
            .await?;
        let partitions = staged.tuples.len();
        drop(staged);
        info!(schema = %schema, table = %table, rows, partitions, "partitions overwritten");
        Ok(Some(rows))
    }

    /// `DELETE` and `UPDATE` on a managed table, as one Delta commit each (deltalake rewrites
    /// only the files holding matching rows). Predicates and new values may use the table's own
    /// columns and any expression; subqueries are refused with a clear message.
    async fn delete_or_update(&self, ctx: &SessionContext, dml: &DmlStatement) -> Result<u64> {
        let (schema, table) = self.resolve(ctx, &dml.table_name)?;
        let verb = if dml.op == WriteOp::Delete { "DELETE" } else { "UPDATE" };
        let location = match self.store.refresh().await?.table(&schema, &table) {
            Some(TableEntry::Managed { location, .. }) => location.clone(),
            Some(_) => {
                return Err(CatalogError::Unsupported(format!(
                    "{verb} works on managed tables; {schema}.{table} is an external table or a view"
                )));
            }
            None => return Err(CatalogError::NotFound { kind: "table", name: format!("{schema}.{table}") }),
        };
        let (assignments, predicate) = decompose_dml_input(&dml.input, verb)?;
        let warehouse = self.store.warehouse();
        let delta =
            deltalake::open_table_with_storage_options(warehouse.url(&location)?, warehouse.storage_options()).await?;
        let rows = if dml.op == WriteOp::Delete {
            let mut builder = delta.delete();
            if let Some(p) = predicate {
                builder = builder.with_predicate(unqualify(p)?);
            }
            let (_, metrics) = builder.with_session_state(delta_session(ctx)).await?;
            metrics.num_deleted_rows.unwrap_or(0) as u64
        } else {
            let mut builder = delta.update();
            for (column, value) in assignments {
                builder = builder.with_update(column.as_str(), unqualify(value)?);
            }
            if let Some(p) = predicate {
                builder = builder.with_predicate(unqualify(p)?);
            }
            let (_, metrics) = builder.with_session_state(delta_session(ctx)).await?;
            metrics.num_updated_rows as u64
        };
        info!(schema = %schema, table = %table, rows, op = verb, "rows changed");
        Ok(rows)
    }

    /// Carry out a DDL statement against the persistent catalog.
    pub async fn run_ddl(&self, ctx: &SessionContext, ddl: Ddl) -> Result<()> {
        let Ddl { statement, partition_columns, sql } = ddl;
        match statement {
            DdlStatement::CreateCatalogSchema(c) => {
                let name = bare_schema_name(&c.schema_name)?;
                let if_not_exists = c.if_not_exists;
                self.store
                    .commit(|s| {
                        if s.schemas.contains_key(&name) {
                            return if if_not_exists {
                                Ok(())
                            } else {
                                Err(CatalogError::AlreadyExists { kind: "schema", name: name.clone() })
                            };
                        }
                        s.schemas.insert(name.clone(), Default::default());
                        Ok(())
                    })
                    .await?;
                info!(schema = %name, "schema created");
            }
            DdlStatement::DropCatalogSchema(d) => {
                let name = match &d.name {
                    SchemaReference::Bare { schema } => schema.to_string(),
                    SchemaReference::Full { schema, catalog } => {
                        check_catalog(catalog)?;
                        schema.to_string()
                    }
                };
                let (if_exists, cascade) = (d.if_exists, d.cascade);
                let before = self.store.refresh().await?;
                self.store
                    .commit(|s| match s.schemas.get(&name) {
                        None if if_exists => Ok(()),
                        None => Err(CatalogError::NotFound { kind: "schema", name: name.clone() }),
                        Some(entry) if !entry.tables.is_empty() && !cascade => Err(CatalogError::Unsupported(
                            format!("schema '{name}' is not empty: drop its tables first or use DROP SCHEMA ... CASCADE"),
                        )),
                        Some(_) => {
                            s.schemas.remove(&name);
                            Ok(())
                        }
                    })
                    .await?;
                if let Some(entry) = before.schemas.get(&name) {
                    for t in entry.tables.values() {
                        self.delete_managed_data(t).await;
                    }
                }
                info!(schema = %name, "schema dropped");
            }
            DdlStatement::CreateExternalTable(cmd) => {
                if cmd.temporary {
                    return Err(CatalogError::Unsupported("temporary tables are not supported".into()));
                }
                let (schema, table) = self.resolve(ctx, &cmd.name)?;
                // Validate now (format, location, schema inference) so a bad definition is never stored.
                external_table_provider(&ctx.state(), &cmd).await?;
                let location = cmd.locations.join(",");
                let entry = TableEntry::External { sql, location };
                self.put_entry(&schema, &table, entry, cmd.if_not_exists, cmd.or_replace, "table").await?;
                info!(schema = %schema, table = %table, "external table created");
            }
            DdlStatement::CreateView(v) => {
                if v.temporary {
                    return Err(CatalogError::Unsupported("temporary views are not supported".into()));
                }
                let (schema, table) = self.resolve(ctx, &v.name)?;
                self.check_view_cycle(ctx, &schema, &table, &sql)?;
                let entry = TableEntry::View { sql };
                self.put_entry(&schema, &table, entry, false, v.or_replace, "view").await?;
                info!(schema = %schema, view = %table, "view created");
            }
            DdlStatement::CreateMemoryTable(c) => self.create_managed(ctx, c, partition_columns).await?,
            DdlStatement::DropTable(d) => self.drop_entry(ctx, &d.name, d.if_exists, false).await?,
            DdlStatement::DropView(d) => self.drop_entry(ctx, &d.name, d.if_exists, true).await?,
            other => {
                return Err(CatalogError::Unsupported(format!("{} is not supported by this warehouse", other.name())));
            }
        }
        Ok(())
    }

    /// `(schema, table)` for a reference, defaulting the schema and checking the catalog.
    fn resolve(&self, ctx: &SessionContext, name: &TableReference) -> Result<(String, String)> {
        if let Some(catalog) = name.catalog() {
            check_catalog(catalog)?;
        }
        let schema = match name.schema() {
            Some(s) => s.to_string(),
            None => ctx.state().config_options().catalog.default_schema.clone(),
        };
        Ok((schema, name.table().to_string()))
    }

    /// Refuse a view that reads from itself, directly or through other views: loading it
    /// would never end. Follows the stored definitions of every view it references.
    fn check_view_cycle(&self, ctx: &SessionContext, schema: &str, table: &str, sql: &str) -> Result<()> {
        let state = ctx.state();
        let default_schema = state.config_options().catalog.default_schema.clone();
        let snapshot = self.store.snapshot();
        let mut pending = vec![sql.to_string()];
        let mut seen = std::collections::HashSet::new();
        while let Some(text) = pending.pop() {
            for r in view_query_references(&state, &text)? {
                if r.catalog().is_some_and(|c| c != CATALOG_NAME) {
                    continue;
                }
                let s = r.schema().unwrap_or(&default_schema).to_string();
                let t = r.table().to_string();
                if s == schema && t == table {
                    return Err(CatalogError::Unsupported(format!(
                        "view {schema}.{table} would read from itself (directly or through other views)"
                    )));
                }
                if seen.insert((s.clone(), t.clone())) {
                    if let Some(TableEntry::View { sql }) = snapshot.table(&s, &t) {
                        pending.push(sql.clone());
                    }
                }
            }
        }
        Ok(())
    }

    async fn put_entry(
        &self,
        schema: &str,
        table: &str,
        entry: TableEntry,
        if_not_exists: bool,
        or_replace: bool,
        kind: &'static str,
    ) -> Result<Option<TableEntry>> {
        let replaced = self.store.snapshot().table(schema, table).cloned();
        let committed = self
            .store
            .commit(|s| {
                let tables = &mut s.schema_mut(schema)?.tables;
                if tables.contains_key(table) && !or_replace {
                    return if if_not_exists {
                        Ok(())
                    } else {
                        Err(CatalogError::AlreadyExists { kind, name: format!("{schema}.{table}") })
                    };
                }
                tables.insert(table.to_string(), entry.clone());
                Ok(())
            })
            .await?;
        // Only a replaced managed table's files become garbage.
        if or_replace {
            if let Some(old) = &replaced {
                if committed.table(schema, table) != Some(old) {
                    self.delete_managed_data(old).await;
                }
            }
        }
        Ok(replaced)
    }

    async fn create_managed(
        &self,
        ctx: &SessionContext,
        c: CreateMemoryTable,
        partition_columns: Vec<String>,
    ) -> Result<()> {
        if c.temporary {
            return Err(CatalogError::Unsupported("temporary tables are not supported".into()));
        }
        let (schema, table) = self.resolve(ctx, &c.name)?;
        let snapshot = self.store.refresh().await?;
        if !snapshot.schemas.contains_key(&schema) {
            return Err(CatalogError::NotFound { kind: "schema", name: schema });
        }
        if snapshot.table(&schema, &table).is_some() && !c.or_replace {
            if c.if_not_exists {
                return Ok(());
            }
            return Err(CatalogError::AlreadyExists { kind: "table", name: format!("{schema}.{table}") });
        }
        let arrow_schema: Schema = c.input.schema().as_arrow().clone();
        for p in &partition_columns {
            if arrow_schema.field_with_name(p).is_err() {
                return Err(CatalogError::Unsupported(format!(
                    "PARTITIONED BY column '{p}' is not a column of {schema}.{table}"
                )));
            }
        }
        if !partition_columns.is_empty() && partition_columns.len() == arrow_schema.fields().len() {
            return Err(CatalogError::Unsupported(format!(
                "{schema}.{table} must have at least one column that is not a partition column"
            )));
        }
        let input = delta_compatible_plan((*c.input).clone())?;
        let source = if matches!(c.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row) {
            Source::Empty(Arc::new(arrow_schema))
        } else {
            Source::Plan(input, ctx.state())
        };
        let location = self.new_managed_table(&schema, &table, source, &partition_columns).await?;
        let entry = TableEntry::Managed { location: location.clone(), partition_columns };
        if let Err(e) = self.put_entry(&schema, &table, entry, c.if_not_exists, c.or_replace, "table").await {
            self.delete_location(&location).await;
            return Err(e);
        }
        info!(schema = %schema, table = %table, location = %location, "managed table created");
        Ok(())
    }

    /// Create a Delta table under a fresh folder and fill it from `source`; returns the folder.
    /// On failure the folder is removed, so nothing half-written is ever left behind.
    async fn new_managed_table(
        &self,
        schema: &str,
        table: &str,
        source: Source,
        partition_columns: &[String],
    ) -> Result<String> {
        let arrow_schema = match &source {
            Source::Empty(s) => delta_compatible_schema(s),
            Source::Plan(p, _) => Arc::new(p.schema().as_arrow().clone()),
        };
        let delta_schema: StructType = arrow_schema.as_ref().try_into_kernel().map_err(|e| {
            CatalogError::Unsupported(format!("a column type of {schema}.{table} cannot be stored in a Delta table: {e}"))
        })?;
        let warehouse = self.store.warehouse();
        let location = format!("{schema}/{table}-{}", uuid::Uuid::new_v4().simple());
        let url = warehouse.url(&location)?;
        let result: Result<()> = async {
            let delta = deltalake::operations::create::CreateBuilder::new()
                .with_location(url.to_string())
                .with_storage_options(warehouse.storage_options())
                .with_table_name(table.to_string())
                .with_columns(delta_schema.fields().cloned())
                .with_partition_columns(partition_columns.to_vec())
                .await?;
            match source {
                Source::Empty(_) => {}
                Source::Plan(plan, state) => {
                    // Planned as a whole INSERT, exactly like `INSERT INTO`, so the optimizer
                    // gathers every input partition into Delta's sink (which commits once).
                    let provider = delta.table_provider().await?;
                    let dml = DmlStatement::new(
                        TableReference::partial(schema, table),
                        provider_as_source(provider),
                        WriteOp::Insert(InsertOp::Append),
                        Arc::new(plan),
                    );
                    let physical = state.create_physical_plan(&LogicalPlan::Dml(dml)).await?;
                    count_rows(datafusion::physical_plan::execute_stream(physical, state.task_ctx())?).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.delete_location(&location).await;
            return Err(e);
        }
        Ok(location)
    }

    /// Bulk-load a client's record batches into a managed table (Flight SQL ingest), in one
    /// Delta commit. The rows stream into a staging Parquet file in the spill directory (under
    /// `--spill-max-size`) as they arrive, so an upload never sits in memory whatever its size;
    /// then one Delta write reads the staged file in the caller's session. A bad batch, an
    /// aborted upload or a failed write commits nothing, and the staging file goes on every path.
    pub async fn ingest(
        &self,
        ctx: &SessionContext,
        target: &TableReference,
        input: SendableRecordBatchStream,
        mode: IngestMode,
    ) -> Result<u64> {
        let (schema_name, table) = self.resolve(ctx, target)?;
        let snapshot = self.store.refresh().await?;
        if !snapshot.schemas.contains_key(&schema_name) {
            return Err(CatalogError::NotFound { kind: "schema", name: schema_name });
        }
        let existing = snapshot.table(&schema_name, &table).cloned();
        let full = format!("{schema_name}.{table}");
        match (&existing, mode) {
            (None, IngestMode::Append) => return Err(CatalogError::NotFound { kind: "table", name: full }),
            (Some(_), IngestMode::Create) => return Err(CatalogError::AlreadyExists { kind: "table", name: full }),
            (Some(TableEntry::Managed { .. }) | None, _) => {}
            (Some(_), _) => {
                return Err(CatalogError::Unsupported(format!("{full} is not a managed table: cannot ingest into it")));
            }
        }
        let schema = input.schema();
        // Appending: the table's columns, checked before anything is staged.
        let append_to = match &existing {
            Some(TableEntry::Managed { location, .. }) if mode != IngestMode::Replace => {
                let warehouse = self.store.warehouse();
                let url = warehouse.url(location)?;
                let delta = deltalake::open_table_with_storage_options(url, warehouse.storage_options()).await?;
                let columns = delta.snapshot()?.snapshot().arrow_schema();
                if columns.fields().len() != schema.fields().len() {
                    return Err(CatalogError::Unsupported(format!(
                        "ingested data has {} columns, {full} has {}",
                        schema.fields().len(),
                        columns.fields().len()
                    )));
                }
                Some((delta, columns))
            }
            _ => None,
        };
        let staged = Staged::write(ctx, input, &[], "ingest staging").await?;
        let rows = staged.rows;
        // Read back as nullable, as ingested tables' columns are (a later append may hold NULLs).
        let nullable = Schema::new_with_metadata(
            schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            schema.metadata().clone(),
        );
        match append_to {
            // Into the existing table (append, create_append), matching its columns by position.
            Some((delta, columns)) => {
                if rows > 0 {
                    delta
                        .write(Vec::<RecordBatch>::new())
                        .with_input_plan(cast_plan_to(staged.scan(ctx, &nullable).await?, &columns)?)
                        .with_session_state(delta_session(ctx))
                        .with_save_mode(SaveMode::Append)
                        .await?;
                }
            }
            // A new table (create, create_append, replace), swapped in by one catalog commit.
            None => {
                let replace = mode == IngestMode::Replace;
                let source = if rows == 0 {
                    Source::Empty(schema)
                } else {
                    Source::Plan(delta_compatible_plan(staged.scan(ctx, &nullable).await?)?, ctx.state())
                };
                let location = self.new_managed_table(&schema_name, &table, source, &[]).await?;
                let entry = TableEntry::Managed { location: location.clone(), partition_columns: Vec::new() };
                if let Err(e) = self.put_entry(&schema_name, &table, entry, false, replace, "table").await {
                    self.delete_location(&location).await;
                    return Err(e);
                }
            }
        }
        drop(staged);
        info!(table = %full, rows, ?mode, "ingested");
        Ok(rows)
    }

    async fn drop_entry(&self, ctx: &SessionContext, name: &TableReference, if_exists: bool, view: bool) -> Result<()> {
        let (schema, table) = self.resolve(ctx, name)?;
        let kind = if view { "view" } else { "table" };
        let before = self.store.refresh().await?.table(&schema, &table).cloned();
        self.store
            .commit(|s| {
                let Some(tables) = s.schemas.get_mut(&schema).map(|e| &mut e.tables) else {
                    return if if_exists { Ok(()) } else { Err(CatalogError::NotFound { kind: "schema", name: schema.clone() }) };
                };
                match tables.get(&table) {
                    None if if_exists => Ok(()),
                    None => Err(CatalogError::NotFound { kind, name: format!("{schema}.{table}") }),
                    Some(TableEntry::View { .. }) if !view => Err(CatalogError::Unsupported(format!(
                        "{schema}.{table} is a view: use DROP VIEW"
                    ))),
                    Some(TableEntry::Managed { .. } | TableEntry::External { .. }) if view => Err(
                        CatalogError::Unsupported(format!("{schema}.{table} is a table: use DROP TABLE")),
                    ),
                    Some(_) => {
                        tables.remove(&table);
                        Ok(())
                    }
                }
            })
            .await?;
        if let Some(entry) = before {
            self.delete_managed_data(&entry).await;
        }
        info!(schema = %schema, name = %table, kind, "dropped");
        Ok(())
    }

    /// Remove a managed table's files after its catalog entry is gone (best effort: leftovers
    /// are invisible and only cost space).
    async fn delete_managed_data(&self, entry: &TableEntry) {
        if let TableEntry::Managed { location, .. } = entry {
            self.delete_location(location).await;
        }
    }

    async fn delete_location(&self, location: &str) {
        let warehouse = self.store.warehouse();
        let prefix = warehouse.path(location);
        let store = warehouse.store().clone();
        let paths: Vec<_> = match store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await {
            Ok(p) => p,
            Err(e) => {
                warn!(location, error = %e, "could not list files of a dropped table");
                return;
            }
        };
        let mut deletes = futures::stream::iter(paths).map(|p| {
            let store = store.clone();
            async move { store.delete(&p).await }
        });
        let mut failed = 0usize;
        while let Some(f) = deletes.next().await {
            if f.await.is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            warn!(location, failed, "some files of a dropped table could not be deleted");
        }
        if let Ok(dir) = warehouse.url(location) {
            if let Ok(path) = dir.to_file_path() {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

/// Build the table provider for an external table definition with DataFusion's factories.
pub(crate) async fn external_table_provider(
    state: &SessionState,
    cmd: &CreateExternalTable,
) -> Result<Arc<dyn TableProvider>> {
    let file_type = cmd.file_type.to_uppercase();
    let factory = state.table_factories().get(file_type.as_str()).ok_or_else(|| {
        CatalogError::Unsupported(format!(
            "unknown file format '{}': use PARQUET, CSV, JSON or AVRO",
            cmd.file_type
        ))
    })?;
    Ok(factory.create(state, cmd).await?)
}

/// Split the input DataFusion plans for `DELETE`/`UPDATE` into `(column, new value)` pairs
/// and the row predicate. The input is `[Projection] [Filter] TableScan`.
fn decompose_dml_input(plan: &LogicalPlan, verb: &str) -> Result<(Vec<(String, Expr)>, Option<Expr>)> {
    let mut node = plan;
    let mut assignments = Vec::new();
    if let LogicalPlan::Projection(p) = node {
        for (expr, field) in p.expr.iter().zip(p.schema.fields()) {
            let value = match expr {
                Expr::Alias(a) => a.expr.as_ref(),
                other => other,
            };
            let unchanged = matches!(value, Expr::Column(c) if c.name == *field.name());
            if !unchanged {
                assignments.push((field.name().clone(), value.clone()));
            }
        }
        node = p.input.as_ref();
    }
    let mut predicate = None;
    if let LogicalPlan::Filter(f) = node {
        predicate = Some(f.predicate.clone());
        node = f.input.as_ref();
    }
    let mut has_subquery = false;
    for e in assignments.iter().map(|(_, e)| e).chain(predicate.iter()) {
        e.apply(|x| {
            if matches!(x, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)) {
                has_subquery = true;
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    if has_subquery || !matches!(node, LogicalPlan::TableScan(_)) {
        return Err(CatalogError::Unsupported(format!(
            "{verb} supports conditions and values over the table's own columns, without subqueries or joins"
        )));
    }
    Ok((assignments, predicate))
}

/// Column references without the table qualifier, as deltalake resolves them.
fn unqualify(expr: Expr) -> Result<Expr> {
    Ok(expr
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// Tables read by the query of a `CREATE VIEW` statement.
fn view_query_references(state: &SessionState, sql: &str) -> Result<Vec<TableReference>> {
    let mut parser = DFParserBuilder::new(sql).with_dialect(&GenericDialect {}).build()?;
    let statement = parser
        .parse_statements()?
        .pop_front()
        .ok_or_else(|| CatalogError::Unsupported(format!("empty view definition: {sql}")))?;
    let query = match statement {
        DFStatement::Statement(s) => match *s {
            SqlStatement::CreateView(cv) => cv.query,
            other => return Err(CatalogError::Unsupported(format!("not a CREATE VIEW statement: {other}"))),
        },
        other => return Err(CatalogError::Unsupported(format!("not a CREATE VIEW statement: {other}"))),
    };
    Ok(state.resolve_table_references(&DFStatement::Statement(Box::new(SqlStatement::Query(query))))?)
}

/// Sum the `count` column of a DML answer.
pub async fn count_rows(mut stream: SendableRecordBatchStream) -> Result<u64> {
    let mut total = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_columns() == 0 {
            continue;
        }
        if let Some(counts) = batch.column(0).as_any().downcast_ref::<UInt64Array>() {
            total += counts.iter().flatten().sum::<u64>();
        } else {
            total += batch.num_rows() as u64;
        }
    }
    Ok(total)
}

fn check_catalog(catalog: &str) -> Result<()> {
    if catalog != CATALOG_NAME {
        return Err(CatalogError::NotFound { kind: "catalog", name: catalog.to_string() });
    }
    Ok(())
}

/// `schema` or `streampulse.schema` → `schema`.
fn bare_schema_name(name: &str) -> Result<String> {
    match name.split_once('.') {
        Some((catalog, schema)) => {
            check_catalog(catalog)?;
            Ok(schema.to_string())
        }
        None => Ok(name.to_string()),
    }
}

/// Lift `PARTITIONED BY (a, b)` off a `CREATE TABLE` (DataFusion rejects it) and return it.
fn take_partition_columns(statement: DFStatement) -> Result<(DFStatement, Vec<String>)> {
    let DFStatement::Statement(mut inner) = statement else {
        return Ok((statement, Vec::new()));
    };
    let mut columns = Vec::new();
    if let SqlStatement::CreateTable(ct) = inner.as_mut() {
        if let HiveDistributionStyle::PARTITIONED { columns: defs } = &ct.hive_distribution {
            for def in defs {
                if !matches!(def.data_type, SqlDataType::Unspecified) {
                    return Err(CatalogError::Unsupported(format!(
                        "PARTITIONED BY takes column names of the table, not definitions: remove the type after '{}'",
                        def.name
                    )));
                }
                let name = if def.name.quote_style.is_some() {
                    def.name.value.clone()
                } else {
                    def.name.value.to_lowercase()
                };
                columns.push(name);
            }
            ct.hive_distribution = HiveDistributionStyle::NONE;
        }
    }
    Ok((DFStatement::Statement(inner), columns))
}

/// A session may not replace the engine's memory pool or spill settings (they would escape
/// the global cap).
fn reject_runtime_settings(statement: &DFStatement) -> Result<()> {
    if let DFStatement::Statement(s) = statement {
        if let SqlStatement::Set(_) = s.as_ref() {
            let text = s.to_string().to_lowercase();
            if text.contains("datafusion.runtime.") {
                return Err(CatalogError::Unsupported(
                    "datafusion.runtime.* settings are fixed by the server configuration (memory limit, spill folder)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// What Flight SQL ingest does when the table exists or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// Create; fail if it exists.
    Create,
    /// Append; fail if it does not exist.
    Append,
    /// Create or replace.
    Replace,
    /// Create if missing, else append.
    CreateAppend,
}

/// Where a new managed table's rows come from.
enum Source {
    /// No rows, only a schema.
    Empty(SchemaRef),
    /// A query's result.
    Plan(LogicalPlan, SessionState),
}

/// The closest type a Delta table can store (Delta has no unsigned, view, large or nanosecond types).
fn delta_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Date64 => DataType::Date32,
        DataType::Null => DataType::Utf8,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Dictionary(_, v) => delta_type(v),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            DataType::List(Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type()))))
        }
        DataType::FixedSizeList(f, _) => {
            DataType::List(Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type()))))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())))).collect(),
        ),
        other => other.clone(),
    }
}

/// The caller's session (its memory pool, spill directory, functions) with deltalake's query
/// planner, which knows the plan nodes deltalake's writes, updates and deletes build.
fn delta_session(ctx: &SessionContext) -> Arc<dyn datafusion::catalog::Session> {
    Arc::new(SessionStateBuilder::new_from_existing(ctx.state()).with_query_planner(DeltaPlanner::new()).build())
}

/// Rows staged as a Parquet file in the spill directory (counted against `--spill-max-size`);
/// the file is deleted when this is dropped, on every path.
struct Staged {
    /// Held for its lifetime: dropping it deletes the file.
    _file: Arc<dyn SpillFile>,
    path: PathBuf,
    rows: u64,
    /// The distinct values of the columns asked for, one tuple per partition the rows fall in.
    tuples: Vec<Vec<ScalarValue>>,
}

impl Staged {
    /// Streams `input` into a new staging file (`what` names it in errors and listings).
    async fn write(ctx: &SessionContext, input: SendableRecordBatchStream, indices: &[usize], what: &str) -> Result<Self> {
        let file = ctx.runtime_env().disk_manager.create_tmp_file(what)?;
        let path = file
            .path()
            .ok_or_else(|| CatalogError::Unsupported(format!("{what} needs a local spill directory")))?
            .to_path_buf();
        let (rows, tuples) = stage_rows(input, file.open_writer()?, indices).await?;
        Ok(Self { _file: file, path, rows, tuples })
    }

    /// A scan of the staged rows, read with `schema`.
    async fn scan(&self, ctx: &SessionContext, schema: &Schema) -> Result<LogicalPlan> {
        let options = ParquetReadOptions::default().file_extension("").schema(schema);
        Ok(ctx.read_parquet(self.path.to_string_lossy().as_ref(), options).await?.into_unoptimized_plan())
    }
}

/// Writes the rows of `stream` as Parquet to `out`, collecting the distinct values of the
/// columns at `indices` (one tuple per partition the rows fall in; none if `indices` is empty).
/// Returns the row count and the tuples. Memory: one batch and one row group of the writer at a
/// time.
async fn stage_rows(
    mut stream: SendableRecordBatchStream,
    out: Box<dyn SpillWriter>,
    indices: &[usize],
) -> datafusion::error::Result<(u64, Vec<Vec<ScalarValue>>)> {
    let schema = stream.schema();
    let props = WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(props))?;
    let converter = RowConverter::new(indices.iter().map(|i| SortField::new(schema.field(*i).data_type().clone())).collect())?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut tuples = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
        if indices.is_empty() {
            continue;
        }
        let keys = converter.convert_columns(&indices.iter().map(|i| Arc::clone(batch.column(*i))).collect::<Vec<_>>())?;
        let mut in_batch: HashSet<&[u8]> = HashSet::new();
        for (row, key) in keys.iter().enumerate() {
            let bytes = key.data();
            if in_batch.insert(bytes) && !seen.contains(bytes) {
                seen.insert(bytes.to_vec());
                tuples.push(
                    indices
                        .iter()
                        .map(|i| ScalarValue::try_from_array(batch.column(*i), row))
                        .collect::<datafusion::error::Result<Vec<_>>>()?,
                );
            }
        }
    }
    writer.close()?;
    Ok((rows, tuples))
}

fn delta_compatible_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())).with_nullable(true)))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Cast a plan's output columns to Delta-compatible types where needed.
fn delta_compatible_plan(plan: LogicalPlan) -> Result<LogicalPlan> {
    let target = delta_compatible_schema(&Arc::new(plan.schema().as_arrow().clone()));
    cast_plan_to(plan, &target)
}

/// Project `plan`'s columns, by position, onto `target`'s names and types (values that do not
/// fit fail the write with the cast's message); the plan itself when nothing changes.
fn cast_plan_to(plan: LogicalPlan, target: &Schema) -> Result<LogicalPlan> {
    let same = |field: &Field, to: &Field| field.data_type() == to.data_type() && field.name() == to.name();
    if plan.schema().fields().iter().zip(target.fields()).all(|(f, to)| same(f, to)) {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .zip(target.fields())
        .map(|((qualifier, field), to)| {
            let column = Expr::Column(Column::from((qualifier, field)));
            if same(field, to) {
                column
            } else if field.data_type() == to.data_type() {
                column.alias(to.name())
            } else {
                cast(column, to.data_type().clone()).alias(to.name())
            }
        })
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Split SQL text at top-level semicolons using the SQL tokenizer (so `;` inside strings,
/// identifiers and comments does not split), returning each statement's text.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| CatalogError::DataFusion(datafusion::error::DataFusionError::Plan(format!("SQL syntax: {e}"))))?;
    // Byte offset of each line start, to turn (line, column) into a byte offset.
    let mut line_starts = vec![0usize];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            line_starts.push(i + 1);
        }
    }
    let offset = |loc: Location| -> usize {
        let line_start = line_starts.get(loc.line.saturating_sub(1) as usize).copied().unwrap_or(sql.len());
        sql[line_start..]
            .char_indices()
            .nth(loc.column.saturating_sub(1) as usize)
            .map(|(i, _)| line_start + i)
            .unwrap_or(sql.len())
    };
    let mut parts = Vec::new();
    let mut start = 0usize;
    let mut has_content = false;
    for t in tokens {
        match t.token {
            Token::SemiColon => {
                let end = offset(t.span.start);
                if has_content {
                    parts.push(sql[start..end].trim().to_string());
                }
                start = end + 1;
                has_content = false;
            }
            Token::Whitespace(_) => {}
            _ => has_content = true,
        }
    }
    if has_content {
        parts.push(sql[start..].trim().to_string());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "SELECT ';' AS a; -- note; here\nCREATE VIEW \"x;y\" AS SELECT 1;\n\n  ;  SELECT 2";
        let parts = split_statements(sql).unwrap();
        assert_eq!(parts, vec!["SELECT ';' AS a", "-- note; here\nCREATE VIEW \"x;y\" AS SELECT 1", "SELECT 2"]);
    }

    /// Engine over `dir` whose queries may each use `query_cap` bytes.
    async fn engine(dir: &std::path::Path, query_cap: usize) -> Engine {
        let mut config = EngineConfig::new(dir.to_string_lossy(), 4 << 30);
        config.query_memory_limit = Some(query_cap);
        Engine::open(config).await.unwrap()
    }

    /// The physical plan of `sql` as text.
    async fn plan_text(engine: &Engine, sql: &str) -> String {
        let ctx = engine.session();
        let Planned::Query(plan) = engine.plan_sql(&ctx, sql).await.unwrap() else { panic!("not a query: {sql}") };
        let physical = engine.physical_plan(&ctx, plan).await.unwrap();
        datafusion::physical_plan::displayable(physical.as_ref()).indent(false).to_string()
    }

    #[tokio::test]
    async fn joins_become_sort_merge_only_when_the_build_side_would_not_fit() {
        // Two managed tables of 2 M and 1 k rows: Delta's statistics give the row counts. The
        // 2 M-row build side (~16 MB of keys, x3 for a hash table) is over a quarter of a 16 MiB
        // per-query cap and well under a quarter of 1 GiB.
        let dir = tempfile::tempdir().unwrap();
        let setup = engine(dir.path(), 1 << 30).await;
        let ctx = setup.session();
        for sql in [
            "CREATE TABLE big AS SELECT value AS k FROM generate_series(1, 2000000)",
            "CREATE TABLE small AS SELECT value AS k FROM generate_series(1, 1000)",
        ] {
            let planned = setup.plan_sql(&ctx, sql).await.unwrap();
            setup.run_command(&ctx, planned).await.unwrap();
        }
        let join = "SELECT count(*) FROM big a JOIN big b ON a.k = b.k";
        let roomy = plan_text(&setup, join).await;
        assert!(roomy.contains("HashJoinExec") && !roomy.contains("SortMergeJoin"), "{roomy}");
        let tight = engine(dir.path(), 16 << 20).await;
        let plan = plan_text(&tight, join).await;
        assert!(plan.contains("SortMergeJoin") && !plan.contains("HashJoinExec"), "{plan}");
        // A small build side stays a hash join even under the tight cap.
        let plan = plan_text(&tight, "SELECT count(*) FROM big a JOIN small b ON a.k = b.k").await;
        assert!(plan.contains("HashJoinExec") && !plan.contains("SortMergeJoin"), "{plan}");
    }

    #[test]
    fn unicode_before_semicolon_keeps_offsets_right() {
        let parts = split_statements("SELECT 'héllo ☃'; SELECT 'ü'").unwrap();
        assert_eq!(parts, vec!["SELECT 'héllo ☃'", "SELECT 'ü'"]);
    }
}
