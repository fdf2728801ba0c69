//! The Prometheus metrics: counted as statements finish (the query log's listener) and as
//! admission turns statements away; gauges read at scrape time. Labels are bounded (statement
//! kind, status): never a user name or SQL text.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
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
}

impl Metrics {
    pub fn new() -> Arc<Self> {
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
        })
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
    pub fn render(&self, engine: Option<&Engine>) -> String {
        if let Some(engine) = engine {
            let log = engine.query_log();
            self.running.set(log.count(QueryState::Running) as i64);
            self.queued.set(log.count(QueryState::Queued) as i64);
            self.memory_in_use.set(engine.memory_in_use() as i64);
            self.memory_limit.set(engine.memory_limit() as i64);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
