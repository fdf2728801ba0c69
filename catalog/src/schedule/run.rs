//! One run of a task: evaluate its parameters from the scheduled time, claim the attempt in the
//! journal, run the script in one session (as the task's owner) under the timeout while a
//! heartbeat says it is alive, and record the verdict. Every trigger (schedule, catch-up,
//! dependency, retry, `EXECUTE TASK`, backfill) comes through [`Engine::run_task`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::prelude::cast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::journal::{AttemptKey, Claim, Done, RunState, SCHEDULE_SERIES, Trigger, timestamp};
use super::{HEARTBEAT, RunEvent, next_retry, summarise};
use crate::catalog::TaskEntry;
use crate::error::{Error, Result};
use crate::session::Engine;
use crate::session::query::Origin;
use crate::sql::runner::abbreviate;
use crate::sql::{StatementOutput, substitute_params};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub task: String,
    pub entry: TaskEntry,
    pub slot: DateTime<Utc>,
    pub trigger: Trigger,
    /// [`SCHEDULE_SERIES`] or a manual series `m<uuid>`.
    pub series: String,
    pub attempt: u32,
    /// Parameter values given with `EXECUTE TASK ... WITH (...)`, instead of evaluated ones.
    pub overrides: Vec<(String, String)>,
    /// Who asked (the owner for scheduled runs).
    pub user: String,
    pub run_id: String,
}

impl RunRequest {
    /// A request with a fresh run id.
    pub fn new(task: &str, entry: &TaskEntry, slot: DateTime<Utc>, trigger: Trigger) -> Self {
        let series = match trigger {
            Trigger::Manual | Trigger::Backfill => format!("m{}", uuid::Uuid::now_v7().simple()),
            _ => SCHEDULE_SERIES.to_string(),
        };
        Self {
            task: task.to_string(),
            entry: entry.clone(),
            slot,
            trigger,
            series,
            attempt: 1,
            overrides: Vec::new(),
            user: entry.owner.clone(),
            run_id: uuid::Uuid::now_v7().to_string(),
        }
    }

    fn key(&self) -> AttemptKey {
        AttemptKey { task: self.task.clone(), slot: self.slot, series: self.series.clone(), attempt: self.attempt }
    }
}

/// A finished attempt.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub claim: Claim,
    pub done: Done,
}

impl RunOutcome {
    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.done.state == Some(RunState::Succeeded)
    }

    /// The error as one line: what failed, where.
    pub fn error_line(&self) -> String {
        let mut line = self.done.error_message.clone().unwrap_or_else(|| "unknown error".into());
        if let (Some(i), Some(sql)) = (self.done.failed_statement_index, &self.done.failed_statement) {
            line = format!("statement {i} failed: {line} (in: {sql})");
        }
        line
    }
}

/// Parameters every task has besides its own.
pub const BUILTIN_PARAMS: [&str; 3] = ["scheduled_time", "task", "run_id"];

impl Engine {
    /// Evaluate `params` (`name = SQL expression over scheduled_time`) for `slot`, as text.
    pub async fn evaluate_params(
        &self,
        params: &[(String, String)],
        slot: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>> {
        if params.is_empty() {
            return Ok(Vec::new());
        }
        let session = self.session();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "scheduled_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )]));
        let column = TimestampMicrosecondArray::from(vec![slot.timestamp_micros()]).with_timezone("UTC");
        let batch = RecordBatch::try_new(schema, vec![Arc::new(column)])?;
        let df = session.ctx().read_batch(batch)?;
        let mut exprs = Vec::new();
        for (name, text) in params {
            let expr = session
                .ctx()
                .parse_sql_expr(text, df.schema())
                .map_err(|e| Error::invalid(format!("PARAMS {name} = {text}: {}", Error::from(e).user_message())))?;
            exprs.push(cast(expr, DataType::Utf8).alias(name));
        }
        let batches = df
            .select(exprs)
            .map_err(|e| Error::invalid(format!("PARAMS: {}", Error::from(e).user_message())))?
            .collect()
            .await
            .map_err(|e| Error::invalid(format!("PARAMS: {}", Error::from(e).user_message())))?;
        let batch = batches.first().ok_or_else(|| Error::internal("PARAMS gave no row"))?;
        let mut out = Vec::new();
        for (i, (name, text)) in params.iter().enumerate() {
            let values = batch.column(i).as_any().downcast_ref::<StringArray>();
            match values {
                Some(v) if v.len() == 1 && !v.is_null(0) => out.push((name.clone(), v.value(0).to_string())),
                _ => return Err(Error::invalid(format!("PARAMS {name} = {text} is NULL for {}", timestamp(slot)))),
            }
        }
        Ok(out)
    }

    /// The parameters and script of a run of `entry` for `slot`.
    pub async fn prepare_script(
        &self,
        task: &str,
        entry: &TaskEntry,
        slot: DateTime<Utc>,
        run_id: &str,
        overrides: &[(String, String)],
    ) -> Result<(Vec<(String, String)>, String)> {
        for (name, _) in overrides {
            if !entry.params.iter().any(|(p, _)| p == name) {
                let declared: Vec<&str> = entry.params.iter().map(|(p, _)| p.as_str()).collect();
                return Err(Error::invalid(format!(
                    "task {task} has no parameter '{name}' (it has: {})",
                    if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                )));
            }
        }
        let missing: Vec<(String, String)> =
            entry.params.iter().filter(|(p, _)| !overrides.iter().any(|(o, _)| o == p)).cloned().collect();
        let evaluated = self.evaluate_params(&missing, slot).await?;
        let mut params: Vec<(String, String)> = entry
            .params
            .iter()
            .filter_map(|(p, _)| {
                overrides.iter().chain(evaluated.iter()).find(|(n, _)| n == p).map(|(n, v)| (n.clone(), v.clone()))
            })
            .collect();
        params.push(("scheduled_time".into(), slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        params.push(("task".into(), task.to_string()));
        params.push(("run_id".into(), run_id.to_string()));
        for (start, _) in entry.body.match_indices("${") {
            let name: String = entry.body[start + 2..].chars().take_while(|c| *c != '}').collect();
            if !params.iter().any(|(p, _)| *p == name) {
                return Err(Error::invalid(format!(
                    "task {task}: the script uses ${{{name}}}: declare it with PARAMS ({name} = <expression over \
                     scheduled_time>), or use one of the built-in {}",
                    BUILTIN_PARAMS.join(", ")
                )));
            }
        }
        let script = substitute_params(&entry.body, &params)
            .map_err(|e| Error::invalid(format!("task {task}: {}", e.user_message())))?;
        params.retain(|(n, _)| !BUILTIN_PARAMS.contains(&n.as_str()) || n == "scheduled_time");
        Ok((params, script))
    }

    /// Run one attempt. `Ok(None)` when another server (or an earlier call) claimed it first.
    /// `stop` cancels it (server shutting down). The verdict is in the journal either way.
    pub async fn run_task(&self, req: RunRequest, stop: CancellationToken) -> Result<Option<RunOutcome>> {
        let tasks = self.tasks().clone();
        tasks.register(&req.run_id, &req.task);
        let _unregister = Unregister { tasks: tasks.clone(), run_id: req.run_id.clone() };
        let key = req.key();
        let started = Instant::now();
        let started_at = Utc::now();
        let prepared = self.prepare_script(&req.task, &req.entry, req.slot, &req.run_id, &req.overrides).await;
        let (params, total) = match &prepared {
            Ok((params, script)) => (params.clone(), self.parse(script).map(|s| s.len()).unwrap_or(0)),
            Err(_) => (Vec::new(), 0),
        };
        let claim = Claim {
            run_id: req.run_id.clone(),
            task: req.task.clone(),
            scheduled_time: timestamp(req.slot),
            trigger: req.trigger,
            attempt: req.attempt,
            params,
            node: tasks.node().to_string(),
            user: req.user.clone(),
            catalog_version: self.catalog().snapshot().version,
            started_at: timestamp(started_at),
            statements_total: total,
        };
        if !tasks.journal().claim(&key, &claim).await? {
            return Ok(None);
        }
        let mut done = Done { run_id: req.run_id.clone(), ..Default::default() };
        match prepared {
            Err(e) => {
                done.state = Some(RunState::Failed);
                done.error_code = Some(e.kind().code_name().into());
                done.error_message = Some(e.user_message());
            }
            Ok((_, script)) => self.execute_body(&req, &key, &script, &stop, &mut done).await,
        }
        let failed = matches!(done.state, Some(RunState::Failed | RunState::TimedOut));
        let completed = Utc::now();
        done.completed_at = timestamp(completed);
        if failed && key.scheduled() {
            done.next_retry_at = next_retry(&req.entry, req.attempt, completed).map(timestamp);
        }
        if !tasks.journal().finish(&key, &done).await? {
            warn!(task = %req.task, run_id = %req.run_id, "the run was declared dead while it ran; its verdict stays");
        }
        let outcome = RunOutcome { claim, done };
        self.after_run(&req, &outcome, started.elapsed()).await;
        Ok(Some(outcome))
    }

    /// The script under the timeout, with a heartbeat; fills the verdict into `done`.
    async fn execute_body(
        &self,
        req: &RunRequest,
        key: &AttemptKey,
        script: &str,
        stop: &CancellationToken,
        done: &mut Done,
    ) {
        let tasks = self.tasks().clone();
        let session = self.session().with_origin(Origin {
            user: req.entry.owner.clone(),
            protocol: "task",
            run: Some((req.task.clone(), req.run_id.clone())),
        });
        let stats = std::sync::Mutex::new(Done::default());
        // Boxed: a script may itself say EXECUTE TASK, which comes back here.
        let work = Box::pin(self.run_script(&session, script, false, |report| {
            if let Ok(mut s) = stats.lock() {
                s.statements_done = report.index;
                if let StatementOutput::Changed(n) = report.output {
                    s.rows += n;
                }
                s.peak_memory_bytes = s.peak_memory_bytes.max(report.stats.peak_memory as u64);
                s.spilled_bytes += report.stats.spilled_bytes as u64;
                let (index, rows) = (s.statements_done, s.rows);
                tasks.progress(&req.run_id, |p| {
                    p.statements_done = index;
                    p.rows = rows;
                });
            }
            Ok(())
        }));
        let heartbeat = async {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = tasks.journal().heartbeat(key).await {
                    warn!(task = %req.task, run_id = %req.run_id, error = %e, "cannot write the run's heartbeat");
                }
            }
        };
        let timeout = async {
            match req.entry.timeout_secs {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = work => Some(r),
            _ = timeout => {
                done.state = Some(RunState::TimedOut);
                done.error_code = Some("CANCELLED".into());
                done.error_message = Some(format!(
                    "timed out after {} (TIMEOUT); the running statement was cancelled",
                    humantime::format_duration(Duration::from_secs(req.entry.timeout_secs.unwrap_or(0)))
                ));
                None
            }
            _ = stop.cancelled() => {
                done.state = Some(RunState::Failed);
                done.error_code = Some("CANCELLED".into());
                done.error_message = Some("server shut down during run".into());
                None
            }
            _ = heartbeat => None,
        };
        if let Ok(s) = stats.lock() {
            done.statements_done = s.statements_done;
            done.rows = s.rows;
            done.peak_memory_bytes = s.peak_memory_bytes;
            done.spilled_bytes = s.spilled_bytes;
        }
        match result {
            Some(Ok(())) => done.state = Some(RunState::Succeeded),
            Some(Err(e)) => {
                done.state = Some(RunState::Failed);
                done.error_code = Some(e.source.kind().code_name().into());
                done.error_message = Some(e.source.user_message());
                if e.index > 0 {
                    done.failed_statement_index = Some(e.index);
                    done.failed_statement = Some(abbreviate(&e.sql));
                }
            }
            None => {
                // Cancelled (timeout, shutdown) in the statement after the last one done.
                let at = done.statements_done + 1;
                done.failed_statement_index = Some(at);
                done.failed_statement =
                    self.parse(script).ok().and_then(|s| s.into_iter().nth(at - 1)).map(|(text, _)| abbreviate(&text));
            }
        }
    }

    /// The run's log line, the metrics event, and auto-suspend.
    async fn after_run(&self, req: &RunRequest, outcome: &RunOutcome, elapsed: Duration) {
        let done = &outcome.done;
        let state = done.state.unwrap_or(RunState::Failed);
        let entries = self.tasks().journal().list(Some(&req.task)).await.unwrap_or_default();
        let summary = summarise(&entries.iter().collect::<Vec<_>>());
        info!(
            task = %req.task,
            run_id = %req.run_id,
            attempt = req.attempt,
            trigger = req.trigger.as_str(),
            scheduled_time = %timestamp(req.slot),
            params = %outcome.claim.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            state = state.as_str(),
            duration_ms = elapsed.as_millis() as u64,
            statements = format!("{}/{}", done.statements_done, outcome.claim.statements_total),
            rows = done.rows,
            peak_memory = done.peak_memory_bytes,
            spilled_bytes = done.spilled_bytes,
            error = done.error_message.as_deref().unwrap_or(""),
            next_retry_at = done.next_retry_at.as_deref().unwrap_or(""),
            "task run finished"
        );
        let lag = matches!(req.trigger, Trigger::Schedule | Trigger::Dependency)
            .then(|| super::journal::parse_timestamp(&outcome.claim.started_at))
            .flatten()
            .and_then(|s| s.signed_duration_since(req.slot).to_std().ok());
        self.tasks().emit(&RunEvent {
            task: req.task.clone(),
            trigger: req.trigger,
            state,
            scheduled_time: req.slot,
            duration: elapsed,
            lag,
            consecutive_failures: summary.consecutive_failures,
        });
        if let Some(limit) = req.entry.suspend_after_failures
            && done.next_retry_at.is_none()
            && summary.consecutive_failures >= limit.max(1)
        {
            let reason = format!(
                "suspended after {} consecutive failed runs; the last: {}",
                summary.consecutive_failures,
                outcome.error_line()
            );
            if let Err(e) = self.suspend_task(&req.task, Some(reason.clone())).await {
                warn!(task = %req.task, error = %e, "cannot suspend the failing task");
            } else {
                warn!(task = %req.task, reason = %reason, "task suspended");
            }
        }
        self.tasks().wake.notify_one();
    }
}

struct Unregister {
    tasks: Arc<super::Tasks>,
    run_id: String,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.tasks.unregister(&self.run_id);
    }
}
