//! Result batches cut so that each fits in one gRPC message a client accepts.
//!
//! arrow-flight's encoder splits a batch into ~2 MiB messages by its average row size, but it
//! cannot split a row: one value larger than the client's limit would reach the client as a
//! transport error ("message larger than max") that names neither the row nor the limit. Here
//! a batch larger than the limit is halved until each part fits; a single row that does not fit
//! fails the query with an error that names the row, the column, the size and the limit.

use arrow::array::{Array, RecordBatch};
use streampulse_engine::{Error, Result};

use crate::config::size::format_bytes;

/// Room left for the IPC header and padding of a message around the Arrow data.
const FRAMING: usize = 64 * 1024;

/// `batch` as consecutive slices of at most `limit` bytes of Arrow data each (a batch that
/// fits is returned as is). `first_row` is the batch's first row's number in the result,
/// counting from 0, for the error.
pub(crate) fn fit(batch: RecordBatch, limit: usize, first_row: u64) -> Result<Vec<RecordBatch>> {
    let budget = limit.saturating_sub(FRAMING).max(1);
    // Whole buffers: an upper bound for a slice, and free to compute.
    let upper: usize = batch.columns().iter().map(|c| c.get_buffer_memory_size()).sum();
    if upper <= budget {
        return Ok(vec![batch]);
    }
    let mut out = Vec::new();
    split(&batch, 0, batch.num_rows(), budget, limit, first_row, &mut out)?;
    Ok(out)
}

fn split(
    batch: &RecordBatch,
    offset: usize,
    len: usize,
    budget: usize,
    limit: usize,
    first_row: u64,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    let part = batch.slice(offset, len);
    let size = slice_size(&part)?;
    if size <= budget || len == 0 {
        out.push(part);
        return Ok(());
    }
    if len == 1 {
        return Err(too_wide(&part, size, limit, first_row + offset as u64));
    }
    let half = len / 2;
    split(batch, offset, half, budget, limit, first_row, out)?;
    split(batch, offset + half, len - half, budget, limit, first_row, out)
}

fn slice_size(batch: &RecordBatch) -> Result<usize> {
    let mut total = 0;
    for column in batch.columns() {
        total += column
            .to_data()
            .get_slice_memory_size()
            .map_err(|e| Error::internal(format!("cannot size a result batch: {e}")))?;
    }
    Ok(total)
}

fn too_wide(row: &RecordBatch, size: usize, limit: usize, index: u64) -> Error {
    let widest = row
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_data().get_slice_memory_size().unwrap_or(0), i))
        .max()
        .map(|(bytes, i)| format!(" (column {} holds {})", row.schema().field(i).name(), format_bytes(bytes as u64)))
        .unwrap_or_default();
    Error::ResourcesExhausted(format!(
        "row {} of the result is {}{widest}, more than fits in one Flight message: the limit is {} \
         (server option --max-message-size; a client must accept as much: ADBC's Flight SQL driver \
         takes 16 MiB unless adbc.flight.sql.client_option.with_max_msg_size says more); select \
         part of the value (substr, a smaller array) or raise both limits",
        index + 1,
        format_bytes(size as u64),
        format_bytes(limit as u64),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: Vec<String>) -> RecordBatch {
        let n = values.len() as i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("payload", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..n)), Arc::new(StringArray::from(values))],
        )
        .unwrap()
    }

    #[test]
    fn a_batch_that_fits_is_untouched() {
        let b = batch(vec!["x".repeat(100); 10]);
        let parts = fit(b.clone(), 1 << 20, 0).unwrap();
        assert_eq!(parts, vec![b]);
    }

    #[test]
    fn a_big_batch_is_cut_into_parts_that_fit_and_keep_every_row_in_order() {
        let values: Vec<String> = (0..200).map(|i| format!("{i:06}").repeat(2000)).collect();
        let limit = 1 << 20;
        let parts = fit(batch(values.clone()), limit, 0).unwrap();
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(slice_size(p).unwrap() <= limit - FRAMING);
        }
        let got: Vec<String> = parts
            .iter()
            .flat_map(|p| {
                let s = p.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                s.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, values);
    }

    #[test]
    fn one_row_too_wide_names_the_row_the_column_and_the_limit() {
        let mut values = vec!["small".to_string(); 5];
        values[3] = "y".repeat(3 << 20);
        let e = fit(batch(values), 2 << 20, 1000).unwrap_err().to_string();
        assert!(e.contains("row 1004 of the result"), "{e}");
        assert!(e.contains("column payload holds 3.0 MiB"), "{e}");
        assert!(e.contains("the limit is 2.0 MiB"), "{e}");
        assert!(e.contains("--max-message-size"), "{e}");
    }
}
