//! The task statements against the catalog: a definition is one catalog commit (like a view),
//! checked first: the schedule parses, upstreams exist and form no cycle, every `PARAMS`
//! expression evaluates, and the script parses with every `${name}` it uses declared.
//! `EXECUTE TASK` runs now, in the caller's request, and answers one row per run.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Duration as TimeDelta, NaiveDate, TimeZone, Utc};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::journal::{Trigger, timestamp};
use super::parse::{AlterAction, TaskName, TaskOptions, TaskStatement};
use super::run::{BUILTIN_PARAMS, RunOutcome, RunRequest};
use super::{Schedule, effective_schedule};
use crate::catalog::{CatalogState, TaskEntry};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};
use crate::system::SYSTEM_SCHEMA;

/// Most runs one `EXECUTE TASK ... BACKFILL` makes.
pub const MAX_BACKFILL_RUNS: usize = 1000;

/// What `SHOW TASKS` runs.
pub const SHOW_TASKS_SQL: &str = "SELECT name, state, schedule, \"after\", next_scheduled_time, last_run_state, \
     last_success_time, consecutive_failures, owner, comment FROM system.tasks ORDER BY name";

impl Engine {
    /// Carry out a task statement (not `SHOW TASKS`, which plans as a query). `EXECUTE TASK`
    /// answers its runs; the others nothing.
    pub async fn run_task_statement(&self, session: &Session, statement: TaskStatement) -> Result<Option<RecordBatch>> {
        match statement {
            TaskStatement::Create { name, or_replace, if_not_exists, options } => {
                self.create_task(session, &name, or_replace, if_not_exists, *options).await?;
                Ok(None)
            }
            TaskStatement::Alter { name, if_exists, action } => {
                self.alter_task(session, &name, if_exists, action).await?;
                Ok(None)
            }
            TaskStatement::Drop { name, if_exists } => {
                self.drop_task(session, &name, if_exists).await?;
                Ok(None)
            }
            TaskStatement::Execute { name, params } => {
                let (full, entry) = self.task(session, &name)?;
                let slot = Utc::now().with_timezone(&Utc);
                let slot = Utc.timestamp_opt(slot.timestamp(), 0).single().unwrap_or(slot);
                let mut req = RunRequest::new(&full, &entry, slot, Trigger::Manual);
                req.overrides = params;
                req.user = session.origin().user.clone();
                // A wrong parameter is the caller's mistake: say so before claiming anything.
                self.prepare_script(&full, &entry, slot, &req.run_id, &req.overrides).await?;
                let outcome = self.run_task(req, CancellationToken::new()).await?;
                let outcome = outcome.ok_or_else(|| Error::Conflict("the run was claimed twice".into()))?;
                if !outcome.succeeded() {
                    return Err(run_failed(&full, &outcome));
                }
                Ok(Some(runs_batch(&[outcome])?))
            }
            TaskStatement::Backfill { name, from, to } => {
                let (full, entry) = self.task(session, &name)?;
                let schedule = effective_schedule(&self.catalog().snapshot(), &full)?;
                let slots = backfill_slots(&schedule, from, to)?;
                info!(task = %full, runs = slots.len(), from = %from, to = %to, "backfill started");
                let mut outcomes = Vec::new();
                for (i, slot) in slots.iter().enumerate() {
                    let mut req = RunRequest::new(&full, &entry, *slot, Trigger::Backfill);
                    req.user = session.origin().user.clone();
                    if let Some(outcome) = self.run_task(req, CancellationToken::new()).await? {
                        info!(task = %full, run = i + 1, of = slots.len(), state = ?outcome.done.state, "backfill progress");
                        outcomes.push(outcome);
                    }
                }
                let failed: Vec<&RunOutcome> = outcomes.iter().filter(|o| !o.succeeded()).collect();
                if let Some(first) = failed.first() {
                    return Err(Error::invalid(format!(
                        "backfill of {full}: {} of {} runs failed; the first ({}): {}",
                        failed.len(),
                        outcomes.len(),
                        first.claim.scheduled_time,
                        first.error_line()
                    )));
                }
                Ok(Some(runs_batch(&outcomes)?))
            }
            TaskStatement::Show => Err(Error::internal("SHOW TASKS is planned as a query")),
        }
    }

    /// `schema.name` for a task name, defaulting the schema.
    pub(crate) fn task_key(&self, session: &Session, name: &TaskName) -> String {
        let schema = name
            .schema
            .clone()
            .unwrap_or_else(|| session.ctx().state().config_options().catalog.default_schema.clone());
        format!("{schema}.{}", name.name)
    }

    /// The task, or NOT FOUND naming it.
    fn task(&self, session: &Session, name: &TaskName) -> Result<(String, TaskEntry)> {
        let key = self.task_key(session, name);
        let entry = self.catalog().snapshot().tasks.get(&key).cloned();
        entry.map(|e| (key.clone(), e)).ok_or(Error::NotFound { kind: "task", name: key })
    }

    async fn create_task(
        &self,
        session: &Session,
        name: &TaskName,
        or_replace: bool,
        if_not_exists: bool,
        options: TaskOptions,
    ) -> Result<()> {
        let key = self.task_key(session, name);
        let schema = key.split_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
        if schema == SYSTEM_SCHEMA {
            return Err(Error::invalid("schema 'system' is reserved: tasks cannot be created in it"));
        }
        let now = timestamp(Utc::now());
        let mut entry = TaskEntry {
            schedule: None,
            after: Vec::new(),
            params: Vec::new(),
            overlap: "skip".into(),
            catchup: "latest".into(),
            max_catchup_runs: 30,
            retries: 0,
            retry_delay_secs: 300,
            timeout_secs: None,
            suspend_after_failures: Some(10),
            comment: None,
            body: String::new(),
            owner: session.origin().user.clone(),
            state: "suspended".into(),
            suspended_reason: None,
            created_at: now.clone(),
            updated_at: now,
            resumed_at: None,
        };
        apply_options(&mut entry, options, |n| self.task_key(session, n));
        let snapshot = self.catalog().refresh().await?;
        self.check_task(&snapshot, &key, &entry).await?;
        self.catalog()
            .commit(|s| {
                if !s.schemas.contains_key(&schema) {
                    return Err(Error::NotFound { kind: "schema", name: schema.clone() });
                }
                if s.tasks.contains_key(&key) && !or_replace {
                    return if if_not_exists {
                        Ok(())
                    } else {
                        Err(Error::AlreadyExists { kind: "task", name: key.clone() })
                    };
                }
                check_graph(s, &key, &entry)?;
                s.tasks.insert(key.clone(), entry.clone());
                Ok(())
            })
            .await?;
        info!(task = %key, "task created (suspended: ALTER TASK ... RESUME starts it)");
        self.tasks().wake.notify_one();
        Ok(())
    }

    async fn alter_task(&self, session: &Session, name: &TaskName, if_exists: bool, action: AlterAction) -> Result<()> {
        let key = self.task_key(session, name);
        let Some(mut entry) = self.catalog().refresh().await?.tasks.get(&key).cloned() else {
            return if if_exists { Ok(()) } else { Err(Error::NotFound { kind: "task", name: key }) };
        };
        let now = timestamp(Utc::now());
        match action {
            AlterAction::Resume => {
                entry.state = "started".into();
                entry.suspended_reason = None;
                entry.resumed_at = Some(now.clone());
            }
            AlterAction::Suspend => {
                entry.state = "suspended".into();
                entry.suspended_reason = None;
            }
            AlterAction::Set(options) => {
                apply_options(&mut entry, *options, |n| self.task_key(session, n));
                self.check_task(&self.catalog().snapshot(), &key, &entry).await?;
            }
        }
        entry.updated_at = now;
        self.catalog()
            .commit(|s| {
                if !s.tasks.contains_key(&key) {
                    return Err(Error::NotFound { kind: "task", name: key.clone() });
                }
                check_graph(s, &key, &entry)?;
                s.tasks.insert(key.clone(), entry.clone());
                Ok(())
            })
            .await?;
        info!(task = %key, state = %entry.state, "task altered");
        self.tasks().wake.notify_one();
        Ok(())
    }

    /// Suspend `task` (the scheduler, after consecutive failures), saying why.
    pub async fn suspend_task(&self, task: &str, reason: Option<String>) -> Result<()> {
        self.catalog()
            .commit(|s| {
                if let Some(t) = s.tasks.get_mut(task) {
                    t.state = "suspended".into();
                    t.suspended_reason = reason.clone();
                    t.updated_at = timestamp(Utc::now());
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn drop_task(&self, session: &Session, name: &TaskName, if_exists: bool) -> Result<()> {
        let key = self.task_key(session, name);
        self.catalog()
            .commit(|s| {
                if s.tasks.remove(&key).is_none() {
                    return if if_exists { Ok(()) } else { Err(Error::NotFound { kind: "task", name: key.clone() }) };
                }
                if let Some((dependant, _)) = s.tasks.iter().find(|(_, t)| t.after.contains(&key)) {
                    return Err(Error::invalid(format!(
                        "task {dependant} runs AFTER {key}: drop it or change its AFTER first"
                    )));
                }
                Ok(())
            })
            .await?;
        info!(task = %key, "task dropped (its run history stays in system.runs)");
        Ok(())
    }

    /// Everything about a definition that can be checked before it is stored.
    async fn check_task(&self, catalog: &CatalogState, key: &str, entry: &TaskEntry) -> Result<()> {
        match (&entry.schedule, entry.after.is_empty()) {
            (Some(_), false) => {
                return Err(Error::invalid(format!(
                    "task {key}: a task with AFTER runs for its upstreams' scheduled times: give SCHEDULE or AFTER, not both"
                )));
            }
            (None, true) => {
                return Err(Error::invalid(format!("task {key} needs SCHEDULE = '...' or AFTER <upstream task>")));
            }
            (Some(s), true) => {
                s.parse::<Schedule>()?;
            }
            (None, false) => {}
        }
        for (name, _) in &entry.params {
            if BUILTIN_PARAMS.contains(&name.as_str()) {
                return Err(Error::invalid(format!("PARAMS {name}: '{name}' is built in, choose another name")));
            }
        }
        check_graph(catalog, key, entry)?;
        // The parameters evaluate, and the script parses with them substituted.
        let slot = Utc::now();
        let (_, script) = self.prepare_script(key, entry, slot, "check", &[]).await?;
        let statements =
            self.parse(&script).map_err(|e| Error::invalid(format!("task {key}: the script: {}", e.user_message())))?;
        if statements.is_empty() {
            return Err(Error::invalid(format!("task {key}: the script has no statements")));
        }
        Ok(())
    }
}

/// Upstreams exist, and following AFTER from `key` never comes back to it.
fn check_graph(catalog: &CatalogState, key: &str, entry: &TaskEntry) -> Result<()> {
    for up in &entry.after {
        if up == key {
            return Err(Error::invalid(format!("task {key} cannot run AFTER itself")));
        }
        if !catalog.tasks.contains_key(up) {
            return Err(Error::NotFound { kind: "task", name: up.clone() });
        }
    }
    let mut pending: Vec<String> = entry.after.clone();
    let mut seen = std::collections::HashSet::new();
    while let Some(t) = pending.pop() {
        if t == key {
            return Err(Error::invalid(format!("task {key}: AFTER would make a cycle through {t}")));
        }
        if seen.insert(t.clone())
            && let Some(e) = catalog.tasks.get(&t)
        {
            pending.extend(e.after.iter().cloned());
        }
    }
    Ok(())
}

fn apply_options(entry: &mut TaskEntry, o: TaskOptions, resolve: impl Fn(&TaskName) -> String) {
    if let Some(s) = o.schedule {
        entry.schedule = Some(s);
        if o.after.is_none() {
            entry.after.clear();
        }
    }
    if let Some(after) = o.after {
        entry.after = after.iter().map(resolve).collect();
        if !entry.after.is_empty() {
            entry.schedule = None;
        }
    }
    if let Some(p) = o.params {
        entry.params = p;
    }
    if let Some(v) = o.overlap {
        entry.overlap = v;
    }
    if let Some(v) = o.catchup {
        entry.catchup = v;
    }
    if let Some(v) = o.max_catchup_runs {
        entry.max_catchup_runs = v.max(1);
    }
    if let Some(v) = o.retries {
        entry.retries = v;
    }
    if let Some(v) = o.retry_delay_secs {
        entry.retry_delay_secs = v;
    }
    if let Some(v) = o.timeout_secs {
        entry.timeout_secs = v;
    }
    if let Some(v) = o.suspend_after_failures {
        entry.suspend_after_failures = v;
    }
    if let Some(v) = o.comment {
        entry.comment = Some(v);
    }
    if let Some(v) = o.body {
        entry.body = v;
    }
}

/// The slots of `schedule` on the dates `from..=to`, read in the schedule's zone.
pub fn backfill_slots(schedule: &Schedule, from: NaiveDate, to: NaiveDate) -> Result<Vec<DateTime<Utc>>> {
    if to < from {
        return Err(Error::invalid(format!("BACKFILL FROM {from} TO {to}: TO is before FROM")));
    }
    let zone = schedule.zone();
    let midnight = |d: NaiveDate| {
        zone.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| Error::invalid(format!("{d} has no midnight in {zone}")))
    };
    let start = midnight(from)? - TimeDelta::seconds(1);
    let end = midnight(to + TimeDelta::days(1))? - TimeDelta::seconds(1);
    let slots = schedule.slots(start, end, MAX_BACKFILL_RUNS + 1);
    if slots.len() > MAX_BACKFILL_RUNS {
        return Err(Error::invalid(format!(
            "BACKFILL FROM {from} TO {to} covers more than {MAX_BACKFILL_RUNS} runs: backfill a shorter range at a time"
        )));
    }
    if slots.is_empty() {
        return Err(Error::invalid(format!("the schedule has no slot between {from} and {to}")));
    }
    Ok(slots)
}

fn run_failed(task: &str, o: &RunOutcome) -> Error {
    Error::invalid(format!(
        "run {} of task {task} {}: {}",
        o.claim.run_id,
        o.done.state.map_or("failed", |s| s.as_str()),
        o.error_line()
    ))
}

/// What `EXECUTE TASK` answers: one row per run.
pub fn runs_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("scheduled_time", ts, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("attempt", DataType::UInt32, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, false),
        Field::new("statements_done", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("error_message", DataType::Utf8, true),
    ]))
}

fn runs_batch(outcomes: &[RunOutcome]) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&RunOutcome) -> Option<String>| -> ArrayRef {
        Arc::new(outcomes.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|o| Some(o.claim.run_id.clone())),
        strings(&|o| Some(o.claim.task.clone())),
        Arc::new(
            TimestampMicrosecondArray::from(
                outcomes
                    .iter()
                    .map(|o| super::journal::parse_timestamp(&o.claim.scheduled_time).map(|t| t.timestamp_micros()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        strings(&|o| Some(o.claim.trigger.as_str().to_string())),
        Arc::new(outcomes.iter().map(|o| Some(o.claim.attempt)).collect::<UInt32Array>()),
        strings(&|o| Some(o.done.state.map_or("failed", |s| s.as_str()).to_string())),
        strings(&|o| Some(format_params(&o.claim.params))),
        Arc::new(outcomes.iter().map(|o| Some(o.done.statements_done as u64)).collect::<UInt64Array>()),
        Arc::new(outcomes.iter().map(|o| Some(o.done.rows)).collect::<UInt64Array>()),
        strings(&|o| o.done.error_message.clone()),
    ];
    Ok(RecordBatch::try_new(runs_schema(), columns)?)
}

/// `a=1, b=2`.
pub fn format_params(params: &[(String, String)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}
