//! `streampulse scheduler` and `streampulse executor`: the Ballista roles of a cluster (see
//! [`streampulse_cluster::roles`]); `serve --cluster df://host:port` sends queries to them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use streampulse_cluster::roles::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
use streampulse_engine::Warehouse;

use super::CliError;
use crate::config::WarehouseArgs;

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// Scheduler gRPC address (servers' --cluster and executors' --scheduler point here; /healthz and /readyz answer on it over HTTP)
    #[arg(
        id = "scheduler_listen",
        long = "listen",
        env = "STREAMPULSE_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:50050"
    )]
    listen: String,
    /// Executors that must be registered before the scheduler's /readyz answers 200
    #[arg(long, env = "STREAMPULSE_MIN_READY_EXECUTORS", default_value = "1")]
    min_ready_executors: usize,
    /// An executor not heard from for this long is dead: its tasks run again on the others (keep it above the executors' --heartbeat-interval)
    #[arg(long, env = "STREAMPULSE_EXECUTOR_TIMEOUT", default_value = "60s")]
    executor_timeout: humantime::Duration,
}

#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// The scheduler to register with, HOST:PORT
    #[arg(long, env = "STREAMPULSE_SCHEDULER", default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Executor Arrow Flight address (results and shuffle data are fetched here); the address it registers with
    #[arg(
        id = "executor_listen",
        long = "listen",
        env = "STREAMPULSE_EXECUTOR_LISTEN",
        default_value = "127.0.0.1:50061"
    )]
    listen: String,
    /// Executor gRPC address the scheduler sends tasks to (same host as --listen)
    #[arg(long, env = "STREAMPULSE_EXECUTOR_GRPC_LISTEN", default_value = "127.0.0.1:50062")]
    grpc_listen: String,
    /// Tasks an executor runs at once; its --memory-limit is shared among them [default: number of cores]
    #[arg(long, env = "STREAMPULSE_EXECUTOR_VCORES")]
    vcores: Option<NonZeroUsize>,
    /// Executor folder for shuffle files (and spills without --spill-dir) [default: a temporary folder]
    #[arg(long, env = "STREAMPULSE_EXECUTOR_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// How often an executor tells the scheduler it is alive
    #[arg(long, env = "STREAMPULSE_HEARTBEAT_INTERVAL", default_value = "10s")]
    heartbeat_interval: humantime::Duration,
}

/// `--cluster` names the scheduler a server or `sql` sends queries to; a role is part of the cluster.
fn no_cluster_flag(args: &WarehouseArgs) -> Result<(), CliError> {
    match &args.cluster {
        Some(url) => Err(CliError::usage(format!(
            "--cluster {url} is for serve and sql; a scheduler or executor is the cluster"
        ))),
        None => Ok(()),
    }
}

/// `host:port` as one socket address (a name must resolve), or a usage error naming `flag`.
fn address(flag: &str, value: &str) -> Result<SocketAddr, CliError> {
    let mut resolved =
        value.to_socket_addrs().map_err(|e| CliError::usage(format!("{flag} '{value}': {e} (expected HOST:PORT)")))?;
    resolved.next().ok_or_else(|| CliError::usage(format!("{flag} '{value}': the name resolves to no address")))
}

/// The object stores of the warehouse settings (its S3 endpoint and keys), for scans on this node.
fn stores(
    args: &WarehouseArgs,
) -> Result<std::sync::Arc<dyn datafusion::execution::object_store::ObjectStoreRegistry>, CliError> {
    let config = args.engine_config().map_err(CliError::usage)?;
    let warehouse = Warehouse::open(&config.warehouse, config.s3).map_err(CliError::usage)?;
    Ok(warehouse.object_store_registry())
}

pub async fn run_scheduler_role(args: SchedulerArgs) -> Result<(), CliError> {
    no_cluster_flag(&args.warehouse)?;
    let listen = address("--listen", &args.listen)?;
    let options = SchedulerOptions {
        listen,
        min_ready_executors: args.min_ready_executors,
        stores: stores(&args.warehouse)?,
        executor_timeout: *args.executor_timeout,
    };
    run_scheduler(options).await.map_err(CliError::failed)
}

pub async fn run_executor_role(args: ExecutorArgs) -> Result<(), CliError> {
    no_cluster_flag(&args.warehouse)?;
    let listen = address("--listen", &args.listen)?;
    let grpc_listen = address("--grpc-listen", &args.grpc_listen)?;
    if grpc_listen.ip() != listen.ip() {
        return Err(CliError::usage(format!(
            "--grpc-listen {grpc_listen} must be on the same host as --listen {listen} (Ballista binds both on one address)"
        )));
    }
    if grpc_listen.port() == listen.port() || listen.port() == 0 || grpc_listen.port() == 0 {
        return Err(CliError::usage(format!(
            "--listen {listen} and --grpc-listen {grpc_listen} need two different, fixed ports (the executor registers them)"
        )));
    }
    let (host, port) = args
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| CliError::usage(format!("--scheduler '{}': expected HOST:PORT", args.scheduler)))?;
    let config = args.warehouse.engine_config().map_err(CliError::usage)?;
    let vcores = args
        .vcores
        .map_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get), NonZeroUsize::get);
    let options = ExecutorOptions {
        listen,
        grpc_listen,
        scheduler: (host, port),
        vcores,
        memory_limit: config.memory_limit as u64,
        work_dir: args.work_dir,
        spill_dir: config.spill_dir.clone(),
        spill_max_size: config.spill_max_size,
        stores: stores(&args.warehouse)?,
        heartbeat_interval: *args.heartbeat_interval,
    };
    run_executor(options).await.map_err(CliError::failed)
}
