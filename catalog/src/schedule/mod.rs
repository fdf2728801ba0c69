//! Tasks: SQL scripts the server runs on a schedule, after each other, with parameters from the
//! **scheduled** time, and a journal of every run that survives crashes.
//!
//! | module | what is there |
//! |---|---|
//! | [`spec`] | cron + time zone / interval schedules and their DST rules |
//! | [`parse`] | the task statements, caught before DataFusion's parser |
//! | [`statements`] | CREATE / ALTER / DROP / EXECUTE TASK against the catalog |
//! | [`run`] | one run: parameters, claim, the script under a timeout, the verdict |
//! | [`journal`] | `_runs/`: create-only claim and done files per attempt |
//! | [`scheduler`] | the loop `serve` runs: due slots, catch-up, dependencies, retries, recovery |
//!
//! Definitions live in the catalog ([`crate::catalog::TaskEntry`]); runs live in the journal;
//! [`Tasks`] is the process's share: the journal, the runs in flight here, and the listener the
//! server's metrics use.

pub mod journal;
pub mod parse;
pub mod run;
pub mod scheduler;
pub mod spec;
pub mod statements;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use journal::{Claim, Done, Journal, RunEntry, RunState, Trigger};
pub use parse::{TaskStatement, parse_task_statement};
pub use spec::Schedule;

use crate::catalog::{CatalogState, TaskEntry};
use crate::storage::Warehouse;

/// How often a running run says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A run without a heartbeat for this long, on another host, is dead.
pub const LEASE: Duration = Duration::from_secs(60);

/// A run that ended, as the metrics see it.
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub task: String,
    pub trigger: Trigger,
    pub state: RunState,
    pub scheduled_time: DateTime<Utc>,
    pub duration: Duration,
    /// How late it started after its slot (scheduled runs only).
    pub lag: Option<Duration>,
    /// Consecutive failed scheduled runs of the task, this one included.
    pub consecutive_failures: u32,
}

type Listener = Box<dyn Fn(&RunEvent) + Send + Sync>;

/// Live progress of a run in flight in this process.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub task: String,
    pub statements_done: usize,
    pub rows: u64,
}

/// The process's share of the task machinery.
pub struct Tasks {
    journal: Journal,
    node: String,
    running: Mutex<HashMap<String, Progress>>,
    listener: OnceLock<Listener>,
    /// Wakes the scheduler (task DDL, a run ended).
    pub(crate) wake: Notify,
    recovered: AtomicBool,
    scheduler_enabled: AtomicBool,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Tasks {
    pub(crate) fn new(warehouse: Warehouse) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "localhost".into());
        let process = uuid::Uuid::new_v4().simple().to_string();
        let node = format!("{host}:{}:{}", std::process::id(), &process[..8]);
        Arc::new(Self {
            journal: Journal::new(warehouse),
            node,
            running: Mutex::default(),
            listener: OnceLock::new(),
            wake: Notify::new(),
            recovered: AtomicBool::new(false),
            scheduler_enabled: AtomicBool::new(false),
        })
    }

    /// The run journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// This process's node id: `host:pid:random`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Call `listener` with every run that ends (set once).
    pub fn set_listener(&self, listener: impl Fn(&RunEvent) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(listener));
    }

    pub(crate) fn emit(&self, event: &RunEvent) {
        if let Some(l) = self.listener.get() {
            l(event);
        }
    }

    /// Whether the scheduler has finished its first pass (recovered runs a crash left behind);
    /// true when this process runs no scheduler.
    pub fn recovered(&self) -> bool {
        !self.scheduler_enabled.load(Ordering::Relaxed) || self.recovered.load(Ordering::Relaxed)
    }

    /// A scheduler is about to run in this process: `/readyz` waits for its first pass.
    pub fn scheduler_starting(&self) {
        self.scheduler_enabled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn register(&self, run_id: &str, task: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.entry(run_id.to_string()).or_insert_with(|| Progress { task: task.to_string(), ..Default::default() });
        }
    }

    pub(crate) fn progress(&self, run_id: &str, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut r) = self.running.lock()
            && let Some(p) = r.get_mut(run_id)
        {
            f(p);
        }
    }

    pub(crate) fn unregister(&self, run_id: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(run_id);
        }
    }

    /// Progress of a run in flight here.
    pub fn running(&self, run_id: &str) -> Option<Progress> {
        self.running.lock().ok().and_then(|r| r.get(run_id).cloned())
    }

    /// Whether a run of `task` is in flight in this process.
    pub fn task_running_here(&self, task: &str) -> bool {
        self.running.lock().is_ok_and(|r| r.values().any(|p| p.task == task))
    }

    /// Whether an attempt without a verdict is still alive: in flight here, or (elsewhere)
    /// heard from within the lease and, on this host, its process still exists.
    pub fn alive(&self, entry: &RunEntry, now: DateTime<Utc>) -> bool {
        if entry.done.is_some() {
            return false;
        }
        let node = &entry.claim.node;
        if node == &self.node {
            return self.running(&entry.claim.run_id).is_some();
        }
        let mut parts = node.split(':');
        let (host, pid) = (parts.next(), parts.next());
        let own_host = self.node.split(':').next();
        if host == own_host
            && let Some(pid) = pid
            && std::path::Path::new("/proc/self").exists()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return false;
        }
        now.signed_duration_since(entry.last_seen).to_std().map_or(true, |age| age < LEASE)
    }
}

/// Where one slot of the schedule's series stands: its latest attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStatus {
    Succeeded,
    /// Ended without success and no retry will come.
    FailedFinal,
    /// Skipped (overlap, upstream failed).
    Skipped,
    /// Running, or failed with a retry due.
    Pending,
}

/// The latest attempt of each (slot, series) of one task's entries.
pub fn latest_attempts<'a>(runs: &[&'a RunEntry]) -> Vec<&'a RunEntry> {
    let mut latest: BTreeMap<(DateTime<Utc>, &str), &RunEntry> = BTreeMap::new();
    for r in runs {
        let k = (r.key.slot, r.key.series.as_str());
        if latest.get(&k).is_none_or(|prev| prev.key.attempt < r.key.attempt) {
            latest.insert(k, r);
        }
    }
    latest.into_values().collect()
}

/// How a latest attempt stands.
pub fn status(entry: &RunEntry) -> SlotStatus {
    match entry.done.as_deref() {
        None => SlotStatus::Pending,
        Some(d) => match d.state {
            Some(RunState::Succeeded) => SlotStatus::Succeeded,
            Some(RunState::Skipped) => SlotStatus::Skipped,
            _ if d.next_retry_at.is_some() => SlotStatus::Pending,
            _ => SlotStatus::FailedFinal,
        },
    }
}

/// What `system.tasks` and the metrics show about a task's history.
#[derive(Debug, Clone, Default)]
pub struct TaskSummary {
    pub last_run_state: Option<String>,
    pub last_run_time: Option<DateTime<Utc>>,
    pub last_success_time: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
}

/// Summarise one task's journal entries.
pub fn summarise(runs: &[&RunEntry]) -> TaskSummary {
    let mut s = TaskSummary::default();
    let latest = latest_attempts(runs);
    if let Some(last) = runs.iter().max_by_key(|r| r.claim.started_at.clone()) {
        s.last_run_state = Some(match last.done.as_deref().and_then(|d| d.state) {
            Some(state) => state.as_str().to_string(),
            None => "running".to_string(),
        });
        s.last_run_time = journal::parse_timestamp(&last.claim.started_at);
    }
    s.last_success_time = runs
        .iter()
        .filter(|r| r.done.as_deref().is_some_and(|d| d.state == Some(RunState::Succeeded)))
        .filter_map(|r| journal::parse_timestamp(&r.done.as_deref()?.completed_at))
        .max();
    for r in latest.iter().rev().filter(|r| r.key.scheduled()) {
        match status(r) {
            SlotStatus::Succeeded => break,
            SlotStatus::FailedFinal => s.consecutive_failures += 1,
            SlotStatus::Skipped | SlotStatus::Pending => {}
        }
    }
    s
}

/// When the next attempt of a scheduled run of `task` is due after attempt `attempt` failed at
/// `failed_at`: `RETRY_DELAY`, doubled per attempt (at most a day); `None` when none is left.
pub fn next_retry(task: &TaskEntry, attempt: u32, failed_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (attempt <= task.retries).then(|| {
        let delay = task.retry_delay_secs.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(86_400);
        failed_at + chrono::TimeDelta::seconds(delay as i64)
    })
}

/// The schedule a task runs on: its own, or (for `AFTER` tasks) its first upstream's, followed
/// up the graph.
pub fn effective_schedule(catalog: &CatalogState, name: &str) -> crate::error::Result<Schedule> {
    let mut current = name.to_string();
    for _ in 0..=catalog.tasks.len() {
        let task: &TaskEntry = catalog
            .tasks
            .get(&current)
            .ok_or_else(|| crate::error::Error::NotFound { kind: "task", name: current.clone() })?;
        match (&task.schedule, task.after.first()) {
            (Some(s), _) => return s.parse(),
            (None, Some(up)) => current = up.clone(),
            (None, None) => break,
        }
    }
    Err(crate::error::Error::invalid(format!("task {name} has no schedule, nor an upstream with one")))
}
