//! Rows staged as a Parquet file in the spill directory before one Delta write reads them.
//!
//! INSERT OVERWRITE and bulk loads stream their rows here instead of holding them in memory;
//! the file counts against `--spill-max-size` and is deleted when the [`Staged`] value is
//! dropped, on every path.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::spill_file::{SpillFile, SpillWriter};
use datafusion::logical_expr::LogicalPlan;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;

use crate::error::{Error, Result};

/// A staging file and what was written to it.
pub struct Staged {
    /// Held for its lifetime: dropping it deletes the file.
    _file: Arc<dyn SpillFile>,
    path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// The distinct values of the columns asked for, one tuple per partition the rows fall in.
    pub tuples: Vec<Vec<ScalarValue>>,
}

impl Staged {
    /// Streams `input` into a new staging file (`what` names it in errors and listings),
    /// collecting the distinct values of the columns at `indices`.
    pub async fn write(
        ctx: &SessionContext,
        input: SendableRecordBatchStream,
        indices: &[usize],
        what: &str,
    ) -> Result<Self> {
        let file = ctx.runtime_env().disk_manager.create_tmp_file(what)?;
        let path = file
            .path()
            .ok_or_else(|| Error::not_supported(format!("{what} needs a local spill directory")))?
            .to_path_buf();
        let (rows, tuples) = stage_rows(input, file.open_writer()?, indices).await?;
        Ok(Self { _file: file, path, rows, tuples })
    }

    /// A scan of the staged rows, read with `schema`.
    pub async fn scan(&self, ctx: &SessionContext, schema: &Schema) -> Result<LogicalPlan> {
        let options = ParquetReadOptions::default().file_extension("").schema(schema);
        Ok(ctx.read_parquet(self.path.to_string_lossy().as_ref(), options).await?.into_unoptimized_plan())
    }
}

/// Writes the rows of `stream` as Parquet to `out`, collecting the distinct values of the
/// columns at `indices` (one tuple per partition the rows fall in; none if `indices` is empty).
/// Returns the row count and the tuples. Memory: one batch and one row group of the writer at a
/// time.
async fn stage_rows(
    mut stream: SendableRecordBatchStream,
    out: Box<dyn SpillWriter>,
    indices: &[usize],
) -> datafusion::error::Result<(u64, Vec<Vec<ScalarValue>>)> {
    let schema = stream.schema();
    let props = WriterProperties::builder()
        .set_compression(datafusion::parquet::basic::Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(props))?;
    let converter =
        RowConverter::new(indices.iter().map(|i| SortField::new(schema.field(*i).data_type().clone())).collect())?;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut tuples = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
        if indices.is_empty() {
            continue;
        }
        let keys =
            converter.convert_columns(&indices.iter().map(|i| Arc::clone(batch.column(*i))).collect::<Vec<_>>())?;
        let mut in_batch: HashSet<&[u8]> = HashSet::new();
        for (row, key) in keys.iter().enumerate() {
            let bytes = key.data();
            if in_batch.insert(bytes) && !seen.contains(bytes) {
                seen.insert(bytes.to_vec());
                tuples.push(
                    indices
                        .iter()
                        .map(|i| ScalarValue::try_from_array(batch.column(*i), row))
                        .collect::<datafusion::error::Result<Vec<_>>>()?,
                );
            }
        }
    }
    writer.close()?;
    Ok((rows, tuples))
}
