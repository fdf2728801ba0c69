//! `COPY INTO`: list the location, keep the files the ledger does not know, decode them, and
//! commit them as numbered batches exactly once (see [`super::ledger`]). Pipes run the same
//! code one batch at a time.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use tracing::{info, warn};

use super::decode::{self, BadLine, FileError, SOURCE_FILE, SOURCE_LINE};
use super::ledger::{self, Ledger, LedgerState, Plan, PlannedFile, errors_schema, history_schema};
use super::parse::{CopyInto, OnError, SOURCE_RELATION, parse_copy};
use crate::catalog::TableEntry;
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

/// How much one batch takes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
    /// Commit one batch and return (pipes); a statement loops until nothing is left.
    pub one_batch: bool,
    /// Leave a truncated gzip file younger than this for a later batch (it may be being
    /// written); older ones fail as truncated.
    pub defer_truncated: Option<Duration>,
}

impl Limits {
    /// A statement's: batches of up to 1,000 files or 256 MiB as stored, one after another
    /// until nothing is left. A batch's decoded rows are held in memory until they are written
    /// (outside the memory pool), which is what bounds them.
    pub fn statement() -> Self {
        Self { max_files: 1000, max_bytes: 256 << 20, one_batch: false, defer_truncated: None }
    }
}

/// What happened to one file.
#[derive(Debug, Clone)]
pub struct FileResult {
    pub file: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    /// `LOADED`, `PARTIALLY_LOADED`, `SKIPPED` (SKIP_FILE) or `FAILED` (unreadable file).
    pub status: &'static str,
    pub rows_loaded: i64,
    pub rows_rejected: i64,
    pub first_error: Option<String>,
    pub first_error_line: Option<i64>,
    pub first_error_column: Option<String>,
}

/// What one `COPY INTO` (or one pipe batch) did.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    pub files: Vec<FileResult>,
    /// `VALIDATION_MODE`: the errors found, by file.
    pub errors: Vec<(String, BadLine)>,
    pub batches: u64,
    /// Files (and their bytes) listed and new but left for a later batch.
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    /// Seconds from each loaded file's last modification to its commit.
    pub lags: Vec<f64>,
    /// Another ingester's batch is in flight: nothing was done.
    pub busy: bool,
}

/// The table being loaded.
struct Target {
    name: String,
    location: String,
    /// The table's columns as Delta stores them (the writer's schema).
    schema: SchemaRef,
    /// The columns read from files: the target's, less computed and metadata ones.
    read: SchemaRef,
}

/// Where the files are.
pub struct SourceFiles {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The location as written, ending in `/`.
    base: String,
}

/// A file's Hive `key=value` folders.
type HiveValues = Vec<(String, String)>;

/// One file read and decoded into the target's columns.
enum Prepared {
    Rows { batch: RecordBatch, bad: Vec<BadLine> },
    Failed(FileError),
}

impl Engine {
    /// Run `copy` (whose text is `sql`) into its table; `pipe` names the pipe running it.
    pub async fn copy_into(
        &self,
        session: &Session,
        sql: &str,
        copy: &CopyInto,
        pipe: Option<&str>,
        limits: &Limits,
    ) -> Result<CopyOutcome> {
        let target = self.copy_target(session, copy).await?;
        let source = SourceFiles::open(self, &copy.location)?;
        if copy.validation {
            return self.validate(&source, copy, &target).await;
        }
        let ledger = self.ingest().ledger(self.warehouse(), &target.location);
        let mut outcome = CopyOutcome::default();
        loop {
            let mut state = ledger.state.lock().await;
            ledger.catch_up(&mut state).await?;
            if !self.finish_pending(&ledger, &mut state).await? {
                outcome.busy = true;
                return Ok(outcome);
            }
            let listed = source.list(copy).await?;
            let mut candidates: Vec<PlannedFile> =
                listed.into_iter().filter(|f| copy.force || !state.seen.contains(&f.key())).collect();
            if candidates.is_empty() {
                break;
            }
            candidates.sort_by(|a, b| (&a.last_modified, &a.file).cmp(&(&b.last_modified, &b.file)));
            let (mut batch, mut bytes) = (Vec::new(), 0u64);
            let mut rest = candidates.into_iter();
            for f in rest.by_ref() {
                let unlimited = copy.on_error == OnError::Abort && !limits.one_batch;
                if !batch.is_empty()
                    && !unlimited
                    && (batch.len() >= limits.max_files || bytes + f.size > limits.max_bytes)
                {
                    outcome.backlog_files = 1;
                    outcome.backlog_bytes = f.size;
                    break;
                }
                bytes += f.size;
                batch.push(f);
            }
            for f in rest {
                outcome.backlog_files += 1;
                outcome.backlog_bytes += f.size;
            }
            let prepared = self.prepare(&source, copy, &target, &batch, false).await?;
            let mut kept = Vec::new();
            let now = Utc::now();
            for (file, p) in batch.into_iter().zip(prepared) {
                if let (Prepared::Failed(e), Some(young)) = (&p, limits.defer_truncated)
                    && e.truncated
                    && parse_time(&file.last_modified).is_some_and(|t| (now - t).to_std().is_ok_and(|age| age < young))
                {
                    outcome.backlog_files += 1;
                    outcome.backlog_bytes += file.size;
                    continue;
                }
                kept.push((file, p));
            }
            if kept.is_empty() {
                break;
            }
            if copy.on_error == OnError::Abort
                && let Some(message) = first_failure(&kept)
            {
                return Err(Error::invalid(format!(
                    "COPY INTO {}: {message} (ON_ERROR = ABORT_STATEMENT: nothing was loaded; ON_ERROR = CONTINUE \
                     loads the good lines and keeps the bad ones in system.load_errors)",
                    target.name
                )));
            }
            let plan = Plan {
                batch: state.next,
                table: target.name.clone(),
                pipe: pipe.map(str::to_string),
                copy_sql: sql.to_string(),
                files: kept.iter().map(|(f, _)| f.clone()).collect(),
                planned_at: now.to_rfc3339(),
                owner: self.ingest().node().to_string(),
            };
            if !ledger.claim(&plan).await? {
                // Another ingester took this number: read its plan and look again.
                drop(state);
                continue;
            }
            record_plan(&mut state, &plan);
            let results = self.apply(&ledger, &target, &plan, copy, kept).await?;
            state.pending.remove(&plan.batch);
            let committed = Utc::now();
            for r in &results {
                outcome.lags.push((committed - r.last_modified).num_milliseconds().max(0) as f64 / 1000.0);
            }
            info!(
                table = %target.name,
                pipe = pipe.unwrap_or(""),
                batch = plan.batch,
                files = results.len(),
                rows = results.iter().map(|r| r.rows_loaded).sum::<i64>(),
                rejected = results.iter().map(|r| r.rows_rejected).sum::<i64>(),
                backlog = outcome.backlog_files,
                "batch committed"
            );
            self.ingest().loaded(pipe, &target.name, &results, &outcome.lags[outcome.lags.len() - results.len()..]);
            outcome.files.extend(results);
            outcome.batches += 1;
            if limits.one_batch || outcome.backlog_files == 0 {
                break;
            }
            outcome.backlog_files = 0;
            outcome.backlog_bytes = 0;
        }
        Ok(outcome)
    }

    async fn copy_target(&self, session: &Session, copy: &CopyInto) -> Result<Target> {
        let reference = match &copy.target.schema {
            Some(s) => TableReference::partial(s.as_str(), copy.target.name.as_str()),
            None => TableReference::bare(copy.target.name.as_str()),
        };
        let (schema_name, table) = self.resolve(session, &reference)?;
        let snapshot = self.store.refresh().await?;
        let name = format!("{schema_name}.{table}");
        let location = match snapshot.table(&schema_name, &table) {
            Some(TableEntry::Managed { location, .. }) => location.clone(),
            Some(_) => return Err(Error::invalid(format!("COPY INTO {name}: only managed tables can be loaded"))),
            None => return Err(Error::NotFound { kind: "table", name }),
        };
        let delta = crate::delta::open_table(self.warehouse(), &location).await?;
        let writer = deltalake::writer::RecordBatchWriter::for_table(&delta)?;
        let schema = writer.arrow_schema();
        for c in &copy.computed {
            if schema.field_with_name(c).is_err() {
                return Err(Error::invalid(format!(
                    "COPY INTO {name}: the transformation computes '{c}', which is not a column of {name}"
                )));
            }
        }
        let read = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .filter(|f| !copy.computed.contains(f.name()) && f.name() != SOURCE_FILE && f.name() != SOURCE_LINE)
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        decode::check_json_schema(&read).map_err(|e| {
            Error::not_supported(format!("COPY INTO {name}: a column type cannot be read from files: {e}"))
        })?;
        Ok(Target { name, location, schema, read })
    }

    /// Redo every plan of the ledger that is not done and that its planner is not working on;
    /// `Ok(false)` when one is in another live ingester's hands.
    async fn finish_pending(&self, ledger: &Ledger, state: &mut LedgerState) -> Result<bool> {
        if state.pending.is_empty() {
            return Ok(true);
        }
        let done = match ledger.existing_table("history").await? {
            Some(t) => ledger::txn_version(&t).await?,
            None => 0,
        };
        state.pending.retain(|k, _| *k > done);
        let plans: Vec<Plan> = state.pending.values().cloned().collect();
        for plan in plans {
            if !self.ingest().may_redo(&plan) {
                return Ok(false);
            }
            warn!(table = %plan.table, batch = plan.batch, planner = %plan.owner, "redoing an unfinished ingest batch");
            let copy = parse_copy(&plan.copy_sql)?;
            let session = self.session();
            let target = self.copy_target(&session, &copy).await?;
            let source = SourceFiles::open(self, &copy.location)?;
            let prepared = self.prepare(&source, &copy, &target, &plan.files, true).await?;
            let files = plan.files.iter().cloned().zip(prepared).collect();
            let results = self.apply(ledger, &target, &plan, &copy, files).await?;
            self.ingest().loaded(plan.pipe.as_deref(), &target.name, &results, &[]);
            state.pending.remove(&plan.batch);
        }
        Ok(true)
    }

    /// Read and decode `files` (two at a time) into the target's columns. `exact`: read each
    /// file only if it is unchanged since listed (a redo must see what was planned).
    async fn prepare(
        &self,
        source: &SourceFiles,
        copy: &CopyInto,
        target: &Target,
        files: &[PlannedFile],
        exact: bool,
    ) -> Result<Vec<Prepared>> {
        let ctx = match &copy.transform {
            Some(_) => {
                let ctx = SessionContext::new();
                streampulse_udfs::register_all(&ctx)?;
                Some(ctx)
            }
            None => None,
        };
        let decoded: Vec<std::result::Result<(decode::Decoded, HiveValues), FileError>> =
            futures::stream::iter(files.iter().cloned())
                .map(|f| {
                    let store = Arc::clone(&source.store);
                    let format = copy.format.clone();
                    let read = Arc::clone(&target.read);
                    let relative = f.file.strip_prefix(source.base.as_str()).unwrap_or(&f.file).to_string();
                    async move {
                        let path = Path::from(f.path.as_str());
                        let options =
                            GetOptions { if_match: if exact { f.e_tag.clone() } else { None }, ..Default::default() };
                        let bytes = match store.get_opts(&path, options).await {
                            Ok(r) => r.bytes().await,
                            Err(e) => Err(e),
                        };
                        let bytes = match bytes {
                            Ok(b) => b,
                            Err(object_store::Error::Precondition { .. }) => {
                                return Ok(Err(FileError {
                                    message: "the file changed after it was planned: not loaded".into(),
                                    truncated: false,
                                }));
                            }
                            Err(object_store::Error::NotFound { .. }) => {
                                return Ok(Err(FileError {
                                    message: "the file was removed after it was listed: not loaded".into(),
                                    truncated: false,
                                }));
                            }
                            Err(e) => return Err(Error::from(e)),
                        };
                        let decoded = tokio::task::spawn_blocking(move || decode::decode(&bytes, &format, &read))
                            .await
                            .map_err(|e| Error::internal(format!("decoding task failed: {e}")))?;
                        Ok(decoded.map(|d| (d, decode::hive_values(&relative))))
                    }
                })
                .buffered(2)
                .try_collect()
                .await?;
        let mut out = Vec::with_capacity(files.len());
        for (f, d) in files.iter().zip(decoded) {
            let (d, hive) = match d {
                Ok(v) => v,
                Err(e) => {
                    out.push(Prepared::Failed(e));
                    continue;
                }
            };
            let source_rows = match decode::with_metadata(&d, &f.file, &hive) {
                Ok(b) => b,
                Err(e) => {
                    out.push(Prepared::Failed(e));
                    continue;
                }
            };
            let rows = match (&copy.transform, &ctx) {
                (Some(sql), Some(ctx)) => {
                    let _ = ctx.deregister_table(SOURCE_RELATION);
                    ctx.register_batch(SOURCE_RELATION, source_rows)?;
                    let batches = ctx.sql(sql).await?.collect().await;
                    match batches {
                        Ok(batches) => batches,
                        Err(e) => {
                            out.push(Prepared::Failed(FileError {
                                message: format!("the transformation failed on this file: {e}"),
                                truncated: false,
                            }));
                            continue;
                        }
                    }
                }
                _ => vec![source_rows],
            };
            let converted: std::result::Result<Vec<RecordBatch>, String> =
                rows.iter().map(|b| decode::to_target(b, &target.schema)).collect();
            match converted {
                Ok(batches) => {
                    let batch = arrow::compute::concat_batches(&target.schema, &batches)?;
                    out.push(Prepared::Rows { batch, bad: d.bad });
                }
                Err(message) => out.push(Prepared::Failed(FileError { message, truncated: false })),
            }
        }
        Ok(out)
    }

    /// Commit batch `plan` to the ledger's `errors/`, the target, and `history/`, each once.
    async fn apply(
        &self,
        ledger: &Ledger,
        target: &Target,
        plan: &Plan,
        copy: &CopyInto,
        files: Vec<(PlannedFile, Prepared)>,
    ) -> Result<Vec<FileResult>> {
        let k = plan.batch;
        let mut results = Vec::new();
        let mut rows = Vec::new();
        let mut bad: Vec<(String, BadLine)> = Vec::new();
        for (f, p) in files {
            let last_modified = parse_time(&f.last_modified).unwrap_or_else(Utc::now);
            let mut r = FileResult {
                file: f.file.clone(),
                size: f.size,
                last_modified,
                status: "LOADED",
                rows_loaded: 0,
                rows_rejected: 0,
                first_error: None,
                first_error_line: None,
                first_error_column: None,
            };
            match p {
                Prepared::Failed(e) => {
                    r.status = "FAILED";
                    r.first_error = Some(e.message.clone());
                    bad.push((f.file.clone(), BadLine { line: None, column: None, error: e.message, raw: None }));
                }
                Prepared::Rows { batch, bad: lines } => {
                    if let Some(first) = lines.first() {
                        r.first_error = Some(first.error.clone());
                        r.first_error_line = first.line;
                        r.first_error_column = first.column.clone();
                    }
                    r.rows_rejected = lines.len() as i64;
                    if !lines.is_empty() && copy.on_error == OnError::SkipFile {
                        r.status = "SKIPPED";
                    } else {
                        if !lines.is_empty() {
                            r.status = "PARTIALLY_LOADED";
                        }
                        r.rows_loaded = batch.num_rows() as i64;
                        rows.push(batch);
                    }
                    bad.extend(lines.into_iter().map(|l| (f.file.clone(), l)));
                }
            }
            results.push(r);
        }
        let query_id = plan.pipe.clone().unwrap_or_else(|| "copy".into());
        let info = serde_json::json!({
            "table": plan.table, "pipe": plan.pipe, "batch": k, "files": results.len(),
            "rows": results.iter().map(|r| r.rows_loaded).sum::<i64>(),
        });
        let loaded_at = Utc::now();
        if !bad.is_empty() {
            let mut table = ledger.table("errors", &errors_schema()).await?;
            if ledger::txn_version(&table).await? < k {
                let batch = errors_batch(plan, &bad, loaded_at)?;
                let actions = ledger::write_files(&table, vec![conform(&table, batch)?]).await?;
                ledger::commit_once(&mut table, k, &query_id, actions, info.clone(), false).await?;
            }
        }
        let mut table = crate::delta::open_table(self.warehouse(), &target.location).await?;
        let version = if ledger::txn_version(&table).await? < k {
            let actions = ledger::write_files(&table, rows).await?;
            ledger::commit_once(&mut table, k, &query_id, actions, info.clone(), true).await?.0
        } else {
            table.version().unwrap_or(0) as i64
        };
        let mut history = ledger.table("history", &history_schema()).await?;
        if ledger::txn_version(&history).await? < k {
            let batch = history_batch(plan, &results, loaded_at, version)?;
            let actions = ledger::write_files(&history, vec![conform(&history, batch)?]).await?;
            ledger::commit_once(&mut history, k, &query_id, actions, info, true).await?;
        }
        Ok(results)
    }

    /// `VALIDATION_MODE`: decode the new files and answer their errors; nothing is loaded.
    async fn validate(&self, source: &SourceFiles, copy: &CopyInto, target: &Target) -> Result<CopyOutcome> {
        let ledger = self.ingest().ledger(self.warehouse(), &target.location);
        let seen = {
            let mut state = ledger.state.lock().await;
            ledger.catch_up(&mut state).await?;
            state.seen.clone()
        };
        let files: Vec<PlannedFile> =
            source.list(copy).await?.into_iter().filter(|f| copy.force || !seen.contains(&f.key())).collect();
        let prepared = self.prepare(source, copy, target, &files, false).await?;
        let mut outcome = CopyOutcome::default();
        for (f, p) in files.iter().zip(prepared) {
            match p {
                Prepared::Failed(e) => outcome
                    .errors
                    .push((f.file.clone(), BadLine { line: None, column: None, error: e.message, raw: None })),
                Prepared::Rows { bad, .. } => outcome.errors.extend(bad.into_iter().map(|b| (f.file.clone(), b))),
            }
        }
        Ok(outcome)
    }
}

fn record_plan(state: &mut LedgerState, plan: &Plan) {
    for f in &plan.files {
        state.seen.insert(f.key());
    }
    state.next = state.next.max(plan.batch + 1);
    state.pending.insert(plan.batch, plan.clone());
}

fn first_failure(files: &[(PlannedFile, Prepared)]) -> Option<String> {
    files.iter().find_map(|(f, p)| match p {
        Prepared::Failed(e) => Some(format!("{}: {}", f.file, e.message)),
        Prepared::Rows { bad, .. } => bad.first().map(|b| {
            let mut at = format!("{}: line {}", f.file, b.line.unwrap_or(0));
            if let Some(c) = &b.column {
                at.push_str(&format!(", column {c}"));
            }
            format!("{at}: {}", b.error)
        }),
    })
}

pub(crate) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// `batch` cast to the Delta table's own arrow schema.
fn conform(table: &deltalake::DeltaTable, batch: RecordBatch) -> Result<RecordBatch> {
    let writer = deltalake::writer::RecordBatchWriter::for_table(table)?;
    decode::to_target(&batch, &writer.arrow_schema()).map_err(Error::internal)
}

fn errors_batch(plan: &Plan, bad: &[(String, BadLine)], at: DateTime<Utc>) -> Result<RecordBatch> {
    let n = bad.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![plan.table.as_str(); n])),
        Arc::new(StringArray::from(vec![plan.pipe.as_deref(); n])),
        Arc::new(Int64Array::from(vec![plan.batch; n])),
        Arc::new(StringArray::from(bad.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(bad.iter().map(|(_, b)| b.line).collect::<Vec<_>>())),
        Arc::new(StringArray::from(bad.iter().map(|(_, b)| b.column.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(bad.iter().map(|(_, b)| b.error.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(bad.iter().map(|(_, b)| b.raw.as_deref()).collect::<Vec<_>>())),
        Arc::new(TimestampMicrosecondArray::from(vec![micros(at); n]).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(errors_schema(), columns)?)
}

fn history_batch(plan: &Plan, results: &[FileResult], at: DateTime<Utc>, version: i64) -> Result<RecordBatch> {
    let n = results.len();
    let etags: Vec<Option<&str>> = plan.files.iter().map(|f| f.e_tag.as_deref()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![plan.table.as_str(); n])),
        Arc::new(StringArray::from(vec![plan.pipe.as_deref(); n])),
        Arc::new(Int64Array::from(vec![plan.batch; n])),
        Arc::new(StringArray::from(results.iter().map(|r| r.file.as_str()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(results.iter().map(|r| r.size as i64).collect::<Vec<_>>())),
        Arc::new(StringArray::from(etags)),
        Arc::new(
            TimestampMicrosecondArray::from(results.iter().map(|r| micros(r.last_modified)).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(results.iter().map(|r| r.status).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(results.iter().map(|r| r.rows_loaded).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(results.iter().map(|r| r.rows_rejected).collect::<Vec<_>>())),
        Arc::new(StringArray::from(results.iter().map(|r| r.first_error.as_deref()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(results.iter().map(|r| r.first_error_line).collect::<Vec<_>>())),
        Arc::new(StringArray::from(results.iter().map(|r| r.first_error_column.as_deref()).collect::<Vec<_>>())),
        Arc::new(TimestampMicrosecondArray::from(vec![micros(at); n]).with_timezone("UTC")),
        Arc::new(Int64Array::from(vec![version; n])),
    ];
    Ok(RecordBatch::try_new(history_schema(), columns)?)
}

impl SourceFiles {
    /// The store and prefix of a local folder or `s3://bucket/prefix`.
    pub fn open(engine: &Engine, location: &str) -> Result<Self> {
        let base = if location.ends_with('/') { location.to_string() } else { format!("{location}/") };
        if let Some(rest) = location.strip_prefix("s3://").or_else(|| location.strip_prefix("s3a://")) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::invalid(format!("COPY INTO: no bucket in '{location}'")));
            }
            let store = engine.warehouse().s3().build_store(bucket)?;
            return Ok(Self { store, prefix: Path::from(prefix.trim_matches('/')), base });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::invalid(format!(
                "COPY INTO: location '{location}' is neither a local folder nor s3://bucket/prefix"
            )));
        }
        let local = location.strip_prefix("file://").unwrap_or(location);
        let dir = std::fs::canonicalize(local)
            .map_err(|e| Error::invalid(format!("COPY INTO: location '{location}' cannot be read: {e}")))?;
        if !dir.is_dir() {
            return Err(Error::invalid(format!("COPY INTO: location '{location}' is not a folder")));
        }
        let prefix = Path::from_absolute_path(&dir)
            .map_err(|e| Error::invalid(format!("COPY INTO: location '{location}': {e}")))?;
        Ok(Self { store: Arc::new(object_store::local::LocalFileSystem::new()), prefix, base })
    }

    /// Every file below the location that `FILES` / `PATTERN` select, hidden ones (a name
    /// starting with `.` or `_` anywhere below the location: files being written, markers)
    /// left out.
    async fn list(&self, copy: &CopyInto) -> Result<Vec<PlannedFile>> {
        let pattern = match &copy.pattern {
            Some(p) => Some(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| Error::invalid(format!("COPY INTO: PATTERN '{p}': {e}")))?,
            ),
            None => None,
        };
        let prefix = if self.prefix.as_ref().is_empty() { None } else { Some(&self.prefix) };
        let mut out = Vec::new();
        let mut listing = self.store.list(prefix);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let full = meta.location.as_ref();
            let relative = match prefix {
                Some(p) => full.strip_prefix(p.as_ref()).unwrap_or(full).trim_start_matches('/'),
                None => full,
            };
            if relative.is_empty() || relative.split('/').any(|s| s.starts_with('.') || s.starts_with('_')) {
                continue;
            }
            if let Some(files) = &copy.files
                && !files.iter().any(|f| f.trim_start_matches('/') == relative)
            {
                continue;
            }
            if let Some(p) = &pattern
                && !p.is_match(relative)
            {
                continue;
            }
            out.push(PlannedFile {
                file: format!("{}{relative}", self.base),
                path: full.to_string(),
                size: meta.size,
                e_tag: meta.e_tag.clone(),
                last_modified: meta.last_modified.to_rfc3339(),
            });
        }
        Ok(out)
    }
}
