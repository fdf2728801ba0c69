//! Keeping a continuously loaded table fast: every batch adds small files and a log entry, so
//! the pipe service periodically compacts them (each partition's small files rewritten into one
//! in a commit of its own: readers keep their snapshot, a concurrent writer of the same files
//! conflicts and retries, see [`compact`]), writes a checkpoint, and cleans up expired log
//! entries — work that ingest commits skip (`cleanup_expired_logs = false`: deltalake would
//! otherwise list the whole `_delta_log` on every commit). The same is done for the ledger's
//! `history/` and `errors/` tables. Orphan files of crashed batches are never visible (they
//! are in no commit); a full `VACUUM`, less often, removes them once older than the table's
//! retention.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::ledger::INGEST_ROOT;
use crate::error::Result;
use crate::session::Engine;

/// What one maintenance pass did to one table.
#[derive(Debug, Default, Clone)]
pub struct Maintained {
    pub files_removed: u64,
    pub files_added: u64,
    pub logs_cleaned: usize,
    pub files_vacuumed: u64,
}

impl Engine {
    /// Compact, checkpoint and clean the logs of the table at `location` and of its ledger;
    /// with `vacuum`, also remove files no commit references (see [`vacuum_orphans`]).
    pub async fn maintain_ingested(&self, location: &str, vacuum: bool) -> Result<Maintained> {
        let started = Instant::now();
        let mut total = Maintained::default();
        let root = format!("{INGEST_ROOT}/{}", location.trim_matches('/'));
        for (what, at) in [
            ("table", location.to_string()),
            ("history", format!("{root}/history")),
            ("errors", format!("{root}/errors")),
        ] {
            let Some(table) = super::ledger::existing(self.warehouse(), &at).await? else { continue };
            match compact(table).await {
                Ok(m) => {
                    total.files_removed += m.files_removed;
                    total.files_added += m.files_added;
                    total.logs_cleaned += m.logs_cleaned;
                }
                Err(e) => {
                    warn!(location = %at, what, error = %e, "maintenance of an ingested table failed; retried later")
                }
            }
            if vacuum {
                match vacuum_orphans(self, &at).await {
                    Ok(n) => total.files_vacuumed += n,
                    Err(e) => {
                        warn!(location = %at, what, error = %e, "vacuum of an ingested table failed; retried later")
                    }
                }
            }
        }
        info!(
            location,
            files_removed = total.files_removed,
            files_added = total.files_added,
            logs_cleaned = total.logs_cleaned,
            files_vacuumed = total.files_vacuumed,
            seconds = started.elapsed().as_secs_f64(),
            "ingest maintenance done"
        );
        Ok(total)
    }
}

/// `VACUUM` in full mode at the table's own retention (`delta.deletedFileRetentionDuration`,
/// 7 days unless set, enforced): files no commit references any more — compacted-away ones,
/// and the orphans of batches a crash cut off before their commit — once older than that.
async fn vacuum_orphans(engine: &Engine, location: &str) -> Result<u64> {
    let table = crate::delta::open_table(engine.warehouse(), location).await?;
    let (_, metrics) = table
        .vacuum()
        .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
        .with_enforce_retention_duration(true)
        .await?;
    Ok(metrics.files_deleted.len() as u64)
}

/// A partition's values, sorted by column.
type PartitionKey = Vec<(String, Option<String>)>;

/// A partition is compacted once it holds this many files smaller than [`SMALL_FILE`].
const MIN_FILES: usize = 4;
const SMALL_FILE: i64 = 32 << 20;
/// Most bytes compacted into one file.
const MAX_BIN: i64 = 128 << 20;

/// Compact each partition's small files into one, as an ordinary data-changing rewrite.
///
/// deltalake's own OPTIMIZE commits its removes with `dataChange = false`, and delta-rs
/// 1.1.3's conflict checker ignores such removes when it checks a concurrent DELETE,
/// UPDATE, MERGE or INSERT OVERWRITE of the same files (`check_for_deleted_files_against_
/// current_txn_deleted_files` filters on `data_change`): both commit, and the compacted copy
/// brings the rewritten rows back — duplicates (the same hole as delta-io/delta#7163 in
/// Kernel). Committed as a `WRITE` with a partition predicate and `dataChange = true`, every
/// pairing conflicts as it should: an append to the partition or a DML on the same files
/// makes whichever commits second fail and retry, and pipes' appends rebase (see
/// `ledger::commit_once`).
async fn compact(mut table: deltalake::DeltaTable) -> Result<Maintained> {
    use std::collections::BTreeMap;

    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::{Action, Remove};
    use deltalake::protocol::{DeltaOperation, SaveMode};
    use object_store::ObjectStoreExt;

    let mut total = Maintained::default();
    let snapshot = table.snapshot()?.clone();
    let mut partitions: BTreeMap<PartitionKey, Vec<(object_store::path::Path, i64, Remove)>> = BTreeMap::new();
    for file in snapshot.log_data() {
        if file.size() >= SMALL_FILE || file.deletion_vector_descriptor().is_some() {
            continue;
        }
        let mut key: Vec<(String, Option<String>)> = file.partition_values_map().into_iter().collect();
        key.sort();
        partitions.entry(key).or_default().push((file.object_store_path(), file.size(), file.remove_action(true)));
    }
    let store = table.object_store();
    for (values, mut files) in partitions {
        if files.len() < MIN_FILES {
            continue;
        }
        files.sort_by_key(|f| f.1);
        let mut bin = Vec::new();
        let mut bytes = 0i64;
        for f in files {
            if bytes + f.1 > MAX_BIN && !bin.is_empty() {
                break;
            }
            bytes += f.1;
            bin.push(f);
        }
        if bin.len() < MIN_FILES {
            continue;
        }
        let writer = deltalake::writer::RecordBatchWriter::for_table(&table)?;
        let schema = writer.arrow_schema();
        let mut batches = Vec::new();
        for (path, _, _) in &bin {
            let data = store.get(path).await?.bytes().await?;
            let reader =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?.build()?;
            for batch in reader {
                let batch = with_partition_values(batch?, &values)?;
                batches.push(super::decode::to_target(&batch, &schema).map_err(crate::error::Error::internal)?);
            }
        }
        let mut actions = super::ledger::write_files(&table, batches).await?;
        actions.extend(bin.iter().map(|(_, _, remove)| Action::Remove(remove.clone())));
        let predicate = values
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("\"{k}\" = '{}'", v.replace('\'', "''")),
                None => format!("\"{k}\" IS NULL"),
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: (!predicate.is_empty()).then_some(predicate),
        };
        let properties = CommitProperties::default().with_cleanup_expired_logs(Some(false)).with_max_retries(0);
        let result = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(&snapshot), table.log_store(), operation)
            .await;
        match result {
            Ok(_) => {
                total.files_removed += bin.len() as u64;
                total.files_added += 1;
            }
            // Lost to a concurrent write of the partition: try again at the next pass.
            Err(e) => debug!(error = %e, "compaction of a partition conflicted; skipped"),
        }
    }
    table.update_state().await?;
    if total.files_removed > 0 {
        deltalake::checkpoints::create_checkpoint(&table, None).await?;
    }
    total.logs_cleaned = deltalake::checkpoints::cleanup_metadata(&table, None).await?;
    Ok(total)
}

/// `batch` (a data file's columns) with the partition columns added as text.
fn with_partition_values(
    batch: arrow::array::RecordBatch,
    values: &[(String, Option<String>)],
) -> Result<arrow::array::RecordBatch> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (k, v) in values {
        fields.push(Field::new(k, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(vec![v.as_deref(); batch.num_rows()])));
    }
    Ok(arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}
