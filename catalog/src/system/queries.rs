//! `system.queries`: the recent statements of this process, from every protocol, in a bounded
//! ring buffer (the oldest finished entries go first). A statement is entered when it arrives,
//! so running and queued statements show too, and updated in place as it is admitted and ends.
//! A listener (the server's metrics) sees every finished statement.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::session::QueryStats;

/// Longest statement text kept; longer text is cut (and says so).
const MAX_TEXT: usize = 64 * 1024;

/// Where a statement is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl QueryState {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryState::Queued => "queued",
            QueryState::Running => "running",
            QueryState::Succeeded => "succeeded",
            QueryState::Failed => "failed",
            QueryState::Cancelled => "cancelled",
        }
    }

    fn finished(self) -> bool {
        matches!(self, QueryState::Succeeded | QueryState::Failed | QueryState::Cancelled)
    }
}

/// One statement as `system.queries` shows it.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    pub query_id: String,
    pub user: String,
    /// `flight_sql`, `embedded` or `task`.
    pub protocol: &'static str,
    /// `query`, `ddl`, `dml`, `session`, `ingest`, or `unknown` when it did not plan.
    pub kind: String,
    pub text: String,
    pub state: QueryState,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub queue_wait: Option<Duration>,
    pub rows: Option<u64>,
    pub stats: QueryStats,
    /// The status code the client saw (gRPC code name), when it failed.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The task and run it belongs to, for statements of a task run.
    pub task: Option<String>,
    pub run_id: Option<String>,
}

type Listener = Box<dyn Fn(&QueryRecord) + Send + Sync>;

/// The ring buffer behind `system.queries`.
pub struct QueryLog {
    capacity: usize,
    entries: Mutex<VecDeque<Arc<Mutex<QueryRecord>>>>,
    next_id: AtomicU64,
    listener: OnceLock<Listener>,
}

impl std::fmt::Debug for QueryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLog").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl QueryLog {
    /// A log keeping the last `capacity` statements (at least 1).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            entries: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            listener: OnceLock::new(),
        })
    }

    /// Call `listener` with every statement that finishes (set once; later calls are ignored).
    pub fn set_listener(&self, listener: impl Fn(&QueryRecord) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(listener));
    }

    /// Enter a statement that just arrived; the handle records what happens to it.
    pub fn start(self: &Arc<Self>, user: &str, protocol: &'static str, text: &str) -> QueryHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let text = if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}… ({} bytes in all)", &text[..cut], text.len())
        } else {
            text.to_string()
        };
        let record = Arc::new(Mutex::new(QueryRecord {
            query_id: format!("q{id}"),
            user: user.to_string(),
            protocol,
            kind: "unknown".into(),
            text,
            state: QueryState::Queued,
            start: SystemTime::now(),
            end: None,
            queue_wait: None,
            rows: None,
            stats: QueryStats::default(),
            error_code: None,
            error_message: None,
            task: None,
            run_id: None,
        }));
        if let Ok(mut entries) = self.entries.lock() {
            entries.push_back(record.clone());
            // Evict the oldest finished entries first; running ones stay while they run.
            while entries.len() > self.capacity {
                match entries.iter().position(|e| e.lock().map(|r| r.state.finished()).unwrap_or(true)) {
                    Some(i) => {
                        entries.remove(i);
                    }
                    None => break,
                }
            }
        }
        QueryHandle { log: Arc::clone(self), record, finished: false }
    }

    /// A copy of every entry, oldest first.
    pub fn snapshot(&self) -> Vec<QueryRecord> {
        self.entries
            .lock()
            .map(|e| e.iter().filter_map(|r| r.lock().ok().map(|r| r.clone())).collect())
            .unwrap_or_default()
    }

    /// How many entries are in `state` now (without copying them).
    pub fn count(&self, state: QueryState) -> usize {
        self.entries.lock().map(|e| e.iter().filter(|r| r.lock().is_ok_and(|r| r.state == state)).count()).unwrap_or(0)
    }

    /// The schema of `system.queries`.
    pub fn schema() -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("query_id", DataType::Utf8, false),
            Field::new("user", DataType::Utf8, false),
            Field::new("protocol", DataType::Utf8, false),
            Field::new("statement_kind", DataType::Utf8, false),
            Field::new("query_text", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("start_time", ts(), false),
            Field::new("end_time", ts(), true),
            Field::new("queue_wait_ms", DataType::UInt64, true),
            Field::new("duration_ms", DataType::UInt64, true),
            Field::new("rows", DataType::UInt64, true),
            Field::new("peak_memory_bytes", DataType::UInt64, false),
            Field::new("spill_count", DataType::UInt64, false),
            Field::new("spilled_bytes", DataType::UInt64, false),
            Field::new("cluster_jobs", DataType::UInt64, false),
            Field::new("error_code", DataType::Utf8, true),
            Field::new("error_message", DataType::Utf8, true),
            Field::new("task", DataType::Utf8, true),
            Field::new("run_id", DataType::Utf8, true),
        ]))
    }

    /// The entries as one batch of [`QueryLog::schema`].
    pub fn batch(&self) -> Result<RecordBatch> {
        let rows = self.snapshot();
        let micros = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let ms = |d: Duration| d.as_millis() as u64;
        let strings = |f: &dyn Fn(&QueryRecord) -> Option<String>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        let columns: Vec<ArrayRef> = vec![
            strings(&|r| Some(r.query_id.clone())),
            strings(&|r| Some(r.user.clone())),
            strings(&|r| Some(r.protocol.to_string())),
            strings(&|r| Some(r.kind.clone())),
            strings(&|r| Some(r.text.clone())),
            strings(&|r| Some(r.state.as_str().to_string())),
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| micros(r.start)).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| r.end.map(micros)).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(rows.iter().map(|r| r.queue_wait.map(ms)).collect::<UInt64Array>()),
            Arc::new(
                rows.iter()
                    .map(|r| r.end.and_then(|e| e.duration_since(r.start).ok()).map(ms))
                    .collect::<UInt64Array>(),
            ),
            Arc::new(rows.iter().map(|r| r.rows).collect::<UInt64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.stats.peak_memory as u64)).collect::<UInt64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.stats.spill_count as u64)).collect::<UInt64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.stats.spilled_bytes as u64)).collect::<UInt64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.stats.cluster_jobs as u64)).collect::<UInt64Array>()),
            strings(&|r| r.error_code.clone()),
            strings(&|r| r.error_message.clone()),
            strings(&|r| r.task.clone()),
            strings(&|r| r.run_id.clone()),
        ];
        RecordBatch::try_new(Self::schema(), columns).map_err(|e| Error::internal(format!("system.queries: {e}")))
    }
}

/// What one statement's caller updates as it goes. Dropped without [`QueryHandle::finish`]
/// (the caller's future was dropped: the client went away), it records a cancellation.
pub struct QueryHandle {
    log: Arc<QueryLog>,
    record: Arc<Mutex<QueryRecord>>,
    finished: bool,
}

impl QueryHandle {
    fn update(&self, f: impl FnOnce(&mut QueryRecord)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }

    /// The statement's id in `system.queries`.
    pub fn id(&self) -> String {
        self.record.lock().map(|r| r.query_id.clone()).unwrap_or_default()
    }

    /// The statement is part of run `run_id` of `task`.
    pub fn in_run(&self, task: &str, run_id: &str) {
        self.update(|r| {
            r.task = Some(task.to_string());
            r.run_id = Some(run_id.to_string());
        });
    }

    /// The statement planned as `kind` (`query`, `ddl`, `dml`, ...).
    pub fn planned(&self, kind: &str) {
        self.update(|r| r.kind = kind.to_string());
    }

    /// The statement got its turn after waiting `queue_wait`.
    pub fn admitted(&self, queue_wait: Duration) {
        self.update(|r| {
            r.state = QueryState::Running;
            r.queue_wait = Some(queue_wait);
        });
    }

    /// The statement ended: `error` is `(code, message)` when it failed.
    pub fn finish(mut self, rows: Option<u64>, stats: QueryStats, error: Option<(&str, String)>) {
        self.end(rows, stats, error);
    }

    fn end(&mut self, rows: Option<u64>, stats: QueryStats, error: Option<(&str, String)>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.update(|r| {
            r.end = Some(SystemTime::now());
            r.rows = rows;
            r.stats = stats;
            r.state = match &error {
                None => QueryState::Succeeded,
                Some(("CANCELLED", _)) => QueryState::Cancelled,
                Some(_) => QueryState::Failed,
            };
            if let Some((code, message)) = error {
                r.error_code = Some(code.to_string());
                r.error_message = Some(message);
            }
        });
        if let Ok(r) = self.record.lock() {
            // The one log line per finished statement, whatever the protocol.
            tracing::info!(
                query_id = %r.query_id,
                user = %r.user,
                protocol = r.protocol,
                kind = %r.kind,
                state = r.state.as_str(),
                duration_ms = r.end.and_then(|e| e.duration_since(r.start).ok()).map_or(0, |d| d.as_millis() as u64),
                queue_wait_ms = r.queue_wait.map_or(0, |d| d.as_millis() as u64),
                rows = r.rows.unwrap_or(0),
                peak_memory = r.stats.peak_memory,
                spilled_bytes = r.stats.spilled_bytes,
                cluster_jobs = r.stats.cluster_jobs,
                error_code = r.error_code.as_deref().unwrap_or(""),
                error = r.error_message.as_deref().unwrap_or(""),
                task = r.task.as_deref().unwrap_or(""),
                run_id = r.run_id.as_deref().unwrap_or(""),
                sql = %crate::sql::runner::abbreviate(&r.text),
                "query finished"
            );
            if let Some(listener) = self.log.listener.get() {
                listener(&r);
            }
        }
    }
}

impl Drop for QueryHandle {
    fn drop(&mut self) {
        if !self.finished {
            let stats = self.record.lock().map(|r| r.stats).unwrap_or_default();
            self.end(None, stats, Some(("CANCELLED", "the client went away before the statement ended".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_and_running_entries() {
        let log = QueryLog::new(2);
        let running = log.start("a", "flight_sql", "SELECT 1");
        running.admitted(Duration::from_millis(3));
        for i in 0..3 {
            log.start("b", "flight_sql", &format!("SELECT {i}")).finish(Some(1), QueryStats::default(), None);
        }
        let rows = log.snapshot();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, QueryState::Running, "the running entry is not evicted");
        assert_eq!((log.count(QueryState::Running), log.count(QueryState::Succeeded)), (1, 1));
        assert_eq!(rows[1].text, "SELECT 2");
        drop(running);
        assert_eq!(log.snapshot()[0].state, QueryState::Cancelled);
        assert_eq!(log.batch().unwrap().num_rows(), 2);
    }
}
