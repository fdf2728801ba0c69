//! Settings: each flag, its environment variable (`STREAMPULSE_*`) and its default declared
//! once, as clap attributes on typed fields; an optional TOML file ([`file`]) for the same keys,
//! merged in one place; the README's configuration table generated from these declarations and
//! kept current by a test ([`reference`]).
//!
//! Precedence: flag or env var, then the file, then the default.

pub mod file;
pub mod reference;
pub mod size;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use streampulse_engine::{ClusterHook, EngineConfig, Error, Result, S3Config};

pub use size::{ByteSize, MemorySize, SpillCompression};

/// Settings shared by every command that opens a warehouse.
#[derive(Debug, Clone, Args)]
pub struct WarehouseArgs {
    /// Warehouse root: a local folder or s3://bucket/prefix
    #[arg(long, global = true, env = "STREAMPULSE_WAREHOUSE", default_value = "./warehouse")]
    pub warehouse: String,
    /// TOML file with any of these settings (flags and env vars win over it)
    #[arg(long, global = true, env = "STREAMPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Memory pool shared by all queries: bytes, "4GiB", "512MiB" or a share of RAM like "50%"
    #[arg(long, global = true, env = "STREAMPULSE_MEMORY_LIMIT", default_value = "50%")]
    pub memory_limit: MemorySize,
    /// Memory one query may use, within --memory-limit: bytes, "1GiB" or a share of RAM [default: the memory limit]
    #[arg(long, global = true, env = "STREAMPULSE_QUERY_MEMORY_LIMIT")]
    pub query_memory_limit: Option<MemorySize>,
    /// Folder for spill files [default: the OS temp folder]
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most disk that spill files may take at once, all queries together; a query going over fails with RESOURCE_EXHAUSTED [default: 100GiB]
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_MAX_SIZE")]
    pub spill_max_size: Option<ByteSize>,
    /// Spill file compression: uncompressed, lz4_frame or zstd
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_COMPRESSION", default_value = "lz4_frame")]
    pub spill_compression: SpillCompression,
    /// Partitions (threads) per query [default: number of cores]
    #[arg(long, global = true, env = "STREAMPULSE_TARGET_PARTITIONS")]
    pub target_partitions: Option<NonZeroUsize>,
    /// S3 endpoint URL for S3-compatible servers (MinIO, moto) [default: AWS]
    #[arg(long, global = true, env = "STREAMPULSE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS's default]
    #[arg(long, global = true, env = "STREAMPULSE_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id (or AWS_ACCESS_KEY_ID)
    #[arg(long, global = true, env = "STREAMPULSE_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (or AWS_SECRET_ACCESS_KEY)
    #[arg(long, global = true, env = "STREAMPULSE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain http:// S3 endpoints [default: true for http:// endpoints]
    #[arg(long, global = true, env = "STREAMPULSE_S3_ALLOW_HTTP")]
    pub s3_allow_http: Option<bool>,
    /// Without keys, take S3 credentials from the cloud instance's metadata endpoint; off, a
    /// warehouse on S3 without keys fails at once naming these settings [default: false]
    #[arg(long, global = true, env = "STREAMPULSE_S3_INSTANCE_CREDENTIALS")]
    pub s3_instance_credentials: Option<bool>,
    /// URL prefixes that JSON_API tables may fetch, comma-separated (e.g. https://api.example.com/v1/; a list in the file); host names may not resolve to loopback or link-local addresses, an IP address listed here is allowed as written [default: none, HTTP sources off]
    #[arg(long, global = true, env = "STREAMPULSE_HTTP_SOURCES_ALLOW", value_delimiter = ',')]
    pub http_sources_allow: Vec<String>,
    /// Run queries on a cluster: its scheduler, df://HOST:PORT (`streampulse scheduler`); catalog, DDL and commits stay here [default: none, all on this node]
    #[arg(long, global = true, env = "STREAMPULSE_CLUSTER")]
    pub cluster: Option<String>,
    /// Recent statements kept in system.queries (a ring buffer in memory)
    #[arg(long, global = true, env = "STREAMPULSE_QUERY_LOG_SIZE", default_value = "1000")]
    pub query_log_size: NonZeroUsize,
}

/// Settings of the server (`serve`).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Flight SQL address; port 0 picks a free port (printed at start)
    #[arg(long, env = "STREAMPULSE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// HTTP address for operators: /metrics (Prometheus), /healthz, /readyz; port 0 picks a free port
    #[arg(long, env = "STREAMPULSE_HTTP_LISTEN", default_value = "127.0.0.1:9090")]
    pub http_listen: String,
    /// Lifetime of bearer tokens issued at handshake
    #[arg(long, env = "STREAMPULSE_TOKEN_TTL", default_value = "12h")]
    pub token_ttl: humantime::Duration,
    /// Statements that may run at once; the rest wait in a FIFO queue
    #[arg(long, env = "STREAMPULSE_MAX_CONCURRENT_QUERIES", default_value = "8")]
    pub max_concurrent_queries: NonZeroUsize,
    /// Longest wait in that queue, then RESOURCE_EXHAUSTED "server busy"
    #[arg(long, env = "STREAMPULSE_QUEUE_TIMEOUT", default_value = "60s")]
    pub queue_timeout: humantime::Duration,
    /// Largest gRPC message the server sends: result batches are cut to fit, and a single row
    /// larger than this fails with an error naming it. Most gRPC clients accept 4 MiB by default;
    /// raise both limits together
    #[arg(long, env = "STREAMPULSE_MAX_MESSAGE_SIZE", default_value = "4MiB")]
    pub max_message_size: ByteSize,
    /// Name of the admin created on the first start of a fresh warehouse
    #[arg(long, env = "STREAMPULSE_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,
    /// Password of that first admin [default: generated and printed once]
    #[arg(long, env = "STREAMPULSE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Generate a small StreamPulse dataset and load it (schema `music`) before serving, unless it is already there; local warehouses only
    #[arg(long, env = "STREAMPULSE_DEMO")]
    pub demo: bool,
    /// Scale factor of the --demo dataset (1 = 100 M plays)
    #[arg(long, env = "STREAMPULSE_DEMO_SCALE", default_value_t = 0.001)]
    pub demo_scale: f64,
    /// Run no task scheduler in this server (tasks still run with EXECUTE TASK); several servers on one warehouse may all schedule: each run happens once
    #[arg(long, env = "STREAMPULSE_NO_SCHEDULER")]
    pub no_scheduler: bool,
    /// How long task runs stay in system.runs (the warehouse's _runs/ journal, by when they ended); older ones move to the Delta table behind system.run_history
    #[arg(long, env = "STREAMPULSE_RUN_HISTORY_RETENTION", default_value = "30days")]
    pub run_history_retention: humantime::Duration,
    /// Run no pipes in this server (COPY INTO still works); several servers on one warehouse may all run them: each file is loaded once
    #[arg(long, env = "STREAMPULSE_NO_PIPES")]
    pub no_pipes: bool,
    /// Most files a pipe commits in one batch
    #[arg(long, env = "STREAMPULSE_PIPE_MAX_FILES", default_value = "500")]
    pub pipe_max_files: NonZeroUsize,
    /// Most bytes (as stored, e.g. gzipped) a pipe commits in one batch
    #[arg(long, env = "STREAMPULSE_PIPE_MAX_BYTES", default_value = "256MiB")]
    pub pipe_max_bytes: ByteSize,
    /// How often tables that pipes load are compacted and their Delta logs cleaned (0s: never)
    #[arg(long, env = "STREAMPULSE_INGEST_MAINTENANCE_INTERVAL", default_value = "10m")]
    pub ingest_maintenance_interval: humantime::Duration,
    /// How often that maintenance also vacuums files no commit references (compacted-away ones, orphans of crashed batches) once older than the table's retention, 7 days by default (0s: never)
    #[arg(long, env = "STREAMPULSE_INGEST_VACUUM_INTERVAL", default_value = "1day")]
    pub ingest_vacuum_interval: humantime::Duration,
}

impl WarehouseArgs {
    /// The engine configuration these settings describe.
    pub fn engine_config(&self) -> Result<EngineConfig> {
        let total = total_memory();
        let memory_limit = self.memory_limit.bytes(total);
        let query_memory_limit = match &self.query_memory_limit {
            Some(size) => {
                let bytes = size.bytes(total);
                if bytes > memory_limit {
                    return Err(Error::invalid(format!(
                        "query memory limit {size} is above the memory limit {} ({bytes} > {memory_limit} bytes)",
                        self.memory_limit
                    )));
                }
                Some(bytes)
            }
            None => None,
        };
        let s3 = S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            allow_http: self.s3_allow_http,
            instance_credentials: self.s3_instance_credentials,
        };
        Ok(EngineConfig {
            warehouse: self.warehouse.clone(),
            s3,
            memory_limit,
            query_memory_limit,
            spill_dir: self.spill_dir.clone(),
            spill_max_size: self.spill_max_size.map(|s| s.0),
            spill_compression: Some(self.spill_compression.as_str().to_string()),
            target_partitions: self.target_partitions.map(NonZeroUsize::get),
            query_log_size: self.query_log_size.get(),
            http_allow: self.http_sources_allow.clone(),
            cluster: match &self.cluster {
                Some(url) => Some(Arc::new(streampulse_cluster::Cluster::parse(url)?) as Arc<dyn ClusterHook>),
                None => None,
            },
        })
    }
}

/// Physical memory in bytes (from /proc/meminfo), or 8 GiB when it cannot be read.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}
