//! The scheduler `serve` runs: once a second (and whenever task DDL or a run's end wakes it) it
//! reads the catalog's tasks and the journal, and for every started task decides the one next
//! thing to do:
//!
//! 1. **recover** attempts whose server died (no verdict, no heartbeat within the lease, or its
//!    process on this host is gone): verdict *failed, server stopped during run*, retried per
//!    the task's policy;
//! 2. a **retry** that is due (`RETRIES`, `RETRY_DELAY` doubling per attempt);
//! 3. the next **slot**: for a scheduled task the slots after the last one the journal knows
//!    (and after the last `RESUME`: slots missed while suspended never run); slots that passed
//!    before this scheduler started were missed while no server ran and follow `CATCHUP`
//!    (`LATEST` runs the newest, `ALL` up to `MAX_CATCHUP_RUNS`, `NONE` none). For an `AFTER`
//!    task, the slots its upstreams finished: it runs when all succeeded, and is recorded as
//!    skipped (with the reason) when one failed or was skipped.
//!
//! While a run of the task is alive anywhere, a new slot is recorded as skipped
//! (`OVERLAP = SKIP`) or waits (`QUEUE`). Every start is a create-only claim in the journal, so
//! several schedulers on one warehouse run each attempt once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::journal::{
    AttemptKey, Claim, Done, RunEntry, RunState, SCHEDULE_SERIES, Trigger, parse_timestamp, timestamp,
};
use super::run::RunRequest;
use super::{SlotStatus, latest_attempts, status};
use crate::catalog::TaskEntry;
use crate::error::Result;
use crate::session::Engine;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Run history kept in the journal.
    pub retention: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(30 * 86_400) }
    }
}

/// One thing to start.
struct Work {
    slot: DateTime<Utc>,
    trigger: Trigger,
    series: String,
    attempt: u32,
    /// A new slot (attempt 1) rather than a retry: overlap applies.
    new_slot: bool,
    /// Not to run but to record as skipped, with why (an upstream did not succeed).
    skip: Option<String>,
}

/// Run the scheduler until `stop`; runs in flight are then cancelled and recorded as failed
/// ("server shut down during run"), retried per policy by the next server.
pub async fn run(engine: Engine, config: SchedulerConfig, stop: CancellationToken) {
    let tasks = engine.tasks().clone();
    tasks.scheduler_starting();
    let started = Utc::now();
    let runs = CancellationToken::new();
    let mut handles = Vec::new();
    let mut last_prune: Option<DateTime<Utc>> = None;
    info!(node = %tasks.node(), "scheduler started");
    loop {
        match tick(&engine, started, &runs).await {
            Ok(spawned) => handles.extend(spawned),
            Err(e) => warn!(error = %e, "scheduler pass failed; trying again"),
        }
        tasks.recovered.store(true, Ordering::Relaxed);
        handles.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
        let now = Utc::now();
        // Hourly, or as often as the retention is long when it is shorter.
        let every = chrono::TimeDelta::from_std(config.retention)
            .unwrap_or(chrono::TimeDelta::hours(1))
            .min(chrono::TimeDelta::hours(1));
        if last_prune.is_none_or(|t| now - t > every) {
            last_prune = Some(now);
            prune(&engine, &config, now).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tasks.wake.notified() => {}
            _ = stop.cancelled() => break,
        }
    }
    runs.cancel();
    let waiting = futures::future::join_all(handles);
    if tokio::time::timeout(Duration::from_secs(20), waiting).await.is_err() {
        warn!("runs did not record their end within 20 s of shutdown");
    }
    info!("scheduler stopped");
}

/// Roll attempts that ended before the retention into `system.run_history`, then delete them
/// from the journal. Appended first, deleted after: a crash in between repeats those rows in
/// the history at the next pass, it never loses them.
async fn prune(engine: &Engine, config: &SchedulerConfig, now: DateTime<Utc>) {
    let Ok(retention) = chrono::TimeDelta::from_std(config.retention) else { return };
    let cutoff = now - retention;
    let tasks = engine.tasks();
    let result: Result<usize> = async {
        let entries = tasks.journal().list(None).await?;
        let expired: Vec<RunEntry> = entries
            .into_iter()
            .filter(|e| e.done.as_deref().and_then(|d| parse_timestamp(&d.completed_at)).is_some_and(|t| t < cutoff))
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let batch = crate::system::tasks::runs_batch(tasks, &expired)?;
        crate::system::tasks::append_history(engine.warehouse(), batch).await?;
        tasks.journal().prune(&expired, cutoff).await
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(n) => info!(attempts = n, "rolled run history older than the retention into system.run_history"),
        Err(e) => warn!(error = %e, "cannot roll up run history"),
    }
}

/// One pass; returns the runs it started.
async fn tick(
    engine: &Engine,
    started: DateTime<Utc>,
    runs: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let tasks = engine.tasks().clone();
    let catalog = engine.refresh().await?;
    let now = Utc::now();
    let entries = tasks.journal().list(None).await?;
    let mut by_task: HashMap<&str, Vec<&RunEntry>> = HashMap::new();
    for e in &entries {
        by_task.entry(e.key.task.as_str()).or_default().push(e);
    }

    // 1. Recover attempts whose server is gone.
    let mut recovered = false;
    for e in entries.iter().filter(|e| e.done.is_none() && !tasks.alive(e, now)) {
        let task = catalog.tasks.get(&e.key.task);
        let mut done = Done {
            run_id: e.claim.run_id.clone(),
            state: Some(RunState::Failed),
            completed_at: timestamp(now),
            error_code: Some("CANCELLED".into()),
            error_message: Some(format!("server stopped during run (node {})", e.claim.node)),
            ..Default::default()
        };
        if let Some(t) = task
            && e.key.scheduled()
        {
            done.next_retry_at = super::next_retry(t, e.key.attempt, now).map(timestamp);
        }
        if tasks.journal().finish(&e.key, &done).await? {
            warn!(task = %e.key.task, run_id = %e.claim.run_id, node = %e.claim.node, "run marked failed: server stopped during run");
            recovered = true;
        }
    }
    if recovered {
        tasks.wake.notify_one();
        return Ok(Vec::new());
    }

    // 2-3. The next thing for every started task.
    let mut spawned = Vec::new();
    for (name, task) in catalog.tasks.iter().filter(|(_, t)| t.state == "started") {
        let own: Vec<&RunEntry> = by_task.get(name.as_str()).cloned().unwrap_or_default();
        let work = match retry_due(&own, now) {
            Some(w) => Some(w),
            None => match next_slot(name, task, &own, &by_task, started, now) {
                Ok(w) => w,
                Err(e) => {
                    debug!(task = %name, error = %e, "task cannot be scheduled");
                    None
                }
            },
        };
        let Some(work) = work else { continue };
        if let Some(reason) = &work.skip {
            record_skip(engine, name, task, &work, reason).await?;
            continue;
        }
        let live = tasks.task_running_here(name) || own.iter().any(|e| e.done.is_none() && tasks.alive(e, now));
        if live {
            if work.new_slot && task.overlap == "skip" {
                let reason = "overlap: the previous run of this task was still running (OVERLAP = SKIP)".to_string();
                record_skip(engine, name, task, &work, &reason).await?;
            }
            continue;
        }
        let mut req = RunRequest::new(name, task, work.slot, work.trigger);
        req.series = work.series.clone();
        req.attempt = work.attempt;
        tasks.register(&req.run_id, name);
        let engine = engine.clone();
        let stop = runs.child_token();
        spawned.push(tokio::spawn(async move {
            let (task, run_id) = (req.task.clone(), req.run_id.clone());
            match engine.run_task(req, stop).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    engine.tasks().unregister(&run_id);
                    debug!(task = %task, "another server claimed this run");
                }
                Err(e) => {
                    engine.tasks().unregister(&run_id);
                    warn!(task = %task, error = %e, "cannot start the run");
                }
            }
        }));
    }
    Ok(spawned)
}

async fn record_skip(engine: &Engine, name: &str, task: &TaskEntry, work: &Work, reason: &str) -> Result<()> {
    let tasks = engine.tasks();
    let key = AttemptKey { task: name.to_string(), slot: work.slot, series: SCHEDULE_SERIES.into(), attempt: 1 };
    let now = Utc::now();
    let run_id = uuid::Uuid::now_v7().to_string();
    let claim = Claim {
        run_id: run_id.clone(),
        task: name.to_string(),
        scheduled_time: timestamp(work.slot),
        trigger: work.trigger,
        attempt: 1,
        params: Vec::new(),
        node: tasks.node().to_string(),
        user: task.owner.clone(),
        catalog_version: engine.catalog().snapshot().version,
        started_at: timestamp(now),
        statements_total: 0,
    };
    if tasks.journal().claim(&key, &claim).await? {
        let done = Done {
            run_id: run_id.clone(),
            state: Some(RunState::Skipped),
            completed_at: timestamp(now),
            skip_reason: Some(reason.to_string()),
            ..Default::default()
        };
        tasks.journal().finish(&key, &done).await?;
        info!(task = %name, run_id = %run_id, scheduled_time = %timestamp(work.slot), reason, "task run skipped");
        tasks.emit(&super::RunEvent {
            task: name.to_string(),
            trigger: work.trigger,
            state: RunState::Skipped,
            scheduled_time: work.slot,
            duration: Duration::ZERO,
            lag: None,
            consecutive_failures: super::summarise(&tasks.journal().list(Some(name)).await?.iter().collect::<Vec<_>>())
                .consecutive_failures,
        });
    }
    Ok(())
}

/// A failed attempt whose retry time has come.
fn retry_due(own: &[&RunEntry], now: DateTime<Utc>) -> Option<Work> {
    latest_attempts(own).into_iter().find_map(|e| {
        let done = e.done.as_deref()?;
        let at = parse_timestamp(done.next_retry_at.as_deref()?)?;
        (at <= now).then(|| Work {
            slot: e.key.slot,
            trigger: e.claim.trigger,
            series: e.key.series.clone(),
            attempt: e.key.attempt + 1,
            new_slot: false,
            skip: None,
        })
    })
}

/// The next slot of a scheduled or dependent task, if one is due.
fn next_slot(
    name: &str,
    task: &TaskEntry,
    own: &[&RunEntry],
    by_task: &HashMap<&str, Vec<&RunEntry>>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<Work>> {
    let last = own.iter().filter(|e| e.key.scheduled()).map(|e| e.key.slot).max();
    let resumed = task.resumed_at.as_deref().and_then(parse_timestamp).unwrap_or(now);
    // Slots at or before the last RESUME were missed while suspended.
    let floor = last.map_or(resumed, |l| l.max(resumed));
    let new =
        |slot, trigger| Work { slot, trigger, series: SCHEDULE_SERIES.into(), attempt: 1, new_slot: true, skip: None };

    if !task.after.is_empty() {
        return Ok(next_dependency_slot(name, task, by_task, floor));
    }
    let schedule: super::Schedule = task.schedule.as_deref().unwrap_or_default().parse()?;
    let due = schedule.slots(floor, now, 100_000);
    let (missed, live): (Vec<_>, Vec<_>) = due.into_iter().partition(|s| *s < started);
    let catch_up: Option<DateTime<Utc>> = match task.catchup.as_str() {
        "all" => {
            let keep = task.max_catchup_runs.max(1) as usize;
            missed.len().checked_sub(keep).map_or(missed.first(), |skip| missed.get(skip)).copied()
        }
        "latest" if live.is_empty() => missed.last().copied(),
        _ => None,
    };
    if let Some(slot) = catch_up {
        if missed.len() > 1 {
            info!(task = %name, missed = missed.len(), catchup = %task.catchup, "catching up slots missed while no server ran");
        }
        return Ok(Some(new(slot, Trigger::Catchup)));
    }
    if !missed.is_empty() && !live.is_empty() {
        debug!(task = %name, missed = missed.len(), "missed slots not caught up (CATCHUP)");
    }
    Ok(live.first().map(|s| new(*s, Trigger::Schedule)))
}

/// The oldest slot after `floor` that every upstream has finished.
fn next_dependency_slot(
    name: &str,
    task: &TaskEntry,
    by_task: &HashMap<&str, Vec<&RunEntry>>,
    floor: DateTime<Utc>,
) -> Option<Work> {
    let upstream: Vec<(String, Vec<&RunEntry>)> = task
        .after
        .iter()
        .map(|u| {
            let runs = by_task.get(u.as_str()).cloned().unwrap_or_default();
            (u.clone(), latest_attempts(&runs).into_iter().filter(|e| e.key.scheduled()).collect())
        })
        .collect();
    let mut slots: Vec<DateTime<Utc>> =
        upstream.iter().flat_map(|(_, runs)| runs.iter().map(|e| e.key.slot)).filter(|s| *s > floor).collect();
    slots.sort();
    slots.dedup();
    // The oldest slot decides: later ones wait for it, so a dependant runs in slot order.
    let slot = *slots.first()?;
    let mut all_succeeded = true;
    for (up, runs) in &upstream {
        match runs.iter().find(|e| e.key.slot == slot).map(|e| (status(e), e)) {
            Some((SlotStatus::Succeeded, _)) => {}
            Some((SlotStatus::Pending, _)) => return None,
            Some((SlotStatus::FailedFinal | SlotStatus::Skipped, e)) => {
                let how = e.done.as_deref().and_then(|d| d.state).map_or("failed", |s| s.as_str());
                return Some(skip(slot, format!("upstream {up} {how} for this scheduled time")));
            }
            None => {
                // The upstream moved past this slot without running it: it never will.
                if runs.iter().any(|e| e.key.slot > slot) {
                    return Some(skip(slot, format!("upstream {up} did not run this scheduled time")));
                }
                all_succeeded = false;
            }
        }
    }
    if !all_succeeded {
        return None;
    }
    debug!(task = %name, slot = %slot, "upstreams succeeded");
    Some(Work {
        slot,
        trigger: Trigger::Dependency,
        series: SCHEDULE_SERIES.into(),
        attempt: 1,
        new_slot: true,
        skip: None,
    })
}

fn skip(slot: DateTime<Utc>, reason: String) -> Work {
    Work {
        slot,
        trigger: Trigger::Dependency,
        series: SCHEDULE_SERIES.into(),
        attempt: 1,
        new_slot: true,
        skip: Some(reason),
    }
}
