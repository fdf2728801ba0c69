//! The load ledger of one managed table, under `_ingest/<table folder>/` in the warehouse:
//!
//! - `batches/<k>.json`: **plans**, one per batch, numbered 1, 2, ... and written create-only
//!   (`PutMode::Create`), so two ingesters can never own the same batch; a plan lists the files
//!   (path, size, etag) and the `COPY INTO` text, and never changes, so anyone can redo it;
//! - `errors/`: a Delta table of bad lines (`system.load_errors`);
//! - `history/`: a Delta table, one row per file (`system.copy_history`).
//!
//! Batch `k` commits to `errors/` (when it has bad lines), to the target, then to `history/`,
//! each commit carrying the Delta application transaction `(streampulse.copy, k)` and made only
//! when that table's transaction version is below `k`, read from the very snapshot the commit
//! is built on (delta-rs does not compare them itself, delta-rs#2580). A batch is done when
//! `history/` holds `k`; a plan not done is redone before a new one is made. The set of files
//! the ledger knows is the union of the plans: a file in a plan is never planned again
//! (unless `FORCE`), whether or not its batch has committed yet.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::storage::Warehouse;

/// Where ledgers live, under the warehouse root.
pub const INGEST_ROOT: &str = "_ingest";
/// The Delta application id of every ingest commit.
pub const APP_ID: &str = "streampulse.copy";

/// A file as listed when it was planned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlannedFile {
    /// The file's full name: the location as written plus the path below it.
    pub file: String,
    /// The object-store path (for reading it back).
    pub path: String,
    pub size: u64,
    pub e_tag: Option<String>,
    /// RFC 3339.
    pub last_modified: String,
}

impl PlannedFile {
    /// What makes a file the same file: path, size and etag.
    pub fn key(&self) -> (String, u64, Option<String>) {
        (self.path.clone(), self.size, self.e_tag.clone())
    }
}

/// One batch, immutable once written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub batch: i64,
    /// `schema.table` when planned.
    pub table: String,
    pub pipe: Option<String>,
    /// The statement, parsed again to redo the batch.
    pub copy_sql: String,
    pub files: Vec<PlannedFile>,
    /// RFC 3339.
    pub planned_at: String,
    /// `host:pid:instance` of the planner.
    pub owner: String,
}

/// What this process knows of one table's ledger.
#[derive(Debug, Default)]
pub struct LedgerState {
    /// The next batch number to claim.
    pub next: i64,
    /// Every file in any plan.
    pub seen: HashSet<(String, u64, Option<String>)>,
    /// Plans not yet known to be done.
    pub pending: BTreeMap<i64, Plan>,
    /// The last plan key read.
    last_key: Option<String>,
}

/// One table's ledger.
#[derive(Debug)]
pub struct Ledger {
    warehouse: Warehouse,
    root: String,
    /// Held while a batch of this table is planned or committed by this process.
    pub state: tokio::sync::Mutex<LedgerState>,
}

fn batch_key(k: i64) -> String {
    format!("{k:020}.json")
}

impl Ledger {
    pub fn new(warehouse: Warehouse, table_location: &str) -> Self {
        Self {
            warehouse,
            root: format!("{INGEST_ROOT}/{}", table_location.trim_matches('/')),
            state: tokio::sync::Mutex::new(LedgerState { next: 1, ..Default::default() }),
        }
    }

    /// Read plans made since the last call (by anyone).
    pub async fn catch_up(&self, state: &mut LedgerState) -> Result<()> {
        let prefix = self.warehouse.path(&format!("{}/batches", self.root));
        let store = self.warehouse.store();
        let listing = match &state.last_key {
            Some(after) => store.list_with_offset(Some(&prefix), &prefix.clone().join(after.as_str())),
            None => store.list(Some(&prefix)),
        };
        let mut keys: Vec<object_store::path::Path> = listing
            .try_filter(|m| futures::future::ready(m.location.filename().is_some_and(|f| f.ends_with(".json"))))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        keys.sort();
        for key in keys {
            let bytes = store.get(&key).await?.bytes().await?;
            let plan: Plan = serde_json::from_slice(&bytes)
                .map_err(|e| Error::internal(format!("ledger plan {key} is unreadable: {e}")))?;
            for f in &plan.files {
                state.seen.insert(f.key());
            }
            state.next = state.next.max(plan.batch + 1);
            state.last_key = key.filename().map(str::to_string);
            state.pending.insert(plan.batch, plan);
        }
        Ok(())
    }

    /// Write `plan` create-only; `Ok(false)` when another ingester already owns its number.
    pub async fn claim(&self, plan: &Plan) -> Result<bool> {
        let path = self.warehouse.path(&format!("{}/batches/{}", self.root, batch_key(plan.batch)));
        let body = serde_json::to_vec_pretty(plan).map_err(|e| Error::internal(e.to_string()))?;
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.warehouse.store().put_opts(&path, PutPayload::from(body), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The ledger's Delta table `name` (`history` or `errors`), created when missing.
    pub async fn table(&self, name: &str, schema: &SchemaRef) -> Result<DeltaTable> {
        open_or_create(&self.warehouse, &format!("{}/{name}", self.root), schema).await
    }

    /// The ledger's Delta table `name` if it exists.
    pub async fn existing_table(&self, name: &str) -> Result<Option<DeltaTable>> {
        existing(&self.warehouse, &format!("{}/{name}", self.root)).await
    }
}

/// The Delta table at `location` if it has a log.
pub async fn existing(warehouse: &Warehouse, location: &str) -> Result<Option<DeltaTable>> {
    let log = warehouse.path(&format!("{location}/_delta_log"));
    let mut listing = warehouse.store().list(Some(&log));
    if futures::StreamExt::next(&mut listing).await.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::delta::open_table(warehouse, location).await?))
}

async fn open_or_create(warehouse: &Warehouse, location: &str, schema: &SchemaRef) -> Result<DeltaTable> {
    if let Some(t) = existing(warehouse, location).await? {
        return Ok(t);
    }
    use deltalake::kernel::StructType;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let delta_schema: StructType =
        schema.as_ref().try_into_kernel().map_err(|e| Error::internal(format!("ledger schema: {e}")))?;
    let url = warehouse.url(location)?;
    if let Ok(dir) = url.to_file_path() {
        std::fs::create_dir_all(&dir)?;
    }
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_location(url.to_string())
        .with_storage_options(warehouse.storage_options())
        .with_columns(delta_schema.fields().cloned())
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another ingester created it first.
        Err(e) => match existing(warehouse, location).await? {
            Some(t) => Ok(t),
            None => Err(e.into()),
        },
    }
}

/// The transaction version of [`APP_ID`] in `table`'s loaded snapshot.
pub async fn txn_version(table: &DeltaTable) -> Result<i64> {
    Ok(table.snapshot()?.transaction_version(table.log_store().as_ref(), APP_ID).await?.unwrap_or(0))
}

/// Rows of `batches` (in the table's own schema) written as new files of `table`, without
/// committing them.
pub async fn write_files(table: &DeltaTable, batches: Vec<RecordBatch>) -> Result<Vec<Action>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(Vec::new());
    }
    let mut writer = RecordBatchWriter::for_table(table)?;
    for b in batches {
        if b.num_rows() > 0 {
            writer.write(b).await?;
        }
    }
    Ok(writer.flush().await?.into_iter().map(Action::Add).collect())
}

/// Commit `actions` to `table` as batch `k` unless the table already holds `k`; returns the
/// version that holds it. `dense`: every batch commits here, so the table must hold `k - 1`.
/// A conflict (another ingester, an INSERT OVERWRITE) reloads the
/// table and checks again, so the same files are committed at most once.
pub async fn commit_once(
    table: &mut DeltaTable,
    k: i64,
    query_id: &str,
    actions: Vec<Action>,
    info: serde_json::Value,
    dense: bool,
) -> Result<(i64, bool)> {
    let mut attempt = 0;
    loop {
        let held = txn_version(table).await?;
        if held >= k {
            return Ok((table.version().unwrap_or(0) as i64, false));
        }
        if dense && held != k - 1 {
            return Err(Error::internal(format!(
                "ingest ledger out of order: committing batch {k} on a table that holds batch {held}"
            )));
        }
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(APP_ID, k))
            .with_cleanup_expired_logs(Some(false))
            .with_metadata([("streampulse".to_string(), info.clone())]);
        let operation =
            DeltaOperation::StreamingUpdate { output_mode: OutputMode::Append, query_id: query_id.into(), epoch_id: k };
        let result = CommitBuilder::from(properties)
            .with_actions(actions.clone())
            .build(Some(table.snapshot()?), table.log_store(), operation)
            .await;
        match result {
            Ok(done) => return Ok((done.version as i64, true)),
            Err(e) if attempt < 20 => {
                attempt += 1;
                debug!(batch = k, attempt, error = %e, "ingest commit conflicted; checking again");
                if attempt > 3 {
                    warn!(batch = k, attempt, error = %e, "ingest commit keeps conflicting");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt as u64)).await;
                table.update_state().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Columns of `history/` (`system.copy_history`).
pub fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, true),
        Field::new("pipe", DataType::Utf8, true),
        Field::new("batch", DataType::Int64, true),
        Field::new("file", DataType::Utf8, true),
        Field::new("size", DataType::Int64, true),
        Field::new("e_tag", DataType::Utf8, true),
        Field::new("last_modified", ts(), true),
        Field::new("status", DataType::Utf8, true),
        Field::new("rows_loaded", DataType::Int64, true),
        Field::new("rows_rejected", DataType::Int64, true),
        Field::new("first_error", DataType::Utf8, true),
        Field::new("first_error_line", DataType::Int64, true),
        Field::new("first_error_column", DataType::Utf8, true),
        Field::new("loaded_at", ts(), true),
        Field::new("commit_version", DataType::Int64, true),
    ]))
}

/// Columns of `errors/` (`system.load_errors`).
pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, true),
        Field::new("pipe", DataType::Utf8, true),
        Field::new("batch", DataType::Int64, true),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::Int64, true),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("raw", DataType::Utf8, true),
        Field::new("loaded_at", ts(), true),
    ]))
}
