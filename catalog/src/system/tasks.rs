//! `system.tasks` (definitions from the catalog, with what the journal says about them),
//! `system.runs` (every attempt in the journal, newest first; running ones with their live
//! progress when they run in this process) and `system.run_history` (attempts older than the
//! retention, rolled out of the journal into a Delta table in `_run_history/`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};

use crate::catalog::CatalogState;
use crate::error::{Error, Result};
use crate::schedule::journal::parse_timestamp;
use crate::schedule::statements::format_params;
use crate::schedule::{RunEntry, Schedule, Tasks, summarise};
use crate::storage::Warehouse;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn times(values: Vec<Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            values.into_iter().map(|t| t.map(|t| t.timestamp_micros())).collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

/// The schema of `system.tasks`.
pub fn tasks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("suspended_reason", DataType::Utf8, true),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("after", DataType::Utf8, true),
        Field::new("params", DataType::Utf8, false),
        Field::new("overlap", DataType::Utf8, false),
        Field::new("catchup", DataType::Utf8, false),
        Field::new("max_catchup_runs", DataType::UInt32, false),
        Field::new("retries", DataType::UInt32, false),
        Field::new("retry_delay_s", DataType::UInt64, false),
        Field::new("timeout_s", DataType::UInt64, true),
        Field::new("suspend_after_failures", DataType::UInt32, true),
        Field::new("comment", DataType::Utf8, true),
        Field::new("created_at", ts(), false),
        Field::new("updated_at", ts(), false),
        Field::new("next_scheduled_time", ts(), true),
        Field::new("last_run_state", DataType::Utf8, true),
        Field::new("last_run_time", ts(), true),
        Field::new("last_success_time", ts(), true),
        Field::new("consecutive_failures", DataType::UInt32, false),
        Field::new("catalog_version", DataType::UInt64, false),
        Field::new("definition", DataType::Utf8, false),
    ]))
}

/// `system.tasks` now.
pub fn tasks_batch(catalog: &CatalogState, runs: &[RunEntry]) -> Result<RecordBatch> {
    let mut by_task: HashMap<&str, Vec<&RunEntry>> = HashMap::new();
    for r in runs {
        by_task.entry(r.key.task.as_str()).or_default().push(r);
    }
    let now = Utc::now();
    let rows: Vec<_> = catalog
        .tasks
        .iter()
        .map(|(name, t)| {
            let own = by_task.get(name.as_str()).cloned().unwrap_or_default();
            let summary = summarise(&own);
            let next = (t.state == "started")
                .then(|| t.schedule.as_deref().and_then(|s| s.parse::<Schedule>().ok()))
                .flatten()
                .and_then(|s| {
                    let last = own.iter().filter(|e| e.key.scheduled()).map(|e| e.key.slot).max();
                    let resumed = t.resumed_at.as_deref().and_then(parse_timestamp);
                    let floor = last.max(resumed).unwrap_or(now);
                    s.next_after(floor)
                });
            (name, t, summary, next)
        })
        .collect();
    let strings =
        |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef { Arc::new((0..rows.len()).map(f).collect::<StringArray>()) };
    let u32s =
        |f: &dyn Fn(usize) -> Option<u32>| -> ArrayRef { Arc::new((0..rows.len()).map(f).collect::<UInt32Array>()) };
    let columns: Vec<ArrayRef> = vec![
        strings(&|i| Some(rows[i].0.clone())),
        strings(&|i| Some(rows[i].1.owner.clone())),
        strings(&|i| Some(rows[i].1.state.clone())),
        strings(&|i| rows[i].1.suspended_reason.clone()),
        strings(&|i| rows[i].1.schedule.clone()),
        strings(&|i| (!rows[i].1.after.is_empty()).then(|| rows[i].1.after.join(", "))),
        strings(&|i| Some(rows[i].1.params.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join("; "))),
        strings(&|i| Some(rows[i].1.overlap.clone())),
        strings(&|i| Some(rows[i].1.catchup.clone())),
        u32s(&|i| Some(rows[i].1.max_catchup_runs)),
        u32s(&|i| Some(rows[i].1.retries)),
        Arc::new(rows.iter().map(|r| Some(r.1.retry_delay_secs)).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.1.timeout_secs).collect::<UInt64Array>()),
        u32s(&|i| rows[i].1.suspend_after_failures),
        strings(&|i| rows[i].1.comment.clone()),
        times(rows.iter().map(|r| parse_timestamp(&r.1.created_at)).collect()),
        times(rows.iter().map(|r| parse_timestamp(&r.1.updated_at)).collect()),
        times(rows.iter().map(|r| r.3).collect()),
        strings(&|i| rows[i].2.last_run_state.clone()),
        times(rows.iter().map(|r| r.2.last_run_time).collect()),
        times(rows.iter().map(|r| r.2.last_success_time).collect()),
        u32s(&|i| Some(rows[i].2.consecutive_failures)),
        Arc::new(rows.iter().map(|_| Some(catalog.version)).collect::<UInt64Array>()),
        strings(&|i| Some(rows[i].1.body.trim().to_string())),
    ];
    RecordBatch::try_new(tasks_schema(), columns).map_err(|e| Error::internal(format!("system.tasks: {e}")))
}

/// The schema of `system.runs`.
pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("scheduled_time", ts(), false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("attempt", DataType::UInt32, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("catalog_version", DataType::UInt64, false),
        Field::new("started_at", ts(), false),
        Field::new("completed_at", ts(), true),
        Field::new("duration_ms", DataType::UInt64, true),
        Field::new("statements_done", DataType::UInt64, false),
        Field::new("statements_total", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("peak_memory_bytes", DataType::UInt64, false),
        Field::new("spilled_bytes", DataType::UInt64, false),
        Field::new("error_code", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("failed_statement", DataType::Utf8, true),
        Field::new("skip_reason", DataType::Utf8, true),
        Field::new("next_retry_at", ts(), true),
    ]))
}

/// `system.runs` now, newest start first.
pub fn runs_batch(tasks: &Tasks, runs: &[RunEntry]) -> Result<RecordBatch> {
    let mut rows: Vec<&RunEntry> = runs.iter().collect();
    rows.sort_by(|a, b| b.claim.started_at.cmp(&a.claim.started_at));
    let now = Utc::now();
    let live: Vec<_> = rows.iter().map(|r| tasks.running(&r.claim.run_id)).collect();
    let strings =
        |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef { Arc::new((0..rows.len()).map(f).collect::<StringArray>()) };
    let u64s = |f: &dyn Fn(usize) -> u64| -> ArrayRef {
        Arc::new((0..rows.len()).map(|i| Some(f(i))).collect::<UInt64Array>())
    };
    let done = |i: usize| rows[i].done.as_deref();
    let started = |i: usize| parse_timestamp(&rows[i].claim.started_at);
    let completed = |i: usize| done(i).and_then(|d| parse_timestamp(&d.completed_at));
    let columns: Vec<ArrayRef> = vec![
            strings(&|i| Some(rows[i].claim.run_id.clone())),
            strings(&|i| Some(rows[i].key.task.clone())),
            times(rows.iter().map(|r| Some(r.key.slot)).collect()),
            strings(&|i| Some(rows[i].claim.trigger.as_str().to_string())),
            Arc::new(rows.iter().map(|r| Some(r.key.attempt)).collect::<UInt32Array>()),
            strings(&|i| {
                Some(match done(i) {
                    Some(d) => d.state.map_or("failed", |s| s.as_str()).to_string(),
                    None if tasks.alive(rows[i], now) => "running".to_string(),
                    None => "lost".to_string(),
                })
            }),
            strings(&|i| Some(format_params(&rows[i].claim.params))),
            strings(&|i| Some(rows[i].claim.node.clone())),
            strings(&|i| Some(rows[i].claim.user.clone())),
            u64s(&|i| rows[i].claim.catalog_version),
            times((0..rows.len()).map(started).collect()),
            times((0..rows.len()).map(completed).collect()),
            Arc::new(
                (0..rows.len())
                    .map(|i| {
                        Some(completed(i).unwrap_or(now).signed_duration_since(started(i)?).num_milliseconds().max(0)
                            as u64)
                    })
                    .collect::<UInt64Array>(),
            ),
            u64s(&|i| done(i).map_or(live[i].as_ref().map_or(0, |p| p.statements_done), |d| d.statements_done) as u64),
            u64s(&|i| rows[i].claim.statements_total as u64),
            u64s(&|i| done(i).map_or(live[i].as_ref().map_or(0, |p| p.rows), |d| d.rows)),
            u64s(&|i| done(i).map_or(0, |d| d.peak_memory_bytes)),
            u64s(&|i| done(i).map_or(0, |d| d.spilled_bytes)),
            strings(&|i| done(i).and_then(|d| d.error_code.clone())),
            strings(&|i| done(i).and_then(|d| d.error_message.clone())),
            strings(&|i| {
                let d = done(i)?;
                match (d.failed_statement_index, &d.failed_statement) {
                    (Some(n), Some(sql)) => Some(format!("{n}: {sql}")),
                    (Some(n), None) => Some(format!("{n}")),
                    _ => None,
                }
            }),
            strings(&|i| done(i).and_then(|d| d.skip_reason.clone())),
            times(
                (0..rows.len()).map(|i| done(i).and_then(|d| parse_timestamp(d.next_retry_at.as_deref()?))).collect(),
            ),
        ];
    RecordBatch::try_new(runs_schema(), columns).map_err(|e| Error::internal(format!("system.runs: {e}")))
}

/// Where attempts go once they are older than the retention: a Delta table (not in the catalog).
pub const RUN_HISTORY_LOCATION: &str = "_run_history";

/// Append `batch` (rows of [`runs_schema`]) to the run history table, creating it when new.
pub async fn append_history(warehouse: &Warehouse, batch: RecordBatch) -> Result<()> {
    let schema = crate::delta::delta_compatible_schema(&batch.schema());
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let batch = RecordBatch::try_new(schema, columns)?;
    let url = warehouse.url(RUN_HISTORY_LOCATION)?;
    // deltalake opens a local table only in an existing folder (S3 has no folders).
    if let Ok(dir) = url.to_file_path() {
        std::fs::create_dir_all(&dir)?;
    }
    let table = deltalake::DeltaTable::try_from_url_with_storage_options(url, warehouse.storage_options()).await?;
    table.write(vec![batch]).with_save_mode(deltalake::protocol::SaveMode::Append).await?;
    Ok(())
}

/// `system.run_history`: the rolled-up attempts, or none yet.
pub async fn history_provider(warehouse: &Warehouse) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let log = warehouse.path(&format!("{RUN_HISTORY_LOCATION}/_delta_log"));
    let mut listing = warehouse.store().list(Some(&log));
    if futures::StreamExt::next(&mut listing).await.is_none() {
        let schema = crate::delta::delta_compatible_schema(&runs_schema());
        return Ok(Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![vec![]])?));
    }
    Ok(crate::delta::open_table(warehouse, RUN_HISTORY_LOCATION).await?.table_provider().await?)
}
