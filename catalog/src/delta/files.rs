//! A managed table read as plain Parquet: the Delta snapshot is resolved once per version into
//! its data files, with their partition values and statistics, and every scan of that version
//! is a DataFusion Parquet scan of the files that can match.
//!
//! deltalake's own provider replays the snapshot's file actions (and parses their statistics)
//! on every scan, a fixed cost of tens of milliseconds that dominates a key lookup. Here that
//! work happens when a version is first opened; a scan is file pruning on arrays already built,
//! then the same `DataSourceExec` a listing table would plan. Plain Parquet scans are also what
//! a remote executor can run without knowing Delta.
//!
//! Only tables whose files are plain Parquet qualify: a protocol with reader features that
//! change how files are read (deletion vectors, column mapping, ...) is read by deltalake's
//! provider, as are files outside the table's store. The file list also travels to a cluster
//! as bytes ([`ManagedTable::file_list`], [`FileListTable`]). `INSERT INTO` and `CREATE TABLE AS`
//! write through [`ManagedSink`]: deltalake's writer with the warehouse's Parquet settings, one
//! Delta commit per statement.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion_proto::protobuf;
use deltalake::DeltaTable;
use deltalake::kernel::EagerSnapshot;
use deltalake::logstore::LogStoreRef;
use deltalake::protocol::SaveMode;
use object_store::ObjectMeta;
use object_store::path::Path;
use tracing::debug;
use url::Url;

use super::reader::ManagedFileReaderFactory;
use super::sink::ManagedSink;
use crate::error::{Error, Result};

/// A managed table at one Delta version: plain Parquet scans where the table allows them,
/// deltalake's provider otherwise; writes through [`ManagedSink`] where scans are plain.
#[derive(Debug)]
pub struct ManagedTable {
    delta: Arc<dyn TableProvider>,
    files: Option<Arc<TableFiles>>,
    /// Where and at which version [`ManagedSink`] writes, for plain tables.
    writes: Option<(LogStoreRef, EagerSnapshot)>,
}

impl ManagedTable {
    /// Resolve `table`'s current version (already loaded with its files) into its data files.
    /// `delta` is deltalake's provider at the same version: its schema is the table's schema.
    pub fn new(table: &DeltaTable, delta: Arc<dyn TableProvider>) -> Result<Self> {
        let files = match TableFiles::resolve(table, delta.schema())? {
            Ok(files) => Some(Arc::new(files)),
            Err(reason) => {
                debug!(table = %table.table_url(), reason, "read through deltalake's provider");
                None
            }
        };
        let writes = match files {
            Some(_) => Some((table.log_store(), table.snapshot()?.snapshot().clone())),
            None => None,
        };
        Ok(Self { delta, files, writes })
    }

    /// Whether scans are plain Parquet scans (false: deltalake's provider reads the table).
    pub fn plain(&self) -> bool {
        self.files.is_some()
    }

    /// This version's file list as bytes, which [`FileListTable::from_bytes`] turns back into a
    /// table that scans the same files; `None` when the table needs deltalake's reader.
    pub fn file_list(&self) -> Option<Result<Vec<u8>>> {
        self.files.as_ref().map(|f| f.to_bytes())
    }
}

/// A table version as a fixed list of Parquet files with their partition values and
/// statistics, decoded from [`ManagedTable::file_list`]: how a cluster node that plans a scan
/// reads a managed table without the Delta log. It only reads.
#[derive(Debug)]
pub struct FileListTable {
    files: TableFiles,
}

impl FileListTable {
    /// The table from the bytes of [`ManagedTable::file_list`] (or [`FileListTable::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self { files: TableFiles::from_bytes(bytes)? })
    }

    /// The same bytes again, for a node that passes the plan on.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.files.to_bytes()
    }

    /// Data files in the list.
    pub fn file_count(&self) -> usize {
        self.files.files.len()
    }
}

#[async_trait]
impl TableProvider for FileListTable {
    fn schema(&self) -> SchemaRef {
        self.files.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.files.scan(state, projection, filters, limit).await
    }
}

/// [`TableFiles`] on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct FilesMessage {
    #[prost(message, optional, tag = "1")]
    schema: Option<protobuf::Schema>,
    #[prost(string, repeated, tag = "2")]
    partition_columns: Vec<String>,
    #[prost(string, tag = "3")]
    store: String,
    #[prost(message, repeated, tag = "4")]
    files: Vec<protobuf::PartitionedFile>,
}

#[async_trait]
impl TableProvider for ManagedTable {
    fn schema(&self) -> SchemaRef {
        self.delta.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        match &self.files {
            // Filters prune files here and row groups in the Parquet scan; rows are still
            // filtered above the scan, so every filter is inexact.
            Some(_) => Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()]),
            None => self.delta.supports_filters_pushdown(filters),
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match &self.files {
            Some(files) => files.scan(state, projection, filters, limit).await,
            None => self.delta.scan(state, projection, filters, limit).await,
        }
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (Some((log_store, snapshot)), InsertOp::Append | InsertOp::Overwrite) = (&self.writes, insert_op) else {
            return self.delta.insert_into(state, input, insert_op).await;
        };
        let mode = if insert_op == InsertOp::Append { SaveMode::Append } else { SaveMode::Overwrite };
        let sink = ManagedSink::new(Arc::clone(log_store), snapshot.clone(), mode);
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// The data files of one table version, ready to scan.
#[derive(Debug)]
struct TableFiles {
    /// The table's schema (deltalake's provider's).
    schema: SchemaRef,
    store: ObjectStoreUrl,
    /// Columns stored in the files (table order, partition columns left out), then the
    /// partition columns: the layout of a Parquet scan.
    layout: TableSchema,
    /// For each column of `schema`, its index in `layout`.
    to_layout: Vec<usize>,
    files: Vec<PartitionedFile>,
    /// Per column of `layout`, bounds over the files, for pruning.
    bounds: FileBounds,
}

impl TableFiles {
    /// The files of `table`'s loaded version, or why the table must be read by deltalake.
    fn resolve(table: &DeltaTable, schema: SchemaRef) -> Result<std::result::Result<Self, &'static str>> {
        let snapshot = table.snapshot()?;
        let protocol = snapshot.protocol();
        // Reader version 2 is column mapping; from version 3 the features are listed. Some only
        // concern types or the log, not how data files are read: a TIMESTAMP without time zone
        // (`timestampNtz`, which every table with one has), v2 checkpoints, vacuum checks.
        let plain_features = ["timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"];
        if protocol.min_reader_version() == 2
            || protocol
                .reader_features()
                .is_some_and(|f| f.iter().any(|f| !plain_features.contains(&f.to_string().as_str())))
        {
            return Ok(Err("the table uses reader features (column mapping, deletion vectors, ...)"));
        }
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let root = table.table_url().clone();
        let Some(store) = store_url(&root) else {
            return Ok(Err("the table's URL has no object store root"));
        };

        let actions = snapshot.add_actions_table(true)?;
        let rows = actions.num_rows();
        let paths = string_column(&actions, "path")?;
        let sizes = int_column(&actions, "size_bytes")?;
        let modified = int_column(&actions, "modification_time")?;
        let num_records = actions.column_by_name("num_records");

        // Stored columns in table order, then the partition columns: the scan's layout.
        let mut columns: Vec<ColumnBounds> = Vec::with_capacity(schema.fields().len());
        let (stored, partitions): (Vec<&FieldRef>, Vec<&FieldRef>) =
            schema.fields().iter().partition(|f| !partition_columns.contains(f.name()));
        for field in &stored {
            columns.push(ColumnBounds::stored(&actions, field));
        }
        for field in &partitions {
            columns.push(ColumnBounds::partition(&actions, field)?);
        }
        let mut files = Vec::with_capacity(rows);
        for row in 0..rows {
            let Some(path) = object_path(&root, &paths[row]) else {
                return Ok(Err("a data file lies outside the table's object store"));
            };
            let num_rows = num_records.and_then(|c| scalar_at(c.as_ref(), row)).and_then(|v| match v {
                ScalarValue::Int64(Some(n)) => usize::try_from(n).ok(),
                _ => None,
            });
            let column_statistics = columns.iter().map(|c| c.statistics(row, num_rows)).collect();
            let statistics = Statistics {
                num_rows: num_rows.map_or(Precision::Absent, Precision::Exact),
                total_byte_size: Precision::Inexact(sizes[row] as usize),
                column_statistics,
            };
            let partition_values = columns[stored.len()..].iter().map(|c| c.min[row].clone()).collect::<Vec<_>>();
            // The path as is: `PartitionedFile::new` would encode it a second time.
            let last_modified = chrono::DateTime::from_timestamp_millis(modified[row] as i64).unwrap_or_default();
            let meta = ObjectMeta { location: path, last_modified, size: sizes[row], e_tag: None, version: None };
            files.push(
                PartitionedFile::new_from_meta(meta)
                    .with_partition_values(partition_values)
                    .with_statistics(Arc::new(statistics)),
            );
        }
        Ok(Ok(Self::from_files(schema, &partition_columns, store, files)?))
    }

    /// The table over `files`, each with its partition values and statistics in scan layout
    /// (stored columns, then `partition_columns`, in `schema`'s order).
    fn from_files(
        schema: SchemaRef,
        partition_columns: &[String],
        store: ObjectStoreUrl,
        files: Vec<PartitionedFile>,
    ) -> Result<Self> {
        let (stored, partitions): (Vec<FieldRef>, Vec<FieldRef>) =
            schema.fields().iter().cloned().partition(|f| !partition_columns.contains(f.name()));
        if partitions.len() != partition_columns.len() {
            return Err(Error::internal(format!(
                "partition columns {partition_columns:?} are not all in the table's schema"
            )));
        }
        let layout = TableSchema::builder(Arc::new(Schema::new(stored))).with_table_partition_cols(partitions).build();
        let layout_schema = layout.table_schema().clone();
        let to_layout = schema
            .fields()
            .iter()
            .map(|f| layout_schema.index_of(f.name()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let bounds = FileBounds::new(&layout_schema, &files);
        Ok(Self { schema, store, layout, to_layout, files, bounds })
    }

    /// The files as bytes (schema, partition columns, store and every file with its partition
    /// values and statistics, in DataFusion's protobuf messages): what a cluster node needs to
    /// scan this version without reading the Delta log.
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let files =
            self.files.iter().map(protobuf::PartitionedFile::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
        let message = FilesMessage {
            schema: Some(
                protobuf::Schema::try_from(self.schema.as_ref()).map_err(datafusion::error::DataFusionError::from)?,
            ),
            partition_columns: self.layout.table_partition_cols().iter().map(|f| f.name().clone()).collect(),
            store: self.store.as_str().to_string(),
            files,
        };
        Ok(prost::Message::encode_to_vec(&message))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let message: FilesMessage = prost::Message::decode(bytes)
            .map_err(|e| Error::internal(format!("a table's file list does not decode: {e}")))?;
        let schema = message.schema.as_ref().ok_or_else(|| Error::internal("a table's file list has no schema"))?;
        let schema = Arc::new(Schema::try_from(schema).map_err(datafusion::error::DataFusionError::from)?);
        let store = ObjectStoreUrl::parse(&message.store)?;
        let files = message.files.iter().map(PartitionedFile::try_from).collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_files(schema, &message.partition_columns, store, files)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let keep = self.prune(state, filters);
        let files: Vec<PartitionedFile> =
            self.files.iter().zip(&keep).filter(|(_, k)| **k).map(|(f, _)| f.clone()).collect();
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(&columns)?))));
        }
        let projection = columns.iter().map(|i| self.to_layout[*i]).collect();
        let schema = self.layout.table_schema();
        let mut groups = balanced_groups(files, state.config().target_partitions());
        for group in groups.iter_mut() {
            let merged = Statistics::try_merge_iter(group.iter().filter_map(|f| f.statistics.as_deref()), schema)?;
            *group = FileGroup::new(std::mem::take(group).into_inner()).with_statistics(Arc::new(merged));
        }
        let statistics = Statistics::try_merge_iter(groups.iter().filter_map(|g| g.file_statistics(None)), schema)?;
        // What `ParquetFormat::create_physical_plan` builds, with the managed files' reader.
        let options = state.table_options().parquet.clone();
        let runtime = state.runtime_env();
        let readers = ManagedFileReaderFactory::new(
            self.store.as_str(),
            runtime.object_store(&self.store)?,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let mut source = ParquetSource::new(self.layout.clone())
            .with_table_parquet_options(options.clone())
            .with_parquet_file_reader_factory(Arc::new(readers));
        if let Some(hint) = options.global.metadata_size_hint {
            source = source.with_metadata_size_hint(hint);
        }
        let config = FileScanConfigBuilder::new(self.store.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// Which files can hold rows matching all of `filters` (all of them when the filters
    /// cannot be evaluated against statistics).
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Vec<bool> {
        let all = vec![true; self.files.len()];
        let Some(predicate) = conjunction(filters.iter().cloned()) else {
            return all;
        };
        let schema = self.layout.table_schema().clone();
        let pruned = DFSchema::try_from(schema.as_ref().clone())
            .and_then(|df| state.create_physical_expr(predicate, &df))
            .and_then(|expr| PruningPredicateBuilder::new().with_file_schema(schema).try_build(expr))
            .and_then(|p| p.prune(&self.bounds));
        match pruned {
            Ok(keep) if keep.len() == all.len() => keep,
            Ok(_) => all,
            Err(e) => {
                debug!(error = %e, "filters not usable for file pruning");
                all
            }
        }
    }
}

/// `scheme://authority` of a table URL: the object store DataFusion resolves its files in.
fn store_url(root: &Url) -> Option<ObjectStoreUrl> {
    let base = match root.host_str() {
        Some(host) => format!("{}://{host}", root.scheme()),
        None => format!("{}://", root.scheme()),
    };
    ObjectStoreUrl::parse(base).ok()
}

/// The object-store path of a data file whose log path is `path`: URL-encoded, relative to the
/// table root or an absolute URL (as deltalake reads it: decoded once, the rest is the file's
/// name); `None` for a file in another store.
fn object_path(root: &Url, path: &str) -> Option<Path> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    if let Ok(url) = Url::parse(&decoded) {
        if url.scheme() != root.scheme() || url.host_str() != root.host_str() {
            return None;
        }
        return Path::from_url_path(url.path()).ok();
    }
    let relative = Path::parse(decoded.as_ref()).unwrap_or_else(|_| Path::from(decoded.as_ref()));
    let prefix = Path::from_url_path(root.path()).ok()?;
    Some(Path::from_iter(prefix.parts().chain(relative.parts())))
}

/// Split files into at most `n` groups of about equal bytes (largest first into the lightest).
fn balanced_groups(mut files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.clamp(1, files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for file in files {
        let lightest = groups.iter_mut().min_by_key(|(bytes, _)| *bytes).expect("n >= 1 groups");
        lightest.0 += file.object_meta.size;
        lightest.1.push(file);
    }
    groups.into_iter().filter(|(_, f)| !f.is_empty()).map(|(_, f)| FileGroup::new(f)).collect()
}

/// One column's bounds in every file: min, max (`ScalarValue` nulls where unknown) and null
/// counts, as Delta's statistics give them for stored columns, or the value itself for a
/// partition column.
struct ColumnBounds {
    min: Vec<ScalarValue>,
    max: Vec<ScalarValue>,
    nulls: Vec<Option<u64>>,
    partition: bool,
}

impl ColumnBounds {
    fn stored(actions: &RecordBatch, field: &FieldRef) -> Self {
        let rows = actions.num_rows();
        let name = field.name();
        let min = typed_column(actions, &format!("min.{name}"), field.data_type(), rows);
        let mut max = typed_column(actions, &format!("max.{name}"), field.data_type(), rows);
        // Delta keeps timestamp statistics to the millisecond, truncated: the true maximum may
        // be up to a millisecond above the one stored.
        if let DataType::Timestamp(unit, _) = field.data_type() {
            let ms = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            for v in max.iter_mut() {
                *v = bump(v, ms);
            }
        }
        let nulls = match actions.column_by_name(&format!("null_count.{name}")) {
            Some(c) => (0..rows)
                .map(|r| match scalar_at(c.as_ref(), r) {
                    Some(ScalarValue::Int64(Some(n))) => u64::try_from(n).ok(),
                    _ => None,
                })
                .collect(),
            None => vec![None; rows],
        };
        Self { min, max, nulls, partition: false }
    }

    fn partition(actions: &RecordBatch, field: &FieldRef) -> Result<Self> {
        let rows = actions.num_rows();
        let name = format!("partition.{}", field.name());
        if actions.column_by_name(&name).is_none() && rows > 0 {
            return Err(Error::internal(format!("Delta file actions have no column {name}")));
        }
        let values = typed_column(actions, &name, field.data_type(), rows);
        Ok(Self { min: values.clone(), max: values, nulls: vec![None; rows], partition: true })
    }

    /// A file's statistics for the planner. Stored columns' bounds are inexact (Parquet may
    /// truncate string bounds); a partition column's value is exact.
    fn statistics(&self, row: usize, num_rows: Option<usize>) -> ColumnStatistics {
        let mut stats = ColumnStatistics::new_unknown();
        let (min, max) = (&self.min[row], &self.max[row]);
        if self.partition {
            stats.null_count = match (min.is_null(), num_rows) {
                (true, Some(n)) => Precision::Exact(n),
                (false, _) => Precision::Exact(0),
                (true, None) => Precision::Absent,
            };
            if !min.is_null() {
                stats.min_value = Precision::Exact(min.clone());
                stats.max_value = Precision::Exact(max.clone());
                stats.distinct_count = Precision::Exact(1);
            }
        } else {
            stats.null_count = self.nulls[row].map_or(Precision::Absent, |n| Precision::Exact(n as usize));
            if !min.is_null() {
                stats.min_value = Precision::Inexact(min.clone());
            }
            if !max.is_null() {
                stats.max_value = Precision::Inexact(max.clone());
            }
        }
        stats
    }
}

/// Bounds of every column over the files, as arrays: what `PruningPredicate` reads. Bounds only
/// have to contain every value, which Delta's statistics guarantee.
#[derive(Debug)]
struct FileBounds {
    schema: SchemaRef,
    min: Vec<Option<ArrayRef>>,
    max: Vec<Option<ArrayRef>>,
    nulls: Vec<Option<ArrayRef>>,
    rows: Option<ArrayRef>,
    files: usize,
}

impl FileBounds {
    /// The bounds in `files`' statistics (in `schema`'s order, which is the scan layout).
    fn new(schema: &SchemaRef, files: &[PartitionedFile]) -> Self {
        let statistics: Vec<Option<&Statistics>> = files.iter().map(|f| f.statistics.as_deref()).collect();
        let column = |i: usize| statistics.iter().map(move |s| s.and_then(|s| s.column_statistics.get(i)));
        // All unknown is no statistic; otherwise unknown files are nulls (never pruned).
        let array = |field: &FieldRef, values: Vec<Option<ScalarValue>>| -> Option<ArrayRef> {
            if values.iter().all(|v| v.as_ref().is_none_or(ScalarValue::is_null)) {
                return None;
            }
            let null = ScalarValue::try_from(field.data_type()).ok()?;
            ScalarValue::iter_to_array(values.into_iter().map(|v| v.unwrap_or_else(|| null.clone()))).ok()
        };
        let counts = |values: Vec<Option<u64>>| -> Option<ArrayRef> {
            values.iter().any(Option::is_some).then(|| Arc::new(UInt64Array::from(values)) as ArrayRef)
        };
        let (mut min, mut max, mut nulls) = (Vec::new(), Vec::new(), Vec::new());
        for (i, field) in schema.fields().iter().enumerate() {
            min.push(array(field, column(i).map(|c| c.and_then(|c| c.min_value.get_value().cloned())).collect()));
            max.push(array(field, column(i).map(|c| c.and_then(|c| c.max_value.get_value().cloned())).collect()));
            nulls
                .push(counts(column(i).map(|c| c.and_then(|c| c.null_count.get_value()).map(|n| *n as u64)).collect()));
        }
        let rows =
            counts(statistics.iter().map(|s| s.and_then(|s| s.num_rows.get_value()).map(|n| *n as u64)).collect());
        Self { schema: schema.clone(), min, max, nulls, rows, files: files.len() }
    }

    fn column(&self, column: &Column) -> Option<usize> {
        self.schema.index_of(column.name()).ok()
    }
}

impl PruningStatistics for FileBounds {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.min.get(self.column(column)?)?.clone()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.max.get(self.column(column)?)?.clone()
    }

    fn num_containers(&self) -> usize {
        self.files
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.nulls.get(self.column(column)?)?.clone()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.rows.clone()
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// A column of the file actions as values of `data_type` (nulls where missing or not castable).
fn typed_column(actions: &RecordBatch, name: &str, data_type: &DataType, rows: usize) -> Vec<ScalarValue> {
    let null = ScalarValue::try_from(data_type).unwrap_or(ScalarValue::Null);
    let Some(column) = actions.column_by_name(name) else {
        return vec![null; rows];
    };
    let column = if column.data_type() == data_type {
        column.clone()
    } else {
        match arrow::compute::cast(column, data_type) {
            Ok(c) => c,
            Err(_) => return vec![null; rows],
        }
    };
    (0..rows).map(|r| scalar_at(column.as_ref(), r).unwrap_or_else(|| null.clone())).collect()
}

fn scalar_at(column: &dyn Array, row: usize) -> Option<ScalarValue> {
    ScalarValue::try_from_array(column, row).ok()
}

/// A timestamp raised by `by` units (other values unchanged).
fn bump(v: &ScalarValue, by: i64) -> ScalarValue {
    match v {
        ScalarValue::TimestampSecond(Some(t), tz) => {
            ScalarValue::TimestampSecond(Some(t.saturating_add(by.max(1))), tz.clone())
        }
        ScalarValue::TimestampMillisecond(Some(t), tz) => {
            ScalarValue::TimestampMillisecond(Some(t.saturating_add(by)), tz.clone())
        }
        ScalarValue::TimestampMicrosecond(Some(t), tz) => {
            ScalarValue::TimestampMicrosecond(Some(t.saturating_add(by)), tz.clone())
        }
        ScalarValue::TimestampNanosecond(Some(t), tz) => {
            ScalarValue::TimestampNanosecond(Some(t.saturating_add(by)), tz.clone())
        }
        other => other.clone(),
    }
}

/// A column of the file actions cast to `data_type`.
fn required_column(actions: &RecordBatch, name: &str, data_type: &DataType) -> Result<ArrayRef> {
    let column = actions
        .column_by_name(name)
        .ok_or_else(|| Error::internal(format!("Delta file actions have no column {name}")))?;
    Ok(arrow::compute::cast(column, data_type)?)
}

fn string_column(actions: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let column = required_column(actions, name, &DataType::Utf8)?;
    let strings = arrow::array::AsArray::as_string::<i32>(&column);
    Ok((0..strings.len()).map(|i| strings.value(i).to_string()).collect())
}

fn int_column(actions: &RecordBatch, name: &str) -> Result<Vec<u64>> {
    let column = required_column(actions, name, &DataType::Int64)?;
    let ints = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&column);
    Ok((0..ints.len()).map(|i| u64::try_from(ints.value(i)).unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Planned;
    use crate::{Engine, EngineConfig};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;

    async fn run(engine: &Engine, sql: &str) -> Vec<RecordBatch> {
        let session = engine.session();
        match engine.plan_sql(&session, sql).await.unwrap() {
            Planned::Query(plan) => {
                let physical = session.physical_plan(plan).await.unwrap();
                datafusion::physical_plan::common::collect(session.execute(physical).unwrap()).await.unwrap()
            }
            other => {
                engine.run_command(&session, other).await.unwrap();
                Vec::new()
            }
        }
    }

    async fn text(engine: &Engine, sql: &str) -> String {
        pretty_format_batches(&run(engine, sql).await).unwrap().to_string()
    }

    /// Files the physical plan of `sql` reads (every Parquet scan's file groups), or `None` when
    /// the table was not scanned as plain Parquet.
    async fn files_read(engine: &Engine, sql: &str) -> Option<usize> {
        let session = engine.session();
        let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!("{sql}: not a query") };
        let physical = session.physical_plan(plan).await.unwrap();
        let mut count = None;
        let mut stack = vec![physical];
        while let Some(node) = stack.pop() {
            if let Some(exec) = node.downcast_ref::<DataSourceExec>()
                && let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>()
            {
                *count.get_or_insert(0) += config.file_groups.iter().map(|g| g.len()).sum::<usize>();
            }
            if node.downcast_ref::<EmptyExec>().is_some() {
                count.get_or_insert(0);
            }
            stack.extend(node.children().into_iter().cloned());
        }
        count
    }

    #[tokio::test]
    async fn scans_read_only_the_files_that_can_match_and_answer_as_the_rows_do() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        run(&engine, "CREATE TABLE t (day DATE, k BIGINT, name VARCHAR, ts TIMESTAMP) PARTITIONED BY (day)").await;
        // Four commits: each writes one file per day, with k in its own range of 1,000.
        for c in 0..4 {
            run(
                &engine,
                &format!(
                    "INSERT INTO t SELECT CAST('2026-10-01' AS DATE) + CAST(value % 3 AS INT), value + {c} * 1000, \
                     CASE WHEN value % 7 = 0 THEN NULL ELSE 'n' || CAST(value AS VARCHAR) END, \
                     arrow_cast(1790000000000000 + value * 1000 + 999, 'Timestamp(Microsecond, None)') \
                     FROM generate_series(0, 999)"
                ),
            )
            .await;
        }
        let source = "(SELECT CAST('2026-10-01' AS DATE) + CAST(value % 3 AS INT) AS day, value + c * 1000 AS k, \
                      CASE WHEN value % 7 = 0 THEN NULL ELSE 'n' || CAST(value AS VARCHAR) END AS name, \
                      arrow_cast(1790000000000000 + value * 1000 + 999, 'Timestamp(Microsecond, None)') AS ts \
                      FROM generate_series(0, 999), (SELECT value AS c FROM generate_series(0, 3)))";
        assert_eq!(files_read(&engine, "SELECT * FROM t").await, Some(12));
        let cases = [
            ("day = DATE '2026-10-02'", 4),
            ("k = 2500", 3),
            ("k = 2500 AND day = DATE '2026-10-03'", 1),
            ("k > 100000", 0),
            ("name IS NULL AND k < 1000", 3),
            // The newest timestamp (micros above its millisecond, in day 1 of every commit):
            // Delta keeps the bound to the millisecond, truncated, and the scan must still read
            // the files holding it.
            ("ts >= arrow_cast(1790000000999999, 'Timestamp(Microsecond, None)')", 4),
            ("day IS NULL", 0),
        ];
        for (filter, files) in cases {
            assert_eq!(files_read(&engine, &format!("SELECT * FROM t WHERE {filter}")).await, Some(files), "{filter}");
            let query = |from: &str| format!("SELECT day, k, name, ts FROM {from} WHERE {filter} ORDER BY k");
            assert_eq!(text(&engine, &query("t")).await, text(&engine, &query(source)).await, "{filter}");
        }
        for sql in [
            "SELECT count(*) AS n, count(name) AS names, min(k) AS lo, max(k) AS hi, sum(k) AS total FROM t",
            "SELECT day, count(*) AS n FROM t GROUP BY day ORDER BY day",
        ] {
            assert_eq!(
                text(&engine, sql).await,
                text(&engine, &sql.replace("FROM t", &format!("FROM {source}"))).await,
                "{sql}"
            );
        }
        // A delete rewrites files: the next version's files are read, not the removed ones.
        run(&engine, "DELETE FROM t WHERE k < 500").await;
        assert_eq!(
            text(&engine, "SELECT count(*) AS n, min(k) AS lo FROM t").await,
            text(&engine, "SELECT 3500 AS n, 500 AS lo").await
        );
    }

    #[tokio::test]
    async fn null_partition_values_and_a_partition_column_in_front() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        run(&engine, "CREATE TABLE p (country VARCHAR, id INT, v DOUBLE) PARTITIONED BY (country)").await;
        run(&engine, "INSERT INTO p VALUES ('SE', 1, 1.5), (NULL, 2, 2.5), ('a b/c', 3, 3.5)").await;
        assert_eq!(files_read(&engine, "SELECT * FROM p").await, Some(3));
        assert_eq!(files_read(&engine, "SELECT * FROM p WHERE country IS NULL").await, Some(1));
        assert_eq!(files_read(&engine, "SELECT id FROM p WHERE country = 'a b/c'").await, Some(1));
        let all = text(&engine, "SELECT country, id, v FROM p ORDER BY id").await;
        assert!(all.contains("| SE      | 1  | 1.5 |"), "{all}");
        assert!(all.contains("|         | 2  | 2.5 |"), "{all}");
        assert!(all.contains("| a b/c   | 3  | 3.5 |"), "{all}");
        assert_eq!(
            text(&engine, "SELECT id FROM p WHERE country IS NULL").await,
            text(&engine, "SELECT 2 AS id").await
        );
    }

    /// Runs `sql` and returns its rows as text and the bytes its Parquet scans read through the
    /// file readers (footers are read by the metadata cache, outside this count).
    async fn rows_and_bytes_read(engine: &Engine, sql: &str) -> (String, usize) {
        let session = engine.session();
        let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!("{sql}: not a query") };
        let physical = session.physical_plan(plan).await.unwrap();
        let rows = datafusion::physical_plan::common::collect(session.execute(Arc::clone(&physical)).unwrap());
        let rows = pretty_format_batches(&rows.await.unwrap()).unwrap().to_string();
        let mut bytes = 0;
        let mut stack = vec![physical];
        while let Some(node) = stack.pop() {
            if node.downcast_ref::<DataSourceExec>().is_some() {
                bytes += node.metrics().and_then(|m| m.sum_by_name("bytes_scanned")).map_or(0, |v| v.as_usize());
            }
            stack.extend(node.children().into_iter().cloned());
        }
        (rows, bytes)
    }

    /// A key lookup on files that all span the key range: the first scan reads every file's
    /// bloom filter and caches its page index with its footer; later scans read only the pages
    /// that can hold the key, and still answer exactly (a key that is absent, keys in other
    /// files).
    #[tokio::test]
    async fn lookups_read_bloom_filters_and_page_indexes_once() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        run(
            &engine,
            "CREATE TABLE u PARTITIONED BY (part) AS SELECT value AS k, 'user-' || CAST(value AS VARCHAR) AS name, \
             CAST(value % 4 AS INT) AS part FROM generate_series(1, 40000)",
        )
        .await;
        let lookup = |k: i64| format!("SELECT k, name FROM u WHERE k = {k}");
        let expected = |k: i64| format!("SELECT {k} AS k, 'user-{k}' AS name");
        let (rows, first) = rows_and_bytes_read(&engine, &lookup(12345)).await;
        assert_eq!(rows, text(&engine, &expected(12345)).await);
        let cached: Vec<_> = (engine.session().runtime().cache_manager.get_file_metadata_cache().list_entries())
            .into_iter()
            .filter(|(path, _)| path.as_ref().contains("/public/u-"))
            .collect();
        // DataFusion's metadata cache tells, per entry, whether it holds the page index.
        let with_page_index = cached
            .iter()
            .filter(|(_, e)| e.value.file_metadata.extra_info().get("page_index").is_some_and(|v| v == "true"))
            .count();
        assert_eq!((cached.len(), with_page_index), (4, 4), "{:?}", cached.iter().map(|(p, _)| p).collect::<Vec<_>>());
        let (rows, second) = rows_and_bytes_read(&engine, &lookup(12345)).await;
        assert_eq!(rows, text(&engine, &expected(12345)).await);
        // What the first read and the second did not: the bloom filters on k of four files,
        // each at least 1 KiB for its 10,000 keys.
        assert!(second > 0 && first >= second + 4 * 1024, "first {first} bytes, then {second}");
        assert_eq!(rows_and_bytes_read(&engine, &lookup(12345)).await.1, second);
        for k in [1, 2, 3, 39999, 40000] {
            assert_eq!(rows_and_bytes_read(&engine, &lookup(k)).await.0, text(&engine, &expected(k)).await, "{k}");
        }
        let (rows, _) = rows_and_bytes_read(&engine, "SELECT count(*) AS c FROM u WHERE k = 40001").await;
        assert_eq!(rows, text(&engine, "SELECT 0 AS c").await);
    }

    /// A TIMESTAMP without time zone puts `timestampNtz` in the protocol's reader features: it
    /// changes no file's layout, so the table is still scanned as plain Parquet.
    #[tokio::test]
    async fn timestamps_without_time_zone_are_still_plain_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        run(
            &engine,
            "CREATE TABLE n AS SELECT value AS k, \
             arrow_cast(1790000000000000 + value, 'Timestamp(Microsecond, None)') AS ts FROM generate_series(1, 10)",
        )
        .await;
        let mut protocol = String::new();
        for entry in std::fs::read_dir(dir.path().join("public")).unwrap() {
            let log = entry.unwrap().path().join("_delta_log/00000000000000000000.json");
            protocol = std::fs::read_to_string(log).unwrap();
        }
        assert!(protocol.contains("timestampNtz"), "{protocol}");
        assert_eq!(files_read(&engine, "SELECT * FROM n WHERE k = 3").await, Some(1));
        assert_eq!(text(&engine, "SELECT count(*) AS c FROM n").await, text(&engine, "SELECT 10 AS c").await);
    }

    /// A file list decoded elsewhere (a fresh context, as a cluster node has) scans the same
    /// files and answers the same: partition values with escapes and nulls, statistics for pruning.
    #[tokio::test]
    async fn a_file_list_travels_as_bytes_and_scans_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        run(&engine, "CREATE TABLE p (country VARCHAR, id INT, v DOUBLE) PARTITIONED BY (country)").await;
        run(&engine, "INSERT INTO p VALUES ('SE', 1, 1.5), (NULL, 2, 2.5), ('a b/c', 3, 3.5)").await;
        run(&engine, "INSERT INTO p SELECT 'SE', CAST(value AS INT), value * 0.5 FROM generate_series(10, 99)").await;
        let session = engine.session();
        let provider = session.ctx().table_provider("p").await.unwrap();
        let managed = provider.downcast_ref::<ManagedTable>().expect("a managed table");
        let bytes = managed.file_list().expect("plain Parquet").unwrap();
        let list = FileListTable::from_bytes(&bytes).unwrap();
        assert_eq!(list.file_count(), 4);
        assert_eq!(FileListTable::from_bytes(&list.to_bytes().unwrap()).unwrap().file_count(), 4);

        let remote = datafusion::prelude::SessionContext::new();
        remote.register_table("p", Arc::new(list)).unwrap();
        for sql in [
            "SELECT country, id, v FROM p ORDER BY id",
            "SELECT id FROM p WHERE country IS NULL",
            "SELECT id, v FROM p WHERE country = 'a b/c'",
            "SELECT count(*) AS n, sum(v) AS v FROM p WHERE id > 50",
        ] {
            let there = remote.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(pretty_format_batches(&there).unwrap().to_string(), text(&engine, sql).await, "{sql}");
        }
        // Pruning works from the decoded statistics: one file holds ids above 50.
        let plan = remote.sql("SELECT * FROM p WHERE id > 50").await.unwrap().create_physical_plan().await.unwrap();
        let rendered = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        assert_eq!(rendered.matches(".parquet").count(), 1, "{rendered}");
    }

    #[test]
    fn file_paths_resolve_under_the_table_root() {
        let root = Url::parse("file:///wh/s/t-1/").unwrap();
        assert_eq!(
            object_path(&root, "day=2026-10-01/part-1.parquet").unwrap().as_ref(),
            "wh/s/t-1/day=2026-10-01/part-1.parquet"
        );
        // log paths are URL-encoded
        assert_eq!(object_path(&root, "c=a%2520b%252Fc/p.parquet").unwrap().as_ref(), "wh/s/t-1/c=a%20b%2Fc/p.parquet");
        let s3 = Url::parse("s3://bucket/wh/s/t-1").unwrap();
        assert_eq!(object_path(&s3, "p.parquet").unwrap().as_ref(), "wh/s/t-1/p.parquet");
        assert!(object_path(&s3, "s3://other/p.parquet").is_none());
        assert_eq!(store_url(&s3).unwrap().as_str(), "s3://bucket/");
        assert_eq!(store_url(&root).unwrap().as_str(), "file:///");
    }

    #[test]
    fn groups_balance_bytes() {
        let files = [50u64, 40, 30, 20, 10]
            .iter()
            .enumerate()
            .map(|(i, s)| PartitionedFile::new(format!("f{i}"), *s))
            .collect();
        let groups = balanced_groups(files, 2);
        let bytes: Vec<u64> = groups.iter().map(|g| g.iter().map(|f| f.object_meta.size).sum()).collect();
        assert_eq!(bytes.iter().sum::<u64>(), 150);
        assert!(bytes.iter().all(|b| *b >= 70 && *b <= 80), "{bytes:?}");
        assert_eq!(balanced_groups(vec![PartitionedFile::new("a", 1)], 8).len(), 1);
    }
}
