//! The two cluster roles of the `streampulse` binary: Ballista's scheduler and executor, with
//! StreamPulse's functions, codec, object stores and an explicit memory pool. Ballista's stock
//! binaries know none of these: a plan using `weighted_avg_vector` or reading a managed table
//! would fail on them.
//!
//! Object stores come from each process's own settings (the same `STREAMPULSE_S3_*` as
//! `serve`), never from the query: Ballista sends every session setting in clear text to the
//! scheduler and every task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::RuntimeProducer;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use streampulse_engine::{Error, Result};
use tracing::info;

use crate::codec::{ClusterCodec, ClusterPhysicalCodec};

/// Largest gRPC message between the roles: plans carry every file of the tables they read.
const MAX_MESSAGE: u32 = 128 << 20;

/// What `streampulse scheduler` runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// gRPC address (also `/healthz` and `/readyz` over HTTP).
    pub listen: SocketAddr,
    /// Executors that must be registered before `/readyz` answers 200.
    pub min_ready_executors: usize,
    /// Object stores for planning scans (listing external tables).
    pub stores: Arc<dyn ObjectStoreRegistry>,
    /// An executor silent this long is dead: its tasks run again elsewhere.
    pub executor_timeout: Duration,
}

/// What `streampulse executor` runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Arrow Flight address results and shuffles are fetched from; also the address the
    /// executor registers with.
    pub listen: SocketAddr,
    /// gRPC address the scheduler pushes tasks to.
    pub grpc_listen: SocketAddr,
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// Tasks run at once.
    pub vcores: usize,
    /// Memory all tasks share, in bytes; a task gets its share of vcores.
    pub memory_limit: u64,
    /// Shuffle files; a temporary folder when `None`.
    pub work_dir: Option<PathBuf>,
    /// Spill files; the work folder when `None`.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes of spill files at once.
    pub spill_max_size: Option<u64>,
    /// Object stores the tasks read from.
    pub stores: Arc<dyn ObjectStoreRegistry>,
    /// How often the executor tells the scheduler it is alive.
    pub heartbeat_interval: Duration,
}

/// Settings every job starts from before the server's are applied: Ballista's, with
/// StreamPulse's types (plain Utf8: Delta and older Flight SQL clients do not know the view
/// types).
pub(crate) fn config_producer() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .set_bool("datafusion.execution.parquet.schema_force_view_types", false)
        .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
}

/// A session with DataFusion's features, Ballista's logical rules and StreamPulse's functions.
pub(crate) fn session_state(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> datafusion::error::Result<SessionState> {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
        .build();
    let ctx = SessionContext::new_with_state(state);
    streampulse_udfs::register_all(&ctx)?;
    Ok(ctx.state())
}

fn failed(role: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{role}: {e}"))
}

/// Run the scheduler until the process is stopped.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<()> {
    let runtime = RuntimeEnvBuilder::new().with_object_store_registry(options.stores.clone()).build_arc()?;
    let config = SchedulerConfig {
        bind_host: options.listen.ip().to_string(),
        bind_port: options.listen.port(),
        external_host: options.listen.ip().to_string(),
        task_distribution: TaskDistributionPolicy::RoundRobin,
        min_ready_executors: options.min_ready_executors,
        grpc_server_max_decoding_message_size: MAX_MESSAGE,
        grpc_server_max_encoding_message_size: MAX_MESSAGE,
        grpc_client_max_message_size: MAX_MESSAGE,
        override_config_producer: Some(Arc::new(config_producer)),
        override_session_builder: Some(Arc::new(move |config| session_state(config, runtime.clone()))),
        override_logical_codec: Some(Arc::new(ClusterCodec::default())),
        override_physical_codec: Some(Arc::new(ClusterPhysicalCodec::default())),
        // Ballista's defaults (180 s, checked every 15 s) suit large clusters; a dead executor's
        // tasks should not wait minutes here. With no executor left, jobs fail after as long.
        executor_timeout_seconds: options.executor_timeout.as_secs().max(2),
        expire_dead_executor_interval_seconds: (options.executor_timeout.as_secs() / 4).clamp(1, 15),
        no_executors_grace_period_seconds: options.executor_timeout.as_secs().max(2),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(|e| failed("scheduler", e))?;
    info!(listen = %options.listen, min_ready_executors = options.min_ready_executors, "scheduler starting");
    start_server(cluster, options.listen, Arc::new(config)).await.map_err(|e| failed("scheduler", e))
}

/// Run an executor until the process is stopped (or its scheduler cannot be reached).
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    let spill_dir = options.spill_dir.clone().or_else(|| options.work_dir.clone());
    let stores = options.stores.clone();
    let spill_max_size = options.spill_max_size;
    let runtime: RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        let disk = match &spill_dir {
            Some(dir) => DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
            None => DiskManagerBuilder::default(),
        };
        let disk = match spill_max_size {
            Some(bytes) => disk.with_max_temp_directory_size(bytes),
            None => disk,
        };
        RuntimeEnvBuilder::new().with_object_store_registry(stores.clone()).with_disk_manager_builder(disk).build_arc()
    });
    // Tasks resolve functions by name in this registry: DataFusion's (nested and array ones
    // included, which Ballista's default registry lacks) and StreamPulse's.
    let functions = session_state(config_producer(), RuntimeEnvBuilder::new().build_arc()?)?;
    if let Some(dir) = &options.work_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::invalid(format!("cannot create work folder {}: {e}", dir.display())))?;
    }
    let config = ExecutorProcessConfig {
        executor_id: uuid::Uuid::new_v4().to_string(),
        bind_host: options.listen.ip().to_string(),
        external_host: Some(options.listen.ip().to_string()),
        port: options.listen.port(),
        grpc_port: options.grpc_listen.port(),
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.vcores.max(1),
        work_dir: options.work_dir.as_ref().map(|d| d.display().to_string()),
        memory_pool_size: Some(options.memory_limit),
        grpc_max_decoding_message_size: MAX_MESSAGE,
        grpc_max_encoding_message_size: MAX_MESSAGE,
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&functions))),
        override_runtime_producer: Some(runtime),
        override_config_producer: Some(Arc::new(config_producer)),
        override_logical_codec: Some(Arc::new(ClusterCodec::default())),
        override_physical_codec: Some(Arc::new(ClusterPhysicalCodec::default())),
        executor_heartbeat_interval_seconds: options.heartbeat_interval.as_secs().max(1),
        ..Default::default()
    };
    info!(
        listen = %options.listen,
        grpc_listen = %options.grpc_listen,
        scheduler = %format!("{}:{}", options.scheduler.0, options.scheduler.1),
        vcores = config.vcores,
        memory_limit = options.memory_limit,
        "executor starting"
    );
    start_executor_process(Arc::new(config)).await.map_err(|e| failed("executor", e))
}
