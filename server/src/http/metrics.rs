//! The Prometheus metrics: counted as statements finish (the query log's listener), as task
//! runs end (the task runtime's listener) and as admission turns statements away; gauges read
//! at scrape time. Labels are bounded (statement kind, status, task name — tasks are few and
//! made by admins): never a user name or SQL text.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use streampulse_engine::ingest::LoadEvent;
use streampulse_engine::schedule::RunEvent;
use streampulse_engine::system::QueryRecord;
use streampulse_engine::{Engine, QueryState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskStatusLabels {
    task: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

/// A pipe's name, or `copy` for COPY INTO statements (pipes are few and made by admins).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipeLabels {
    pipe: String,
}

fn lag_buckets() -> Histogram {
    // 50 ms to ~14 min
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds_buckets() -> Histogram {
    // 1 ms to ~4.4 min
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    statements: Family<StatementLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    queue_wait: Histogram,
    spilled_bytes: Counter,
    /// Counted by admission control.
    pub admission_rejected: Counter,
    running: Gauge,
    queued: Gauge,
    memory_in_use: Gauge,
    memory_limit: Gauge,
    task_runs: Family<TaskStatusLabels, Counter>,
    task_duration: Family<TaskLabels, Histogram, fn() -> Histogram>,
    task_last_success: Family<TaskLabels, FloatGauge>,
    task_failures: Family<TaskLabels, Gauge>,
    task_suspended: Family<TaskLabels, Gauge>,
    scheduler_lag: FloatGauge,
    catalog_conflicts: Counter,
    conflicts_seen: AtomicU64,
    files_loaded: Family<PipeLabels, Counter>,
    bytes_loaded: Family<PipeLabels, Counter>,
    rows_loaded: Family<PipeLabels, Counter>,
    rows_rejected: Family<PipeLabels, Counter>,
    load_lag: Family<PipeLabels, Histogram, fn() -> Histogram>,
    pipe_backlog_files: Family<PipeLabels, Gauge>,
    pipe_backlog_bytes: Family<PipeLabels, Gauge>,
    cluster: Option<ClusterGauges>,
}

/// A server with `--cluster`: what its scheduler says, asked at each scrape.
struct ClusterGauges {
    scheduler_up: Gauge,
    executors: Gauge,
}

impl Metrics {
    /// The metrics of a server; `cluster`: it runs queries on a cluster.
    pub fn new(cluster: bool) -> Arc<Self> {
        let mut registry = Registry::with_prefix("streampulse");
        let statements = Family::<StatementLabels, Counter>::default();
        registry.register("queries", "Statements finished, by kind and status", statements.clone());
        let duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets);
        registry.register("query_duration_seconds", "Statement wall time from arrival to end", duration.clone());
        let queue_wait = seconds_buckets();
        registry.register("query_queue_wait_seconds", "Time statements waited for admission", queue_wait.clone());
        let spilled_bytes = Counter::default();
        registry.register(
            "spilled_bytes",
            "Bytes written to spill files by finished statements",
            spilled_bytes.clone(),
        );
        let admission_rejected = Counter::default();
        registry.register(
            "admission_rejected",
            "Statements refused because the queue wait ran out (server busy)",
            admission_rejected.clone(),
        );
        let running = Gauge::default();
        registry.register("queries_running", "Statements running now", running.clone());
        let queued = Gauge::default();
        registry.register("queries_queued", "Statements waiting for admission now", queued.clone());
        let memory_in_use = Gauge::default();
        registry.register(
            "memory_pool_used_bytes",
            "Bytes reserved in the query memory pool now",
            memory_in_use.clone(),
        );
        let memory_limit = Gauge::default();
        registry.register("memory_pool_limit_bytes", "Size of the query memory pool", memory_limit.clone());
        let task_runs = Family::<TaskStatusLabels, Counter>::default();
        registry.register("task_runs", "Task runs ended, by task and status", task_runs.clone());
        let task_duration = Family::<TaskLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets);
        registry.register("task_run_duration_seconds", "Wall time of task runs", task_duration.clone());
        let task_last_success = Family::<TaskLabels, FloatGauge>::default();
        registry.register(
            "task_last_success_timestamp_seconds",
            "When each task last succeeded (Unix time; alert on time() minus this)",
            task_last_success.clone(),
        );
        let task_failures = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "task_consecutive_failures",
            "Failed scheduled runs of each task since its last success",
            task_failures.clone(),
        );
        let task_suspended = Family::<TaskLabels, Gauge>::default();
        registry.register("task_suspended", "1 when the task is suspended", task_suspended.clone());
        let scheduler_lag = FloatGauge::default();
        registry.register(
            "scheduler_lag_seconds",
            "How late the latest scheduled run started after its slot",
            scheduler_lag.clone(),
        );
        let catalog_conflicts = Counter::default();
        registry.register(
            "catalog_commit_conflicts",
            "Catalog commits that lost a race with another writer and were retried",
            catalog_conflicts.clone(),
        );
        let files_loaded = Family::<PipeLabels, Counter>::default();
        registry.register(
            "ingest_files_loaded",
            "Landing files committed, by pipe (copy: COPY INTO)",
            files_loaded.clone(),
        );
        let bytes_loaded = Family::<PipeLabels, Counter>::default();
        registry.register("ingest_bytes_loaded", "Bytes of landing files committed, as stored", bytes_loaded.clone());
        let rows_loaded = Family::<PipeLabels, Counter>::default();
        registry.register("ingest_rows_loaded", "Rows committed from landing files", rows_loaded.clone());
        let rows_rejected = Family::<PipeLabels, Counter>::default();
        registry.register(
            "ingest_rows_rejected",
            "Bad lines and unreadable files kept in system.load_errors",
            rows_rejected.clone(),
        );
        let load_lag = Family::<PipeLabels, Histogram, fn() -> Histogram>::new_with_constructor(lag_buckets);
        registry.register(
            "ingest_lag_seconds",
            "End-to-end lag: a file's last modification (arrival) to its rows being visible in the table",
            load_lag.clone(),
        );
        let pipe_backlog_files = Family::<PipeLabels, Gauge>::default();
        registry.register(
            "pipe_backlog_files",
            "New files a pipe has listed and not yet loaded",
            pipe_backlog_files.clone(),
        );
        let pipe_backlog_bytes = Family::<PipeLabels, Gauge>::default();
        registry.register("pipe_backlog_bytes", "Bytes of those files", pipe_backlog_bytes.clone());
        let cluster = cluster.then(|| {
            let gauges = ClusterGauges { scheduler_up: Gauge::default(), executors: Gauge::default() };
            registry.register(
                "cluster_scheduler_up",
                "1 when the cluster's scheduler answered this scrape",
                gauges.scheduler_up.clone(),
            );
            registry.register(
                "cluster_executors",
                "Executors the cluster's scheduler has alive (0 when it did not answer)",
                gauges.executors.clone(),
            );
            gauges
        });
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
        );
        Arc::new(Self {
            registry,
            statements,
            duration,
            queue_wait,
            spilled_bytes,
            admission_rejected,
            running,
            queued,
            memory_in_use,
            memory_limit,
            task_runs,
            task_duration,
            task_last_success,
            task_failures,
            task_suspended,
            scheduler_lag,
            catalog_conflicts,
            conflicts_seen: AtomicU64::new(0),
            files_loaded,
            bytes_loaded,
            rows_loaded,
            rows_rejected,
            load_lag,
            pipe_backlog_files,
            pipe_backlog_bytes,
            cluster,
        })
    }

    /// Count a task run that ended.
    pub fn record_run(&self, e: &RunEvent) {
        let task = e.task.clone();
        self.task_runs.get_or_create(&TaskStatusLabels { task: task.clone(), status: e.state.as_str().into() }).inc();
        let labels = TaskLabels { task };
        if e.state != streampulse_engine::schedule::RunState::Skipped {
            self.task_duration.get_or_create(&labels).observe(e.duration.as_secs_f64());
        }
        if e.state == streampulse_engine::schedule::RunState::Succeeded {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.task_last_success.get_or_create(&labels).set(now.as_secs_f64());
        }
        self.task_failures.get_or_create(&labels).set(i64::from(e.consecutive_failures));
        if let Some(lag) = e.lag {
            self.scheduler_lag.set(lag.as_secs_f64());
        }
    }

    /// Count a committed ingest batch.
    pub fn record_load(&self, e: &LoadEvent) {
        let labels = PipeLabels { pipe: e.pipe.clone().unwrap_or_else(|| "copy".into()) };
        self.files_loaded.get_or_create(&labels).inc_by(e.files);
        self.bytes_loaded.get_or_create(&labels).inc_by(e.bytes);
        self.rows_loaded.get_or_create(&labels).inc_by(e.rows);
        self.rows_rejected.get_or_create(&labels).inc_by(e.rejected);
        let lag = self.load_lag.get_or_create(&labels);
        for l in &e.lags {
            lag.observe(*l);
        }
    }

    /// Count a finished statement.
    pub fn record(&self, r: &QueryRecord) {
        let status = r.state.as_str().to_string();
        self.statements.get_or_create(&StatementLabels { kind: r.kind.clone(), status }).inc();
        if let Some(elapsed) = r.end.and_then(|end| end.duration_since(r.start).ok()) {
            self.duration.get_or_create(&KindLabels { kind: r.kind.clone() }).observe(elapsed.as_secs_f64());
        }
        if let Some(wait) = r.queue_wait {
            self.queue_wait.observe(wait.as_secs_f64());
        }
        self.spilled_bytes.inc_by(r.stats.spilled_bytes as u64);
    }

    /// The exposition text, with the gauges read from `engine` now (`None` before it is open).
    /// `executors`: what the cluster's scheduler said, if the server has a cluster.
    pub fn render(&self, engine: Option<&Engine>, executors: Option<streampulse_engine::Result<usize>>) -> String {
        if let (Some(gauges), Some(executors)) = (&self.cluster, executors) {
            let (up, n) = match executors {
                Ok(n) => (1, n as i64),
                Err(e) => {
                    tracing::debug!(error = %e, "the cluster's scheduler did not answer a metrics scrape");
                    (0, 0)
                }
            };
            gauges.scheduler_up.set(up);
            gauges.executors.set(n);
        }
        if let Some(engine) = engine {
            let log = engine.query_log();
            self.running.set(log.count(QueryState::Running) as i64);
            self.queued.set(log.count(QueryState::Queued) as i64);
            self.memory_in_use.set(engine.memory_in_use() as i64);
            self.memory_limit.set(engine.memory_limit() as i64);
            let catalog = engine.catalog().snapshot();
            for (name, task) in &catalog.tasks {
                let suspended = i64::from(task.state != "started");
                self.task_suspended.get_or_create(&TaskLabels { task: name.clone() }).set(suspended);
            }
            for (pipe, status) in engine.ingest().pipe_status() {
                let labels = PipeLabels { pipe };
                self.pipe_backlog_files.get_or_create(&labels).set(status.backlog_files as i64);
                self.pipe_backlog_bytes.get_or_create(&labels).set(status.backlog_bytes as i64);
            }
            let conflicts = engine.catalog().conflicts();
            let seen = self.conflicts_seen.swap(conflicts, Ordering::Relaxed);
            self.catalog_conflicts.inc_by(conflicts.saturating_sub(seen));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
