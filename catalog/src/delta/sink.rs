//! How a managed table's rows are written: the Parquet settings of every data file, and the
//! sink `INSERT INTO` and `CREATE TABLE AS` write through.
//!
//! deltalake's own sink writes with its fixed defaults (no bloom filters).
//! A key lookup on a table partitioned by something else must then decode a page of every
//! file, dictionary included (`bench/RESULTS.md`, "Key lookups"). Files written here carry a
//! bloom filter per row group for every integer, string and binary column, so a lookup skips
//! the row groups that cannot hold its key. Everything else (row groups, file sizes,
//! statistics, the commit) is deltalake's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::datasource::sink::DataSink;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::delta_datafusion::DataFusionMixins;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, EagerSnapshot};
use deltalake::logstore::LogStoreRef;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use futures::{StreamExt, TryStreamExt};

/// Rows per row group of a managed table's files: parquet's and deltalake's default. 128 Ki
/// (about DuckDB's 122,880) made TPC-H SF 1 10 % slower and its load 20 % slower
/// (`bench/RESULTS.md`), so it stays.
const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Largest dictionary page of a column chunk (parquet's default is 1 MiB). A column with more
/// distinct values than fit falls back to plain pages: a key or name column of a lookup table,
/// whose dictionary a lookup would otherwise decompress and decode whole for one row (0.4–0.8 MB
/// per column of a 50,000-row file). Low-cardinality columns (dates, countries, flags) keep
/// their dictionaries.
const DICTIONARY_PAGE_BYTES: usize = 64 * 1024;

/// Rows per data page at most (parquet's default is 20,000): the page index then narrows a
/// lookup to 8 Ki rows of each column. With [`DICTIONARY_PAGE_BYTES`] this took a lookup's
/// server CPU from 5.9 to 4.5 ms, TPC-H SF 1 from 3.19 to 3.00 s and its load from 5.1 to
/// 4.1 s, for 3 % more bytes (`bench/RESULTS.md`).
const PAGE_ROWS: usize = 8192;

/// The Parquet settings for a managed table's data files whose columns (partition columns left
/// out) are `file_schema`: Snappy and [`ROW_GROUP_ROWS`] rows per row group as deltalake
/// writes, pages of [`PAGE_ROWS`] rows and dictionaries of [`DICTIONARY_PAGE_BYTES`] at most,
/// and a bloom filter (5 % false positives) on each top-level integer, string and
/// binary column, the types equality lookups use. A filter is sized for
/// [`BLOOM_FILTER_MAX_NDV`] distinct values while the row group is written and folded to the
/// distinct values it got when it is closed. Floats, dates, decimals,
/// timestamps, booleans and nested columns get none: they are compared by range, which the
/// row-group and page statistics already answer.
fn writer_properties(file_schema: &Schema) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_created_by(format!("streampulse {} (delta-rs)", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_data_page_row_count_limit(PAGE_ROWS);
    for field in file_schema.fields() {
        if has_bloom_filter(field.data_type()) {
            let column = ColumnPath::from(field.name().as_str());
            builder = builder
                .set_column_bloom_filter_enabled(column.clone(), true)
                .set_column_bloom_filter_max_ndv(column, BLOOM_FILTER_MAX_NDV);
        }
    }
    builder.build()
}

fn has_bloom_filter(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
        )
}

/// [`writer_properties`] for the files of `table` at its loaded version: what deltalake's
/// write, update, delete and merge builders are given.
pub fn table_writer_properties(table: &deltalake::DeltaTable) -> deltalake::DeltaResult<WriterProperties> {
    Ok(snapshot_writer_properties(table.snapshot()?.snapshot()))
}

/// [`writer_properties`] for the files of the table at `snapshot`.
fn snapshot_writer_properties(snapshot: &EagerSnapshot) -> WriterProperties {
    let partition_columns = snapshot.metadata().partition_columns();
    writer_properties(&file_schema(&snapshot.read_schema(), partition_columns))
}

/// The file schema of a table: its columns without the partition columns.
fn file_schema(table_schema: &Schema, partition_columns: &[String]) -> Schema {
    Schema::new(
        table_schema.fields().iter().filter(|f| !partition_columns.contains(f.name())).cloned().collect::<Vec<_>>(),
    )
}

/// A managed table's `INSERT INTO` / `CREATE TABLE AS` sink: deltalake's `DeltaDataSink`
/// (same writer, statistics and commit) writing files with [`writer_properties`]. Only for
/// tables without column mapping (the plain tables of `ManagedTable`).
#[derive(Debug)]
pub struct ManagedSink {
    log_store: LogStoreRef,
    snapshot: EagerSnapshot,
    save_mode: SaveMode,
    schema: SchemaRef,
    metrics: ExecutionPlanMetricsSet,
}

impl ManagedSink {
    /// A sink appending to (or, with [`SaveMode::Overwrite`], replacing) the table at
    /// `snapshot`'s version.
    pub fn new(log_store: LogStoreRef, snapshot: EagerSnapshot, save_mode: SaveMode) -> Self {
        Self { log_store, schema: snapshot.read_schema(), snapshot, save_mode, metrics: ExecutionPlanMetricsSet::new() }
    }
}

impl DisplayAs for ManagedSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ManagedSink")
    }
}

/// Distinct values per row group a bloom filter is sized for (64 KiB at 5 %): a lookup table's
/// row groups fit, a fact table's row groups of 1 Mi rows overflow it and get a filter that
/// prunes little. Sized for the whole row group (1 MiB per column), the filters of a 30-day,
/// 10-column load are 300 MiB of random writes, and the SF 1 load took 1.6x as long.
const BLOOM_FILTER_MAX_NDV: u64 = 64 * 1024;

/// Batches queued between the rows' producer and the encoding task.
const WRITE_QUEUE_BATCHES: usize = 4;

/// Sets its flag when dropped: a statement dropped mid-write (cancelled) tells the encoding task
/// to abort instead of closing files.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl DataSink for ManagedSink {
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, mut data: SendableRecordBatchStream, _context: &Arc<TaskContext>) -> DfResult<u64> {
        let input_schema = self.snapshot.input_schema();
        let table_schema = self.snapshot.read_schema();
        let partition_columns = self.snapshot.metadata().partition_columns().to_vec();
        let stats = WriterStatsConfig::from_config(self.snapshot.table_configuration());
        let props = snapshot_writer_properties(&self.snapshot);
        let target_file_size = self.snapshot.table_configuration().table_properties().target_file_size();
        let config = WriterConfig::new(
            table_schema,
            partition_columns.clone(),
            Some(props),
            Some(target_file_size),
            None,
            stats.num_indexed_cols,
            stats.stats_columns,
        );
        let operation_id = uuid::Uuid::new_v4();
        let mut writer = DeltaWriter::new(self.log_store.object_store(Some(operation_id)), config);
        // Encoding runs in a task of its own, fed through a short queue, so it overlaps with
        // producing the rows (as deltalake's sink does); on one task, a 100 M-row load took
        // 1.7x as long.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(WRITE_QUEUE_BATCHES);
        let failed = Arc::new(AtomicBool::new(false));
        let _abort_on_drop = SetOnDrop(Arc::clone(&failed));
        let writer_failed = Arc::clone(&failed);
        let encoder = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                if let Err(e) = writer.write(&batch).await {
                    let _ = writer.abort().await;
                    return Err(external(e));
                }
            }
            if writer_failed.load(Ordering::SeqCst) {
                // The input failed or the statement was cancelled: files already complete
                // are orphans no commit names (VACUUM removes them).
                let _ = writer.abort().await;
                return Ok(None);
            }
            writer.close().await.map(Some).map_err(external)
        });
        let rows_metric = MetricBuilder::new(&self.metrics).counter("total_rows", 0);
        let mut rows = 0u64;
        let produced: DfResult<()> = async {
            while let Some(batch) = data.next().await {
                let batch =
                    deltalake::cast_record_batch(&batch?, Arc::clone(&input_schema), false, true).map_err(external)?;
                rows += batch.num_rows() as u64;
                rows_metric.add(batch.num_rows());
                if tx.send(batch).await.is_err() {
                    break; // the encoder failed: its error is the one returned below
                }
            }
            Ok(())
        }
        .await;
        if produced.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        drop(tx);
        let encoded = encoder.await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        produced?;
        let Some(adds) = encoded? else {
            return Err(DataFusionError::Internal("the table writer stopped without an error".into()));
        };
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        if self.save_mode == SaveMode::Overwrite {
            actions.extend(
                self.snapshot
                    .file_views(&self.log_store, None)
                    .map_ok(|f| Action::Remove(f.remove_action(true)))
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(external)?,
            );
        }
        let operation = DeltaOperation::Write {
            mode: self.save_mode,
            partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
            predicate: None,
        };
        CommitBuilder::default()
            .with_actions(actions)
            .with_operation_id(operation_id)
            .build(Some(&self.snapshot), Arc::clone(&self.log_store), operation)
            .await
            .map_err(external)?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;

    use super::*;

    #[test]
    fn bloom_filters_go_on_the_columns_lookups_compare_for_equality() {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("balance", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None), true),
        ]);
        let props = writer_properties(&schema);
        let has = |c: &str| props.bloom_filter_properties(&ColumnPath::from(c)).is_some();
        assert!(has("user_id") && has("name"));
        assert!(!has("balance") && !has("ts"));
        let ndv = props.bloom_filter_properties(&ColumnPath::from("user_id")).unwrap().ndv();
        assert_eq!(ndv, BLOOM_FILTER_MAX_NDV);
        assert_eq!(props.max_row_group_row_count(), Some(ROW_GROUP_ROWS));
        assert_eq!(props.data_page_row_count_limit(), PAGE_ROWS);
        assert_eq!(props.dictionary_page_size_limit(), DICTIONARY_PAGE_BYTES);
        let files = file_schema(&schema, &["name".to_string()]);
        assert_eq!(files.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["user_id", "balance", "ts"]);
    }
}
