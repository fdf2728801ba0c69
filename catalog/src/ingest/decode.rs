//! One landing file's bytes into rows of the target's types, with every bad line kept.
//!
//! JSON lines decode in one pass (arrow-json, straight into the target's types); only when
//! that pass fails is the file read again line by line, so each bad line is found with its
//! number, the column at fault, the error and the raw text, and the good lines still load.
//! CSV and Parquet decode whole (arrow's readers): an error names the line (CSV) and fails the
//! file. gzip is inflated first (`MultiGzDecoder`: concatenated members too).

use std::io::Read;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::sources::json_api::short;

use super::parse::{Compression, FileFormat, FormatKind};

/// Longest raw line kept in `system.load_errors`.
const RAW_LIMIT: usize = 16 * 1024;

/// Metadata columns every file offers (by these names) to the target and to transformations.
pub const SOURCE_FILE: &str = "_source_file";
pub const SOURCE_LINE: &str = "_source_line";

/// A line (or for a file-level error, the file) that could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based; `None` for an error of the whole file.
    pub line: Option<i64>,
    pub column: Option<String>,
    pub error: String,
    pub raw: Option<String>,
}

/// The rows of one file: its columns of `schema`, and the line each row came from.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    pub lines: Vec<i64>,
    pub bad: Vec<BadLine>,
}

/// Why a whole file cannot be read (not gzip, truncated, not Parquet, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub message: String,
    /// A gzip stream that ends early: the file may still be being written.
    pub truncated: bool,
}

impl FileError {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), truncated: false }
    }
}

/// Decode `bytes` as `format` into `schema`'s columns (matched by name).
pub fn decode(bytes: &[u8], format: &FileFormat, schema: &SchemaRef) -> Result<Decoded, FileError> {
    let gzip = match format.compression {
        Compression::Gzip => {
            if !bytes.is_empty() && !bytes.starts_with(&[0x1f, 0x8b]) {
                return Err(FileError::new(format!(
                    "not gzip data (COMPRESSION = GZIP): the file starts with {}",
                    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
                )));
            }
            true
        }
        Compression::Auto => bytes.starts_with(&[0x1f, 0x8b]),
        Compression::None => false,
    };
    let inflated;
    let data: &[u8] = if gzip && !bytes.is_empty() {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        if let Err(e) = flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out) {
            let truncated = e.kind() == std::io::ErrorKind::UnexpectedEof;
            let message = if truncated {
                "truncated gzip data: the file ends before its gzip stream does".to_string()
            } else {
                format!("corrupt gzip data: {e}")
            };
            return Err(FileError { message, truncated });
        }
        inflated = out;
        &inflated
    } else {
        bytes
    };
    match format.kind {
        FormatKind::Json => Ok(decode_json(data, schema)),
        FormatKind::Csv => decode_csv(data, format, schema),
        FormatKind::Parquet => decode_parquet(data, schema),
    }
}

fn json_decoder(schema: &SchemaRef, rows: usize) -> arrow::json::reader::Decoder {
    // Building a decoder only fails for types arrow-json cannot read, which the target's
    // columns were checked against before any file was opened.
    arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.max(1))
        .build_decoder()
        .unwrap_or_else(|e| panic!("arrow-json rejected a checked schema: {e}"))
}

/// Whether arrow-json can decode every column of `schema`.
pub fn check_json_schema(schema: &SchemaRef) -> Result<(), String> {
    arrow::json::ReaderBuilder::new(Arc::clone(schema)).build_decoder().map(|_| ()).map_err(|e| e.to_string())
}

/// Non-empty lines with their 1-based numbers.
fn lines(data: &[u8]) -> Vec<(i64, &[u8])> {
    data.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|(i, l)| (i as i64 + 1, l))
        .collect()
}

fn decode_json(data: &[u8], schema: &SchemaRef) -> Decoded {
    let lines = lines(data);
    // Fast path: the whole file in one decode, accepted only when it gives one row per line.
    let mut decoder = json_decoder(schema, lines.len());
    let fast = decoder.decode(data).and_then(|read| {
        if read < data.len() {
            return Err(arrow::error::ArrowError::JsonError("more values than lines".into()));
        }
        decoder.flush()
    });
    if let Ok(batch) = fast {
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
        if batch.num_rows() == lines.len() {
            return Decoded { batch, lines: lines.iter().map(|(n, _)| *n).collect(), bad: Vec::new() };
        }
    }
    // Slow path: line by line, each bad line diagnosed.
    let mut good = Vec::new();
    let mut numbers = Vec::new();
    let mut bad = Vec::new();
    let mut decoder = json_decoder(schema, 1);
    for (number, line) in lines {
        let one = decoder.decode(line).and_then(|read| {
            if read < line.len() && line[read..].iter().any(|b| !b.is_ascii_whitespace()) {
                return Err(arrow::error::ArrowError::JsonError("the line holds more than one JSON value".into()));
            }
            decoder.flush()
        });
        match one {
            Ok(Some(batch)) if batch.num_rows() == 1 => {
                good.push(batch);
                numbers.push(number);
            }
            Ok(_) => {
                decoder = json_decoder(schema, 1);
                bad.push(diagnose(line, number, schema, "the line holds more than one JSON value".into()));
            }
            Err(e) => {
                decoder = json_decoder(schema, 1);
                bad.push(diagnose(line, number, schema, e.to_string()));
            }
        }
    }
    let batch = concat_batches(schema, &good).unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(schema)));
    Decoded { batch, lines: numbers, bad }
}

/// Why one line failed: not JSON, not an object, or which column does not fit.
fn diagnose(line: &[u8], number: i64, schema: &SchemaRef, fallback: String) -> BadLine {
    let raw = Some(String::from_utf8_lossy(&line[..line.len().min(RAW_LIMIT)]).into_owned());
    let (column, error) = match serde_json::from_slice::<Value>(line) {
        Err(e) => (None, format!("not valid JSON: {e}")),
        Ok(Value::Object(map)) => {
            // The first column whose value arrow-json cannot read as the column's type.
            let culprit = schema.fields().iter().find_map(|field| {
                let value = map.get(field.name())?;
                let one = Arc::new(Schema::new(vec![field.as_ref().clone().with_nullable(true)]));
                let text = serde_json::json!({ field.name(): value }).to_string();
                let mut d = json_decoder(&one, 1);
                match d.decode(text.as_bytes()).and_then(|_| d.flush()) {
                    Ok(_) => None,
                    Err(_) => Some((
                        field.name().clone(),
                        format!("{}: expected {} , found {}", field.name(), type_name(field.data_type()), short(value))
                            .replace(" ,", ","),
                    )),
                }
            });
            match culprit {
                Some((column, error)) => (Some(column), error),
                None => (None, fallback.trim_start_matches("Json error: ").to_string()),
            }
        }
        Ok(other) => (None, format!("not a JSON object: {}", short(&other))),
    };
    BadLine { line: Some(number), column, error, raw }
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "an integer".into(),
        DataType::Float32 | DataType::Float64 => "a number".into(),
        DataType::Utf8 | DataType::LargeUtf8 => "a string".into(),
        DataType::Boolean => "true or false".into(),
        DataType::Timestamp(..) => "a timestamp (a string like 2025-10-12 21:41:32 or epoch micros)".into(),
        DataType::Date32 => "a date (a string like 2025-10-12)".into(),
        other => other.to_string(),
    }
}

fn decode_csv(data: &[u8], format: &FileFormat, schema: &SchemaRef) -> Result<Decoded, FileError> {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Decoded { batch: RecordBatch::new_empty(Arc::clone(schema)), lines: Vec::new(), bad: Vec::new() });
    }
    // Columns by name from the header (or by position without one), each read as the
    // target's type; columns the target does not have are read as text and dropped.
    let file_fields: Vec<Field> = if format.header {
        let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
        let header = String::from_utf8_lossy(first);
        header
            .trim_end_matches('\r')
            .split(format.delimiter as char)
            .map(|name| {
                let name = name.trim().trim_matches('"');
                match schema.field_with_name(name) {
                    Ok(f) => f.as_ref().clone().with_nullable(true),
                    Err(_) => Field::new(name, DataType::Utf8, true),
                }
            })
            .collect()
    } else {
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect()
    };
    let file_schema = Arc::new(Schema::new(file_fields));
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&file_schema))
        .with_header(format.header)
        .with_delimiter(format.delimiter)
        .with_batch_size(64 * 1024)
        .build(data)
        .map_err(|e| FileError::new(format!("CSV: {e}")))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| FileError::new(format!("CSV: {e}")))?);
    }
    let all = concat_batches(&file_schema, &batches).map_err(|e| FileError::new(e.to_string()))?;
    let first_line = if format.header { 2 } else { 1 };
    let lines = (0..all.num_rows() as i64).map(|i| i + first_line).collect();
    Ok(Decoded { batch: by_name(&all, schema)?, lines, bad: Vec::new() })
}

fn decode_parquet(data: &[u8], schema: &SchemaRef) -> Result<Decoded, FileError> {
    if data.is_empty() {
        return Ok(Decoded { batch: RecordBatch::new_empty(Arc::clone(schema)), lines: Vec::new(), bad: Vec::new() });
    }
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(data.to_vec()),
    )
    .and_then(|b| b.build())
    .map_err(|e| FileError::new(format!("not a readable Parquet file: {e}")))?;
    let mut batches = Vec::new();
    let mut file_schema = None;
    for batch in reader {
        let batch = batch.map_err(|e| FileError::new(format!("Parquet: {e}")))?;
        file_schema.get_or_insert_with(|| batch.schema());
        batches.push(batch);
    }
    let Some(file_schema) = file_schema else {
        return Ok(Decoded { batch: RecordBatch::new_empty(Arc::clone(schema)), lines: Vec::new(), bad: Vec::new() });
    };
    let all = concat_batches(&file_schema, &batches).map_err(|e| FileError::new(e.to_string()))?;
    let lines = (1..=all.num_rows() as i64).collect();
    Ok(Decoded { batch: by_name(&all, schema)?, lines, bad: Vec::new() })
}

/// `schema`'s columns taken by name from `batch` and cast; missing ones are NULL.
fn by_name(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, FileError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.schema().index_of(f.name()) {
            Ok(i) => cast(batch.column(i), f.data_type())
                .map_err(|e| FileError::new(format!("column {}: cannot read as {}: {e}", f.name(), f.data_type()))),
            Err(_) => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, FileError>>()?;
    let nullable = Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(nullable, columns).map_err(|e| FileError::new(e.to_string()))
}

/// The Hive `key=value` folders of `relative` (a path below the location), in order.
pub fn hive_values(relative: &str) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = relative.split('/').collect();
    parts.pop();
    parts
        .into_iter()
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(v: &str) -> String {
    url::form_urlencoded::parse(format!("v={v}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| v.to_string())
}

/// The source relation of one file: its decoded columns, then `_source_file`, `_source_line`
/// and its Hive keys (as text) where the decoded columns do not already have those names.
pub fn with_metadata(decoded: &Decoded, file: &str, hive: &[(String, String)]) -> Result<RecordBatch, FileError> {
    let rows = decoded.batch.num_rows();
    let mut fields: Vec<Field> = decoded.batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
    fn add(fields: &mut Vec<Field>, columns: &mut Vec<ArrayRef>, name: &str, array: ArrayRef) {
        if !fields.iter().any(|f| f.name() == name) {
            fields.push(Field::new(name, array.data_type().clone(), true));
            columns.push(array);
        }
    }
    add(&mut fields, &mut columns, SOURCE_FILE, Arc::new(StringArray::from(vec![file; rows])));
    add(&mut fields, &mut columns, SOURCE_LINE, Arc::new(Int64Array::from(decoded.lines.clone())));
    for (k, v) in hive {
        let value: ArrayRef = Arc::new(StringArray::from(vec![v.as_str(); rows]));
        // A Hive key fills a column the file's lines do not give (all NULL after decoding).
        match fields.iter().position(|f| f.name() == k) {
            Some(i) if columns[i].null_count() == rows => {
                let cast = cast(&value, fields[i].data_type())
                    .map_err(|e| FileError::new(format!("folder {k}={v}: not a {}: {e}", fields[i].data_type())))?;
                columns[i] = cast;
            }
            Some(_) => {}
            None => add(&mut fields, &mut columns, k, value),
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| FileError::new(e.to_string()))
}

/// `batch`'s columns as `target`'s, by name, cast; columns `target` has and `batch` lacks are
/// NULL. A cast that fails (a Hive value that is not a number, ...) names the column.
pub fn to_target(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.schema().index_of(f.name()) {
            Ok(i) => {
                let column = batch.column(i);
                if column.data_type() == f.data_type() {
                    return Ok(Arc::clone(column));
                }
                let options = arrow::compute::CastOptions { safe: false, ..Default::default() };
                arrow::compute::cast_with_options(column, f.data_type(), &options)
                    .map_err(|e| format!("column {}: cannot convert to {}: {e}", f.name(), f.data_type()))
            }
            Err(_) => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    for (f, c) in target.fields().iter().zip(&columns) {
        if !f.is_nullable() && c.null_count() > 0 {
            return Err(format!("column {} may not be NULL, and some rows give no value for it", f.name()));
        }
    }
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimeUnit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("play_id", DataType::Int64, true),
            Field::new("played_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("source", DataType::Utf8, true),
        ]))
    }

    fn json() -> FileFormat {
        FileFormat { kind: FormatKind::Json, ..Default::default() }
    }

    #[test]
    fn good_lines_load_and_bad_ones_are_named() {
        let data = b"{\"play_id\": 1, \"played_at\": \"2025-10-12 21:41:32\", \"source\": \"radio\"}\n\
                     \n\
                     {\"play_id\": \"two\", \"source\": \"radio\"}\n\
                     not json at all\n\
                     {\"play_id\": 4, \"extra\": true}\n\
                     [1, 2]\n";
        let d = decode(data, &json(), &schema()).unwrap();
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.lines, vec![1, 5]);
        assert_eq!(d.batch.column(0).as_primitive::<Int64Type>().values(), &[1, 4]);
        assert_eq!(d.bad.len(), 3);
        assert_eq!(d.bad[0].line, Some(3));
        assert_eq!(d.bad[0].column.as_deref(), Some("play_id"));
        assert!(d.bad[0].error.contains("expected an integer, found \"two\""), "{}", d.bad[0].error);
        assert_eq!(d.bad[1].line, Some(4));
        assert!(d.bad[1].error.starts_with("not valid JSON"), "{}", d.bad[1].error);
        assert_eq!(d.bad[1].raw.as_deref(), Some("not json at all"));
        assert!(d.bad[2].error.starts_with("not a JSON object"), "{}", d.bad[2].error);
    }

    #[test]
    fn gzip_is_inflated_and_checked() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"play_id\": 7}\n").unwrap();
        let gz = enc.finish().unwrap();
        let gzip = FileFormat { compression: Compression::Gzip, ..json() };
        assert_eq!(decode(&gz, &gzip, &schema()).unwrap().batch.num_rows(), 1);
        assert_eq!(decode(&gz, &json(), &schema()).unwrap().batch.num_rows(), 1, "AUTO sees the magic bytes");
        let e = decode(b"{\"play_id\": 7}\n", &gzip, &schema()).unwrap_err();
        assert!(e.message.starts_with("not gzip data") && !e.truncated, "{e:?}");
        let e = decode(&gz[..gz.len() - 6], &gzip, &schema()).unwrap_err();
        assert!(e.truncated, "{e:?}");
        assert_eq!(decode(b"", &gzip, &schema()).unwrap().batch.num_rows(), 0, "a zero-byte file has no rows");
    }

    #[test]
    fn hive_folders_and_metadata() {
        assert_eq!(
            hive_values("year=2025/month=10/day=2/1760305292_1_2_3.gz"),
            vec![("year".into(), "2025".into()), ("month".into(), "10".into()), ("day".into(), "2".into())]
        );
        let d = decode(b"{\"play_id\": 1}\n{\"play_id\": 2}\n", &json(), &schema()).unwrap();
        let b = with_metadata(&d, "a/day=2/f.gz", &[("day".into(), "2".into())]).unwrap();
        let target = Arc::new(Schema::new(vec![
            Field::new("play_id", DataType::Int64, true),
            Field::new("day", DataType::Int32, true),
            Field::new(SOURCE_LINE, DataType::Int64, true),
            Field::new("missing", DataType::Utf8, true),
        ]));
        let t = to_target(&b, &target).unwrap();
        assert_eq!(t.column(1).as_primitive::<arrow::datatypes::Int32Type>().values(), &[2, 2]);
        assert_eq!(t.column(2).as_primitive::<Int64Type>().values(), &[1, 2]);
        assert_eq!(t.column(3).null_count(), 2);
    }
}
