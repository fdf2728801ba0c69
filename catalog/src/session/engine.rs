//! The one engine builder every entry point uses (server, CLI, scheduler).
//!
//! [`Engine::open`] builds a DataFusion session template with a bounded memory pool
//! (`FairSpillPool` inside `TrackConsumersPool`, so a failure names the biggest consumers), a
//! spill directory, object stores for local paths and any `s3://` bucket, all functions from
//! `streampulse-udfs`, and the persistent catalog as the only catalog. [`Engine::session`] gives
//! each caller a [`Session`] with its own per-query pool inside the global one.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::optimizer::OptimizerRule;
use datafusion::prelude::{SessionConfig, SessionContext};
use tracing::{info, warn};

use super::joins::MemoryAwareJoinSelection;
use super::pool::QueryPool;
use super::query::Session;
use crate::catalog::provider::{Shared, WarehouseCatalog};
use crate::catalog::{CATALOG_NAME, CatalogState, CatalogStore, DEFAULT_SCHEMA};
use crate::error::{Error, Result};
use crate::ingest::Ingest;
use crate::schedule::Tasks;
use crate::sources::json_api::FILE_TYPE as JSON_API;
use crate::sources::{HttpPolicy, JsonApiFactory};
use crate::storage::{S3Config, Warehouse};
use crate::system::{QueryLog, SystemSchema};

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
    /// Statements `system.queries` keeps.
    pub query_log_size: usize,
    /// URL prefixes `STORED AS JSON_API` tables may fetch; empty turns HTTP sources off.
    pub http_allow: Vec<String>,
    /// The cluster queries' reads run on, if any (see [`ClusterHook`]).
    pub cluster: Option<Arc<dyn ClusterHook>>,
}

/// The name of the plan node a [`ClusterHook`]'s planner puts above each job it sends to the
/// cluster: a statement counts them (`system.queries.cluster_jobs`).
pub const CLUSTER_JOB_NODE: &str = "OnCluster";

/// How the engine hands queries to a cluster. The core knows no cluster: `streampulse-cluster`
/// implements this for Ballista. Every session of an engine with a cluster plans with these
/// settings, rules and planner; the planner decides, plan by plan, what runs on the cluster
/// and what stays here.
pub trait ClusterHook: std::fmt::Debug + Send + Sync {
    /// The session settings, given the engine's (applied to every session).
    fn configure(&self, config: SessionConfig) -> SessionConfig;
    /// The logical optimizer rules, given DataFusion's.
    fn optimizer_rules(
        &self,
        rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
    ) -> Vec<Arc<dyn OptimizerRule + Send + Sync>>;
    /// The planner of every query's physical plan.
    fn query_planner(&self) -> Arc<dyn QueryPlanner + Send + Sync>;
    /// How many executors the cluster has alive, as its scheduler says (for `/metrics`); an
    /// error when the scheduler cannot be asked.
    fn executors(&self) -> futures::future::BoxFuture<'_, Result<usize>>;
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
            query_log_size: 1000,
            target_partitions: None,
            http_allow: Vec::new(),
            cluster: None,
        }
    }
}

/// The warehouse engine: catalog + DataFusion session template.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) store: Arc<CatalogStore>,
    base: SessionState,
    memory_limit: usize,
    /// The server-wide pool every query's [`QueryPool`] draws from.
    global_pool: Arc<dyn MemoryPool>,
    query_memory_limit: usize,
    query_log: Arc<QueryLog>,
    tasks: Arc<Tasks>,
    ingest: Arc<Ingest>,
    cluster: Option<Arc<dyn ClusterHook>>,
}

/// Batch size and sort merge reservation for a per-query cap. A plan registers dozens of
/// spilling operators (each partition of each sort, aggregate and join), and the fair pool gives
/// each an equal share; under a small cap a share must still hold one batch and a sort must
/// still reserve room to merge its spills. DataFusion's defaults (8,192 rows, 10 MiB) assume
/// gigabytes: from 1 GiB down they shrink in proportion, to at least 1,024 rows and 256 KiB.
pub fn memory_scaled_sizes(query_memory_limit: usize) -> (usize, usize) {
    const GIB: usize = 1 << 30;
    let scale = |full: usize, floor: usize| {
        if query_memory_limit >= GIB {
            full
        } else {
            (full as u128 * query_memory_limit as u128 / GIB as u128) as usize
        }
        .max(floor)
    };
    (scale(8192, 1024), scale(10 << 20, 256 << 10))
}

impl Engine {
    /// Build the engine over the warehouse described by `config`.
    pub async fn open(config: EngineConfig) -> Result<Self> {
        let warehouse = Warehouse::open(&config.warehouse, config.s3.clone())?;
        let http_policy = Arc::new(HttpPolicy::new(&config.http_allow)?);
        let store = Arc::new(CatalogStore::open(warehouse.clone()).await?);

        let top_consumers = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        let pool: Arc<dyn MemoryPool> =
            Arc::new(TrackConsumersPool::new(FairSpillPool::new(config.memory_limit), top_consumers));
        let query_memory_limit = config.query_memory_limit.unwrap_or(config.memory_limit).min(config.memory_limit);
        let disk = match &config.spill_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::invalid(format!("configuration: cannot create spill folder {}: {e}", dir.display()))
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
        let (batch_size, sort_reservation) = memory_scaled_sizes(query_memory_limit);
        let options = session_config.options_mut();
        let batch_size = options.execution.batch_size.get().min(batch_size);
        if let Ok(size) = datafusion::common::config::ConfigNonZeroUsize::try_new(batch_size) {
            options.execution.batch_size = size;
        }
        options.execution.sort_spill_reservation_bytes =
            options.execution.sort_spill_reservation_bytes.min(sort_reservation);
        if let Some(compression) = &config.spill_compression {
            session_config
                .options_mut()
                .set("datafusion.execution.spill_compression", compression)
                .map_err(|e| Error::invalid(format!("configuration: spill compression '{compression}': {e}")))?;
        }

        let shared = Shared::new(store.clone());
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let query_log = QueryLog::new(config.query_log_size);
        let tasks = Tasks::new(warehouse.clone());
        let ingest = Ingest::new(tasks.node().to_string());
        let system = Arc::new(SystemSchema::new(query_log.clone(), tasks.clone(), store.clone(), ingest.clone()));
        catalogs.register_catalog(CATALOG_NAME.to_string(), Arc::new(WarehouseCatalog::new(shared.clone(), system)));

        // The default physical rules, with the memory-aware join choice right after DataFusion's
        // own join selection (see joins::MemoryAwareJoinSelection).
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules.iter().position(|r| r.name() == MemoryAwareJoinSelection::AFTER).map_or(0, |i| i + 1);
        rules.insert(at, Arc::new(MemoryAwareJoinSelection::new(query_memory_limit)));
        let mut builder = SessionStateBuilder::new();
        if let Some(cluster) = &config.cluster {
            session_config = cluster.configure(session_config);
            builder = builder
                .with_optimizer_rules(cluster.optimizer_rules(datafusion::optimizer::Optimizer::new().rules))
                .with_query_planner(cluster.query_planner());
        }
        let state = builder
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_table_factory(JSON_API.to_string(), Arc::new(JsonApiFactory::new(http_policy)))
            .with_physical_optimizer_rules(rules)
            .with_catalog_list(catalogs)
            .build();
        let ctx = SessionContext::new_with_state(state);
        streampulse_udfs::register_all(&ctx)?;
        let base = ctx.state();
        // The catalog re-plans views and external tables with the same functions and stores;
        // DataFusion's providers get no session on lookup, so the catalog is handed one here,
        // once the session that contains the catalog exists.
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
        Ok(Self {
            store,
            base,
            memory_limit: config.memory_limit,
            global_pool: pool,
            query_memory_limit,
            query_log,
            tasks,
            ingest,
            cluster: config.cluster.clone(),
        })
    }

    /// The cluster queries' reads run on, if the engine has one.
    pub fn cluster(&self) -> Option<&Arc<dyn ClusterHook>> {
        self.cluster.as_ref()
    }

    /// A fresh session over the shared catalog and functions, with its own [`QueryPool`]: what
    /// it runs is capped at the per-query limit inside the global pool, and its peak is kept.
    ///
    /// The session's context is a clone of the engine's (settings a script SETs stay in its own
    /// session); only the runtime its plans execute under is new. Building a context through
    /// `SessionStateBuilder` instead re-registers every function and cost about a sixth of a
    /// `SELECT 1`.
    pub fn session(&self) -> Session {
        let pool = Arc::new(QueryPool::new(Arc::clone(&self.global_pool), self.query_memory_limit));
        let shared: Arc<dyn MemoryPool> = pool.clone();
        let runtime =
            match RuntimeEnvBuilder::from_runtime_env(self.base.runtime_env()).with_memory_pool(shared).build_arc() {
                Ok(runtime) => runtime,
                Err(e) => {
                    warn!(error = %e, "cannot build a per-query runtime; using the shared pool alone");
                    Arc::clone(self.base.runtime_env())
                }
            };
        Session::new(SessionContext::new_with_state(self.base.clone()), runtime, pool)
    }

    /// The per-query memory cap in bytes.
    pub fn query_memory_limit(&self) -> usize {
        self.query_memory_limit
    }

    /// The persistent catalog.
    pub fn catalog(&self) -> &Arc<CatalogStore> {
        &self.store
    }

    /// The warehouse the catalog lives in.
    pub fn warehouse(&self) -> &Warehouse {
        self.store.warehouse()
    }

    /// The global memory pool size in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// Bytes the operators of all running statements hold in the global pool now.
    pub fn memory_in_use(&self) -> usize {
        self.global_pool.reserved()
    }

    /// The recent statements, `system.queries`.
    pub fn query_log(&self) -> &Arc<QueryLog> {
        &self.query_log
    }

    /// Tasks: the run journal, runs in flight here, the run listener.
    pub fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }

    /// Loads: ledgers in use, pipes running here, the load listener.
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// Catch up with catalog changes made by other processes.
    pub async fn refresh(&self) -> Result<Arc<CatalogState>> {
        self.store.refresh().await
    }
}
