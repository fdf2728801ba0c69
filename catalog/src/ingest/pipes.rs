//! Pipes: a `COPY INTO` kept as a catalog entry and run by the server's pipe service, one
//! batch at a time, for as long as it is running. `CREATE PIPE` checks the statement (target,
//! location, options) before the catalog commit; `ALTER PIPE ... PAUSE | RESUME` and
//! `DROP PIPE` take effect at the next batch boundary (a batch in flight finishes: it is
//! never half-committed). Any number of servers may run the same pipes on one warehouse:
//! the ledger's create-only plans decide who loads which batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::copy::{CopyOutcome, Limits, SourceFiles};
use super::parse::{CopyInto, IngestStatement, OnError, parse_copy};
use crate::catalog::{PipeEntry, TableEntry};
use crate::error::{Error, Result};
use crate::schedule::parse::TaskName;
use crate::session::{Engine, Session};
use crate::system::SYSTEM_SCHEMA;

/// What `SHOW PIPES` runs.
pub const SHOW_PIPES_SQL: &str = "SELECT name, state, target, location, \"interval\", backlog_files, backlog_bytes, \
     last_commit, lag_seconds, files_loaded, rows_loaded, rows_rejected, last_error, owner, comment \
     FROM system.pipes ORDER BY name";

/// How the pipe service batches and maintains.
#[derive(Debug, Clone)]
pub struct PipeServiceConfig {
    /// Most files in one batch.
    pub max_files: usize,
    /// Most (compressed) bytes in one batch.
    pub max_bytes: u64,
    /// How often each loaded table is compacted and its log cleaned; `None` turns it off.
    pub maintenance_interval: Option<Duration>,
    /// How often maintenance also vacuums unreferenced files; `None` turns it off.
    pub vacuum_interval: Option<Duration>,
}

impl Default for PipeServiceConfig {
    fn default() -> Self {
        Self {
            max_files: 500,
            max_bytes: 256 << 20,
            maintenance_interval: Some(Duration::from_secs(600)),
            vacuum_interval: Some(Duration::from_secs(86_400)),
        }
    }
}

/// The answer to `COPY INTO`: one row per file loaded (or skipped, or failed).
pub fn copy_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows_loaded", DataType::Int64, false),
        Field::new("rows_rejected", DataType::Int64, false),
        Field::new("first_error", DataType::Utf8, true),
        Field::new("first_error_line", DataType::Int64, true),
        Field::new("first_error_column", DataType::Utf8, true),
    ]))
}

/// The answer to `COPY INTO ... VALIDATION_MODE = RETURN_ERRORS`: one row per error.
pub fn validation_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::Int64, true),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
    ]))
}

fn outcome_batch(o: &CopyOutcome, validation: bool) -> Result<RecordBatch> {
    if validation {
        let e = &o.errors;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(e.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(e.iter().map(|(_, b)| b.line).collect::<Vec<_>>())),
            Arc::new(StringArray::from(e.iter().map(|(_, b)| b.column.as_deref()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(e.iter().map(|(_, b)| b.error.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(e.iter().map(|(_, b)| b.raw.as_deref()).collect::<Vec<_>>())),
        ];
        return Ok(RecordBatch::try_new(validation_schema(), columns)?);
    }
    let f = &o.files;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(f.iter().map(|r| r.file.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(f.iter().map(|r| r.status).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(f.iter().map(|r| r.rows_loaded).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(f.iter().map(|r| r.rows_rejected).collect::<Vec<_>>())),
        Arc::new(StringArray::from(f.iter().map(|r| r.first_error.as_deref()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(f.iter().map(|r| r.first_error_line).collect::<Vec<_>>())),
        Arc::new(StringArray::from(f.iter().map(|r| r.first_error_column.as_deref()).collect::<Vec<_>>())),
    ];
    Ok(RecordBatch::try_new(copy_result_schema(), columns)?)
}

impl Engine {
    /// Carry out an ingest statement (not `SHOW PIPES`, which plans as a query). `COPY INTO`
    /// answers its files; the pipe statements nothing.
    pub async fn run_ingest_statement(
        &self,
        session: &Session,
        sql: &str,
        statement: IngestStatement,
    ) -> Result<Option<RecordBatch>> {
        match statement {
            IngestStatement::Copy(copy) => {
                let started = Instant::now();
                loop {
                    let outcome = self.copy_into(session, sql, &copy, None, &Limits::statement()).await?;
                    if !outcome.busy {
                        return Ok(Some(outcome_batch(&outcome, copy.validation)?));
                    }
                    // Another ingester's batch of this table is in flight: wait for it.
                    if started.elapsed() > Duration::from_secs(120) {
                        return Err(Error::Conflict(
                            "COPY INTO: another ingester has held a batch of this table for 2 minutes; try again"
                                .into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            IngestStatement::CreatePipe { name, or_replace, if_not_exists, interval, comment, copy_sql, copy } => {
                self.create_pipe(session, &name, or_replace, if_not_exists, interval, comment, copy_sql, &copy).await?;
                Ok(None)
            }
            IngestStatement::AlterPipe { name, if_exists, pause } => {
                let key = self.task_key(session, &name);
                let now = Utc::now().to_rfc3339();
                let found = self
                    .catalog()
                    .commit(|s| match s.pipes.get_mut(&key) {
                        Some(p) => {
                            p.state = if pause { "paused" } else { "running" }.into();
                            p.updated_at = now.clone();
                            Ok(())
                        }
                        None if if_exists => Ok(()),
                        None => Err(Error::NotFound { kind: "pipe", name: key.clone() }),
                    })
                    .await?;
                if found.pipes.contains_key(&key) {
                    info!(pipe = %key, paused = pause, "pipe altered");
                }
                self.ingest().wake.notify_one();
                Ok(None)
            }
            IngestStatement::DropPipe { name, if_exists } => {
                let key = self.task_key(session, &name);
                self.catalog()
                    .commit(|s| match s.pipes.remove(&key) {
                        Some(_) => Ok(()),
                        None if if_exists => Ok(()),
                        None => Err(Error::NotFound { kind: "pipe", name: key.clone() }),
                    })
                    .await?;
                info!(pipe = %key, "pipe dropped (its load history stays in system.copy_history)");
                self.ingest().wake.notify_one();
                Ok(None)
            }
            IngestStatement::ShowPipes => Err(Error::internal("SHOW PIPES is planned as a query")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_pipe(
        &self,
        session: &Session,
        name: &TaskName,
        or_replace: bool,
        if_not_exists: bool,
        interval: Duration,
        comment: Option<String>,
        copy_sql: String,
        copy: &CopyInto,
    ) -> Result<()> {
        let key = self.task_key(session, name);
        let schema = key.split_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
        if schema == SYSTEM_SCHEMA {
            return Err(Error::invalid("schema 'system' is reserved: pipes cannot be created in it"));
        }
        if copy.on_error == OnError::Abort {
            return Err(Error::invalid(
                "CREATE PIPE: a pipe cannot use ON_ERROR = ABORT_STATEMENT (one bad file would stop it for good): \
                 give ON_ERROR = CONTINUE (bad lines to system.load_errors) or ON_ERROR = SKIP_FILE",
            ));
        }
        if copy.validation || copy.force {
            return Err(Error::invalid(
                "CREATE PIPE: VALIDATION_MODE and FORCE belong to one-off COPY INTO statements",
            ));
        }
        // The target and the location must exist now, not at the first batch.
        let (target, _) = managed_target(self, session, copy)?;
        SourceFiles::open(self, &copy.location)?;
        let now = Utc::now().to_rfc3339();
        let entry = PipeEntry {
            copy_sql,
            interval_ms: interval.as_millis() as u64,
            state: "running".into(),
            owner: session.origin().user.clone(),
            comment,
            created_at: now.clone(),
            updated_at: now,
        };
        self.catalog()
            .commit(|s| {
                if !s.schemas.contains_key(&schema) {
                    return Err(Error::NotFound { kind: "schema", name: schema.clone() });
                }
                if s.pipes.contains_key(&key) && !or_replace {
                    return if if_not_exists {
                        Ok(())
                    } else {
                        Err(Error::AlreadyExists { kind: "pipe", name: key.clone() })
                    };
                }
                s.pipes.insert(key.clone(), entry.clone());
                Ok(())
            })
            .await?;
        info!(pipe = %key, target = %target, location = %copy.location, "pipe created (running)");
        self.ingest().wake.notify_one();
        Ok(())
    }
}

/// `schema.table` of a copy's target and its folder, checked to be a managed table.
fn managed_target(engine: &Engine, session: &Session, copy: &CopyInto) -> Result<(String, String)> {
    let schema = copy
        .target
        .schema
        .clone()
        .unwrap_or_else(|| session.ctx().state().config_options().catalog.default_schema.clone());
    let name = format!("{schema}.{}", copy.target.name);
    match engine.catalog().snapshot().table(&schema, &copy.target.name) {
        Some(TableEntry::Managed { location, .. }) => Ok((name, location.clone())),
        Some(_) => Err(Error::invalid(format!("COPY INTO {name}: only managed tables can be loaded"))),
        None => Err(Error::NotFound { kind: "table", name }),
    }
}

/// The pipe service: one task per running pipe, started and stopped as the catalog changes
/// (checked every second and on every pipe statement of this process).
pub async fn run(engine: Engine, config: PipeServiceConfig, stop: CancellationToken) {
    let mut running: HashMap<String, (PipeEntry, CancellationToken, JoinHandle<()>)> = HashMap::new();
    info!(max_files = config.max_files, max_bytes = config.max_bytes, "pipe service started");
    loop {
        match engine.refresh().await {
            Ok(catalog) => {
                running.retain(|name, (entry, token, _)| {
                    let keep = catalog.pipes.get(name).is_some_and(|e| e == entry && e.state == "running");
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for (name, entry) in &catalog.pipes {
                    if entry.state != "running" || running.contains_key(name) {
                        continue;
                    }
                    let token = stop.child_token();
                    let handle = tokio::spawn(run_pipe(
                        engine.clone(),
                        name.clone(),
                        entry.clone(),
                        config.clone(),
                        token.clone(),
                    ));
                    running.insert(name.clone(), (entry.clone(), token, handle));
                }
            }
            Err(e) => warn!(error = %e, "pipe service cannot read the catalog; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = engine.ingest().wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for (_, (_, token, handle)) in running {
        token.cancel();
        let _ = handle.await;
    }
    info!("pipe service stopped");
}

async fn run_pipe(engine: Engine, name: String, entry: PipeEntry, config: PipeServiceConfig, stop: CancellationToken) {
    let copy = match parse_copy(&entry.copy_sql) {
        Ok(c) => c,
        Err(e) => {
            warn!(pipe = %name, error = %e, "pipe statement no longer parses; not running it");
            engine.ingest().update_pipe(&name, |s| s.last_error = Some(e.user_message()));
            return;
        }
    };
    let limits = Limits {
        max_files: config.max_files,
        max_bytes: config.max_bytes,
        one_batch: true,
        defer_truncated: Some(Duration::from_secs(60)),
    };
    let interval = Duration::from_millis(entry.interval_ms.max(100));
    let mut last_maintenance = Instant::now();
    let mut last_vacuum = Instant::now();
    let mut loaded_since_maintenance = false;
    info!(pipe = %name, interval_ms = entry.interval_ms, "pipe running");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let session = engine.session().for_user(&entry.owner, "pipe");
        // A batch is never cancelled half-way: stopping waits for it.
        let result = engine.copy_into(&session, &entry.copy_sql, &copy, Some(&name), &limits).await;
        let mut again = false;
        let mut wait = interval;
        match result {
            Ok(o) => {
                again = o.backlog_files > 0 && !o.busy;
                loaded_since_maintenance |= o.batches > 0;
                engine.ingest().update_pipe(&name, |s| {
                    s.last_poll = Some(Utc::now());
                    s.backlog_files = o.backlog_files;
                    s.backlog_bytes = o.backlog_bytes;
                    s.last_error = None;
                });
            }
            Err(e) => {
                warn!(pipe = %name, error = %e.user_message(), "pipe batch failed; trying again");
                engine.ingest().update_pipe(&name, |s| {
                    s.last_poll = Some(Utc::now());
                    s.last_error = Some(e.user_message());
                });
                wait = interval.max(Duration::from_secs(2));
            }
        }
        if let Some(every) = config.maintenance_interval
            && loaded_since_maintenance
            && last_maintenance.elapsed() >= every
        {
            last_maintenance = Instant::now();
            loaded_since_maintenance = false;
            let vacuum = config.vacuum_interval.is_some_and(|every| last_vacuum.elapsed() >= every);
            if vacuum {
                last_vacuum = Instant::now();
            }
            if let Ok((_, location)) = managed_target(&engine, &session, &copy) {
                let _ = engine.maintain_ingested(&location, vacuum).await;
            }
        }
        if again {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    info!(pipe = %name, "pipe stopped");
}
