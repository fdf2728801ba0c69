//! `system.copy_history` and `system.load_errors` (every managed table's ledger tables, so
//! every server shows the same), and `system.pipes` (the catalog's pipes with what this server
//! sees of them running: backlog, last commit, lag).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::SessionContext;

use crate::catalog::{CatalogState, TableEntry};
use crate::error::Result;
use crate::ingest::Ingest;
use crate::ingest::ledger::{INGEST_ROOT, errors_schema, existing, history_schema};
use crate::ingest::parse::parse_copy;
use crate::storage::Warehouse;

/// The rows of every ledger's `name` table (`history` or `errors`), newest tables first.
pub async fn ledger_rows(warehouse: &Warehouse, catalog: &CatalogState, name: &str) -> Result<RecordBatch> {
    let schema = if name == "history" { history_schema() } else { errors_schema() };
    let ctx = SessionContext::new();
    let mut batches = Vec::new();
    for entry in catalog.schemas.values().flat_map(|s| s.tables.values()) {
        let TableEntry::Managed { location, .. } = entry else { continue };
        let at = format!("{INGEST_ROOT}/{}/{name}", location.trim_matches('/'));
        let Some(table) = existing(warehouse, &at).await? else { continue };
        let rows = ctx.read_table(table.table_provider().await?)?.collect().await?;
        for b in rows {
            batches.push(crate::ingest::decode::to_target(&b, &schema).map_err(crate::error::Error::internal)?);
        }
    }
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn pipes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, true),
        Field::new("location", DataType::Utf8, true),
        Field::new("interval", DataType::Utf8, false),
        Field::new("backlog_files", DataType::UInt64, true),
        Field::new("backlog_bytes", DataType::UInt64, true),
        Field::new("last_poll", ts(), true),
        Field::new("last_commit", ts(), true),
        Field::new("lag_seconds", DataType::Float64, true),
        Field::new("files_loaded", DataType::UInt64, true),
        Field::new("bytes_loaded", DataType::UInt64, true),
        Field::new("rows_loaded", DataType::UInt64, true),
        Field::new("rows_rejected", DataType::UInt64, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("owner", DataType::Utf8, false),
        Field::new("comment", DataType::Utf8, true),
        Field::new("definition", DataType::Utf8, false),
    ]))
}

/// `system.pipes`: counters are this server's since it started (another server's work shows
/// in `system.copy_history`).
pub fn pipes_batch(catalog: &CatalogState, ingest: &Ingest) -> Result<RecordBatch> {
    let status = ingest.pipe_status();
    let pipes: Vec<_> = catalog.pipes.iter().collect();
    let copies: Vec<_> = pipes.iter().map(|(_, p)| parse_copy(&p.copy_sql).ok()).collect();
    let st: Vec<_> = pipes.iter().map(|(n, _)| status.get(*n).cloned()).collect();
    let running: Vec<bool> = pipes.iter().map(|(_, p)| p.state == "running").collect();
    let micros = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_micros());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(pipes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(pipes.iter().map(|(_, p)| p.state.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            copies
                .iter()
                .map(|c| {
                    c.as_ref().map(|c| match &c.target.schema {
                        Some(s) => format!("{s}.{}", c.target.name),
                        None => c.target.name.clone(),
                    })
                })
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(copies.iter().map(|c| c.as_ref().map(|c| c.location.clone())).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            pipes
                .iter()
                .map(|(_, p)| humantime::format_duration(std::time::Duration::from_millis(p.interval_ms)).to_string())
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            st.iter()
                .zip(&running)
                .map(|(s, r)| s.as_ref().filter(|_| *r).map(|s| s.backlog_files))
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            st.iter()
                .zip(&running)
                .map(|(s, r)| s.as_ref().filter(|_| *r).map(|s| s.backlog_bytes))
                .collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                st.iter().map(|s| s.as_ref().and_then(|s| micros(s.last_poll))).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                st.iter().map(|s| s.as_ref().and_then(|s| micros(s.last_commit))).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from(st.iter().map(|s| s.as_ref().and_then(|s| s.last_lag)).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(st.iter().map(|s| s.as_ref().map(|s| s.files_loaded)).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(st.iter().map(|s| s.as_ref().map(|s| s.bytes_loaded)).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(st.iter().map(|s| s.as_ref().map(|s| s.rows_loaded)).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(st.iter().map(|s| s.as_ref().map(|s| s.rows_rejected)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            st.iter().map(|s| s.as_ref().and_then(|s| s.last_error.clone())).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(pipes.iter().map(|(_, p)| p.owner.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(pipes.iter().map(|(_, p)| p.comment.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(pipes.iter().map(|(_, p)| p.copy_sql.as_str()).collect::<Vec<_>>())),
    ];
    Ok(RecordBatch::try_new(pipes_schema(), columns)?)
}
