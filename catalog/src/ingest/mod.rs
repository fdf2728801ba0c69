//! Bringing files in: `COPY INTO` a managed table from a local folder or `s3://` prefix, and
//! **pipes** that the server runs continuously — each file loaded exactly once, atomically with
//! its record, whatever crashes.
//!
//! | module | what is there |
//! |---|---|
//! | [`parse`] | `COPY INTO`, `CREATE / ALTER / DROP PIPE`, `SHOW PIPES` |
//! | [`decode`] | a file's bytes (JSON lines, CSV, Parquet; gzip) into the target's columns, bad lines kept |
//! | [`ledger`] | per table: numbered create-only plans, the `errors/` and `history/` Delta tables, the txn-guarded commit |
//! | [`copy`] | the statement: list, keep new files, decode, plan, commit, redo what a crash left |
//! | [`pipes`] | pipe statements against the catalog, and the service `serve` runs |
//! | [`maintenance`] | compaction, checkpoints and log cleanup of the tables pipes load, off the commit path |
//!
//! Exactly once rests on three facts: a plan is written create-only before its batch commits,
//! so two ingesters never own one batch and every crash leaves a plan anyone can redo; each
//! of a batch's commits carries the Delta application transaction `(streampulse.copy, k)`
//! and is skipped when the table already holds `k` (checked on the snapshot the commit is
//! built on; a conflict reloads and checks again); batches commit in order, because a new
//! plan is made only once every older one is done.

pub mod copy;
pub mod decode;
pub mod ledger;
pub mod maintenance;
pub mod parse;
pub mod pipes;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use copy::{CopyOutcome, FileResult, Limits};
pub use ledger::Plan;
pub use parse::{CopyInto, IngestStatement, parse_ingest_statement};

use crate::storage::Warehouse;

/// What one committed batch loaded, for the metrics.
#[derive(Debug, Clone)]
pub struct LoadEvent {
    pub pipe: Option<String>,
    pub table: String,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub rejected: u64,
    /// Seconds from each file's last modification to its commit.
    pub lags: Vec<f64>,
}

/// A pipe as this process sees it running.
#[derive(Debug, Clone, Default)]
pub struct PipeStatus {
    pub last_poll: Option<DateTime<Utc>>,
    pub last_commit: Option<DateTime<Utc>>,
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    pub files_loaded: u64,
    pub bytes_loaded: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    /// Seconds from the newest committed file's last modification to its commit.
    pub last_lag: Option<f64>,
    pub last_error: Option<String>,
}

/// A plan older than this whose planner still seems alive is redone anyway.
const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

type Listener = Box<dyn Fn(&LoadEvent) + Send + Sync>;

/// The ingest runtime of one process: ledgers in use, pipe status, the load listener.
pub struct Ingest {
    node: String,
    ledgers: Mutex<HashMap<String, Arc<ledger::Ledger>>>,
    pipes: Mutex<BTreeMap<String, PipeStatus>>,
    listener: OnceLock<Listener>,
    /// Pipe statements wake the service so a change shows at once.
    pub wake: Notify,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Ingest {
    pub(crate) fn new(node: String) -> Arc<Self> {
        Arc::new(Self {
            node,
            ledgers: Mutex::default(),
            pipes: Mutex::default(),
            listener: OnceLock::new(),
            wake: Notify::new(),
        })
    }

    /// `host:pid:instance` of this process.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The ledger of the table stored at `location` (one per table and process).
    pub fn ledger(&self, warehouse: &Warehouse, location: &str) -> Arc<ledger::Ledger> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            ledgers
                .entry(location.to_string())
                .or_insert_with(|| Arc::new(ledger::Ledger::new(warehouse.clone(), location))),
        )
    }

    /// Called with every committed batch (the server counts them for /metrics).
    pub fn set_listener(&self, f: impl Fn(&LoadEvent) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(f));
    }

    /// Whether this process may redo `plan`: it made it (and is not working on it, since the
    /// ledger's lock is held), its planner's process on this host is gone, or it is older
    /// than the lease.
    pub(crate) fn may_redo(&self, plan: &Plan) -> bool {
        if plan.owner == self.node {
            return true;
        }
        let mut parts = plan.owner.split(':');
        let (host, pid) = (parts.next(), parts.next());
        if host == self.node.split(':').next()
            && let Some(pid) = pid
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return true;
        }
        copy::parse_time(&plan.planned_at).is_none_or(|t| (Utc::now() - t).to_std().is_ok_and(|age| age > LEASE))
    }

    pub(crate) fn loaded(&self, pipe: Option<&str>, table: &str, results: &[FileResult], lags: &[f64]) {
        let event = LoadEvent {
            pipe: pipe.map(str::to_string),
            table: table.to_string(),
            files: results.len() as u64,
            bytes: results.iter().map(|r| r.size).sum(),
            rows: results.iter().map(|r| r.rows_loaded.max(0) as u64).sum(),
            rejected: results.iter().map(|r| r.rows_rejected.max(0) as u64).sum(),
            lags: lags.to_vec(),
        };
        if let Some(pipe) = pipe {
            let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
            let s = pipes.entry(pipe.to_string()).or_default();
            s.last_commit = Some(Utc::now());
            s.files_loaded += event.files;
            s.bytes_loaded += event.bytes;
            s.rows_loaded += event.rows;
            s.rows_rejected += event.rejected;
            if let Some(lag) = lags.iter().cloned().reduce(f64::min) {
                s.last_lag = Some(lag);
            }
        }
        if let Some(f) = self.listener.get() {
            f(&event);
        }
    }

    /// This process's view of each pipe it runs.
    pub fn pipe_status(&self) -> BTreeMap<String, PipeStatus> {
        self.pipes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update_pipe(&self, pipe: &str, f: impl FnOnce(&mut PipeStatus)) {
        let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        f(pipes.entry(pipe.to_string()).or_default());
    }
}
