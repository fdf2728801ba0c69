//! The run journal: what ran, in the warehouse itself, as create-only objects.
//!
//! ```text
//! _runs/<schema.task>/<slot>/<key>-a<attempt>/claim.json      before statement 1
//! _runs/<schema.task>/<slot>/<key>-a<attempt>/heartbeat       rewritten while it runs
//! _runs/<schema.task>/<slot>/<key>-a<attempt>/done.json       when it ended
//! ```
//! `slot` is the scheduled time in UTC (`20261005T010000Z`); `key` is `s` for the one series
//! of runs the schedule owns (scheduled, catch-up and dependency runs and their retries) and
//! `m<uuid>` for each manual run or backfill slot. The claim is a conditional create
//! (`PutMode::Create`, as the catalog's commits), so of several servers (or a restarted one
//! racing its old self) exactly one runs an attempt; `done.json` is created once too, so a run
//! that was declared dead and then finished cannot overwrite the verdict. Claim and done files
//! never change once written and are cached; the heartbeat's modification time (from the
//! listing) says whether a run without `done.json` is alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Warehouse;

/// Folder under the warehouse root holding the journal.
pub const RUNS_DIR: &str = "_runs";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its slot came on time.
    Schedule,
    /// A slot missed while no server ran, caught up per `CATCHUP`.
    Catchup,
    /// Its upstreams (`AFTER`) succeeded for this slot.
    Dependency,
    /// `EXECUTE TASK`.
    Manual,
    /// `EXECUTE TASK ... BACKFILL`.
    Backfill,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Catchup => "catchup",
            Trigger::Dependency => "dependency",
            Trigger::Manual => "manual",
            Trigger::Backfill => "backfill",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Skipped => "skipped",
        }
    }
}

/// Written before a run's first statement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub run_id: String,
    pub task: String,
    /// RFC 3339, UTC.
    pub scheduled_time: String,
    pub trigger: Trigger,
    pub attempt: u32,
    /// The parameters it runs with, evaluated from the scheduled time.
    pub params: Vec<(String, String)>,
    /// `host:pid:process` of the server running it.
    pub node: String,
    /// Who started it (the task owner for scheduled runs).
    pub user: String,
    pub catalog_version: u64,
    pub started_at: String,
    pub statements_total: usize,
}

/// Written when a run ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Done {
    pub run_id: String,
    pub state: Option<RunState>,
    pub completed_at: String,
    pub statements_done: usize,
    pub rows: u64,
    pub peak_memory_bytes: u64,
    pub spilled_bytes: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// 1-based position and text of the statement that failed.
    pub failed_statement_index: Option<usize>,
    pub failed_statement: Option<String>,
    pub skip_reason: Option<String>,
    /// When the next attempt is due (a failure with retries left).
    pub next_retry_at: Option<String>,
}

/// Where one attempt lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub task: String,
    pub slot: DateTime<Utc>,
    /// `s` or `m<uuid>`.
    pub series: String,
    pub attempt: u32,
}

/// The series the schedule owns.
pub const SCHEDULE_SERIES: &str = "s";

impl AttemptKey {
    fn dir(&self) -> String {
        format!("{RUNS_DIR}/{}/{}/{}-a{:03}", self.task, slot_name(self.slot), self.series, self.attempt)
    }

    /// Whether it belongs to the schedule's series (retried, followed by dependants).
    pub fn scheduled(&self) -> bool {
        self.series == SCHEDULE_SERIES
    }
}

/// One attempt as the journal shows it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub key: AttemptKey,
    pub claim: Arc<Claim>,
    pub done: Option<Arc<Done>>,
    /// Latest sign of life: the claim's or heartbeat's modification time.
    pub last_seen: DateTime<Utc>,
}

/// A slot as a folder name.
pub fn slot_name(slot: DateTime<Utc>) -> String {
    slot.format("%Y%m%dT%H%M%SZ").to_string()
}

fn parse_slot(name: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(name, "%Y%m%dT%H%M%SZ").ok().map(|n| n.and_utc())
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parse what [`timestamp`] wrote.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// The journal of a warehouse.
#[derive(Debug)]
pub struct Journal {
    warehouse: Warehouse,
    claims: Mutex<HashMap<Path, Arc<Claim>>>,
    dones: Mutex<HashMap<Path, Arc<Done>>>,
}

impl Journal {
    pub fn new(warehouse: Warehouse) -> Self {
        Self { warehouse, claims: Mutex::default(), dones: Mutex::default() }
    }

    fn path(&self, key: &AttemptKey, file: &str) -> Path {
        self.warehouse.path(&format!("{}/{file}", key.dir()))
    }

    async fn create(&self, path: &Path, body: Vec<u8>) -> Result<bool> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.warehouse.store().put_opts(path, PutPayload::from(body), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Claim an attempt; `false` when someone already has.
    pub async fn claim(&self, key: &AttemptKey, claim: &Claim) -> Result<bool> {
        let body = serde_json::to_vec_pretty(claim).map_err(|e| Error::internal(format!("encode claim: {e}")))?;
        self.create(&self.path(key, "claim.json"), body).await
    }

    /// Record how an attempt ended; `false` when it was already recorded (e.g. declared dead).
    pub async fn finish(&self, key: &AttemptKey, done: &Done) -> Result<bool> {
        let body = serde_json::to_vec_pretty(done).map_err(|e| Error::internal(format!("encode run: {e}")))?;
        self.create(&self.path(key, "done.json"), body).await
    }

    /// Say a run is alive.
    pub async fn heartbeat(&self, key: &AttemptKey) -> Result<()> {
        let now = timestamp(Utc::now());
        self.warehouse.store().put(&self.path(key, "heartbeat"), PutPayload::from(now.into_bytes())).await?;
        Ok(())
    }

    /// Every attempt of `task` (all tasks when `None`), grouped by attempt, in key order.
    pub async fn list(&self, task: Option<&str>) -> Result<Vec<RunEntry>> {
        let prefix = match task {
            Some(t) => self.warehouse.path(&format!("{RUNS_DIR}/{t}")),
            None => self.warehouse.path(RUNS_DIR),
        };
        let metas: Vec<_> = self.warehouse.store().list(Some(&prefix)).try_collect().await?;
        let root = self.warehouse.path(RUNS_DIR);
        struct Parts {
            claim: Option<Path>,
            done: Option<Path>,
            seen: DateTime<Utc>,
        }
        let mut attempts: BTreeMap<AttemptKey, Parts> = BTreeMap::new();
        for meta in metas {
            let Some(rest) = meta.location.prefix_match(&root) else { continue };
            let parts: Vec<String> = rest.map(|p| p.as_ref().to_string()).collect();
            let [task, slot, attempt_dir, file] = parts.as_slice() else { continue };
            // A prefix listing of `music.a` also returns `music.ab`.
            if task_filter_mismatch(task, self_task(&prefix, &root)) {
                continue;
            }
            let (Some(slot), Some((series, attempt))) = (parse_slot(slot), attempt_dir.rsplit_once("-a")) else {
                continue;
            };
            let Ok(attempt) = attempt.parse::<u32>() else { continue };
            let key = AttemptKey { task: task.clone(), slot, series: series.to_string(), attempt };
            let entry = attempts.entry(key).or_insert(Parts { claim: None, done: None, seen: meta.last_modified });
            entry.seen = entry.seen.max(meta.last_modified);
            match file.as_str() {
                "claim.json" => entry.claim = Some(meta.location.clone()),
                "done.json" => entry.done = Some(meta.location.clone()),
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(attempts.len());
        for (key, parts) in attempts {
            // A claim being written right now is not listed yet or not readable: skip it.
            let Some(claim_path) = parts.claim else { continue };
            let Some(claim) = self.read_cached::<Claim>(&claim_path, &self.claims).await? else { continue };
            let done = match parts.done {
                Some(p) => self.read_cached::<Done>(&p, &self.dones).await?,
                None => None,
            };
            out.push(RunEntry { key, claim, done, last_seen: parts.seen });
        }
        Ok(out)
    }

    async fn read_cached<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
        cache: &Mutex<HashMap<Path, Arc<T>>>,
    ) -> Result<Option<Arc<T>>> {
        if let Some(hit) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
            return Ok(Some(hit));
        }
        let bytes = match self.warehouse.store().get(path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value: Arc<T> = Arc::new(
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt { path: format!("run journal file {path}"), detail: e.to_string() })?,
        );
        if let Ok(mut c) = cache.lock() {
            c.insert(path.clone(), value.clone());
        }
        Ok(Some(value))
    }

    /// Delete the attempts that ended before `cutoff` (by when they ended, not by their slot: a
    /// backfill of last year is kept as long as any other run); returns how many.
    pub async fn prune(&self, entries: &[RunEntry], cutoff: DateTime<Utc>) -> Result<usize> {
        let mut removed = 0;
        let ended_before =
            |e: &RunEntry| e.done.as_deref().and_then(|d| parse_timestamp(&d.completed_at)).is_some_and(|t| t < cutoff);
        for entry in entries.iter().filter(|e| ended_before(e)) {
            for file in ["done.json", "heartbeat", "claim.json"] {
                let path = self.path(&entry.key, file);
                match self.warehouse.store().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                if let Ok(mut c) = self.claims.lock() {
                    c.remove(&path);
                }
                if let Ok(mut c) = self.dones.lock() {
                    c.remove(&path);
                }
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// The task a listing was narrowed to, if any.
fn self_task(prefix: &Path, root: &Path) -> Option<String> {
    prefix.prefix_match(root).and_then(|mut parts| parts.next()).map(|p| p.as_ref().to_string())
}

fn task_filter_mismatch(task: &str, wanted: Option<String>) -> bool {
    wanted.is_some_and(|w| w != task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::S3Config;

    fn claim(run_id: &str) -> Claim {
        Claim {
            run_id: run_id.into(),
            task: "music.a".into(),
            scheduled_time: "2026-10-05T01:00:00.000Z".into(),
            trigger: Trigger::Schedule,
            attempt: 1,
            params: vec![("run_date".into(), "2026-10-04".into())],
            node: "test".into(),
            user: "admin".into(),
            catalog_version: 3,
            started_at: timestamp(Utc::now()),
            statements_total: 2,
        }
    }

    #[tokio::test]
    async fn an_attempt_is_claimed_once_and_finished_once() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path().to_str().unwrap(), S3Config::default()).unwrap();
        let j = Journal::new(w);
        let slot = parse_timestamp("2026-10-05T01:00:00Z").unwrap();
        let key = AttemptKey { task: "music.a".into(), slot, series: SCHEDULE_SERIES.into(), attempt: 1 };
        assert!(j.claim(&key, &claim("r1")).await.unwrap());
        assert!(!j.claim(&key, &claim("r2")).await.unwrap(), "a second claim of one attempt must lose");
        // Another task whose name starts the same is not listed with it.
        let other = AttemptKey { task: "music.ab".into(), ..key.clone() };
        assert!(j.claim(&other, &claim("r3")).await.unwrap());
        let listed = j.list(Some("music.a")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].claim.run_id, "r1");
        assert!(listed[0].done.is_none());
        let done = Done {
            run_id: "r1".into(),
            state: Some(RunState::Succeeded),
            completed_at: "2026-10-05T01:00:10.000Z".into(),
            ..Default::default()
        };
        assert!(j.finish(&key, &done).await.unwrap());
        assert!(!j.finish(&key, &Done { state: Some(RunState::Failed), ..done.clone() }).await.unwrap());
        let listed = j.list(None).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].done.as_ref().unwrap().state, Some(RunState::Succeeded));
        assert_eq!(j.prune(&listed, parse_timestamp("2026-11-01T00:00:00Z").unwrap()).await.unwrap(), 1);
        assert_eq!(j.list(None).await.unwrap().len(), 1);
    }
}
