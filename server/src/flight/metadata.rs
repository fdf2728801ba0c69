//! Static Flight SQL metadata: SqlInfo, XDBC type info, key result schemas, and the rule that
//! turns an engine schema into the schema clients see.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction, XdbcDataType,
    XdbcDatetimeSubcode,
};
use streampulse_engine::{Error, Result};

/// The server's SqlInfo answers (JDBC tools fetch them all on connect).
pub fn sql_info() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "StreamPulse Warehouse");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59.3.0");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlQuotedIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32);
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(SqlInfo::SqlSystemFunctions, &["current_date", "current_time", "now", "version"] as &[&str]);
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlMaxColumnNameLength, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInGroupBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInIndex, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInOrderBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInSelect, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInTable, 0i64);
    b.append(SqlInfo::SqlMaxConnections, 0i64);
    b.append(SqlInfo::SqlMaxRowSize, 0i64);
    b.append(SqlInfo::SqlMaxStatementLength, 0i64);
    b.append(SqlInfo::SqlMaxStatements, 0i64);
    b.append(SqlInfo::SqlMaxTableNameLength, 0i64);
    b.append(SqlInfo::SqlMaxTablesInSelect, 0i64);
    b.append(SqlInfo::SqlMaxUsernameLength, 0i64);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().map_err(|e| Error::internal(format!("building SqlInfo: {e}")))
}

const KEYWORDS: &[&str] = &[
    "ANALYZE",
    "ARRAY",
    "CASCADE",
    "COPY",
    "DESCRIBE",
    "EXPLAIN",
    "EXTERNAL",
    "FORMAT",
    "LOCATION",
    "OPTIONS",
    "OVERWRITE",
    "PARTITIONED",
    "QUALIFY",
    "STORED",
    "UNNEST",
    "VIEW",
];
const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "degrees", "exp", "floor", "ln", "log", "log10", "log2",
    "pi", "power", "radians", "random", "round", "signum", "sin", "sqrt", "tan", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "concat",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "translate",
    "trim",
    "upper",
];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "extract",
    "from_unixtime",
    "now",
    "to_timestamp",
    "to_date",
];

/// The XDBC types the engine supports.
pub fn xdbc_info() -> Result<XdbcTypeInfoData> {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let mut add = |name: &str, t: XdbcDataType, size: Option<i32>, quote: bool, sub: Option<XdbcDatetimeSubcode>| {
        b.append(XdbcTypeInfo {
            type_name: name.to_string(),
            data_type: t,
            column_size: size,
            literal_prefix: quote.then(|| "'".to_string()),
            literal_suffix: quote.then(|| "'".to_string()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: quote,
            searchable: Searchable::Full,
            unsigned_attribute: Some(false),
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.to_string()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: t,
            datetime_subcode: sub,
            num_prec_radix: (!quote).then_some(10),
            interval_precision: None,
        });
    };
    add("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false, None);
    add("TINYINT", XdbcDataType::XdbcTinyint, Some(3), false, None);
    add("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), false, None);
    add("INTEGER", XdbcDataType::XdbcInteger, Some(10), false, None);
    add("BIGINT", XdbcDataType::XdbcBigint, Some(19), false, None);
    add("REAL", XdbcDataType::XdbcFloat, Some(24), false, None);
    add("DOUBLE", XdbcDataType::XdbcDouble, Some(53), false, None);
    add("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), false, None);
    add("VARCHAR", XdbcDataType::XdbcVarchar, Some(i32::MAX), true, None);
    add("BYTEA", XdbcDataType::XdbcBinary, Some(i32::MAX), true, None);
    add("DATE", XdbcDataType::XdbcDatetime, Some(10), true, Some(XdbcDatetimeSubcode::XdbcSubcodeYear));
    add("TIME", XdbcDataType::XdbcDatetime, Some(15), true, Some(XdbcDatetimeSubcode::XdbcSubcodeTime));
    add("TIMESTAMP", XdbcDataType::XdbcDatetime, Some(29), true, Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp));
    b.build().map_err(|e| Error::internal(format!("building XDBC type info: {e}")))
}

/// Result schema of `CommandGetPrimaryKeys`.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Result schema of `CommandGetImportedKeys`, `CommandGetExportedKeys`, `CommandGetCrossReference`.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// A type as clients can read it: view, dictionary and run-end encodings become plain types.
fn client_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, v) => client_type(v),
        DataType::RunEndEncoded(_, v) => client_type(v.data_type()),
        DataType::ListView(f) => DataType::List(client_field(f)),
        DataType::LargeListView(f) => DataType::LargeList(client_field(f)),
        DataType::List(f) => DataType::List(client_field(f)),
        DataType::LargeList(f) => DataType::LargeList(client_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(client_field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(client_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(client_field(f), *sorted),
        other => other.clone(),
    }
}

fn client_field(f: &FieldRef) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(client_type(f.data_type())))
}

/// The schema announced in FlightInfo and used for every streamed batch.
pub fn client_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema.fields().iter().map(client_field).collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Make a batch match the announced schema exactly (types, nullability, metadata).
pub fn conform(batch: RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(c, f)| {
                if c.data_type() == f.data_type() { Ok(c.clone()) } else { arrow::compute::cast(c, f.data_type()) }
            },
        )
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

/// A table schema with the `ARROW:FLIGHT:SQL:*` column metadata GetTables promises.
pub fn annotated_table_schema(catalog: &str, schema: &str, table: &str, s: &Schema) -> Schema {
    let fields: Vec<Field> = s
        .fields()
        .iter()
        .map(|f| {
            let t = client_type(f.data_type());
            let mut md: HashMap<String, String> = f.metadata().clone();
            md.insert("ARROW:FLIGHT:SQL:CATALOG_NAME".into(), catalog.into());
            md.insert("ARROW:FLIGHT:SQL:DB_SCHEMA_NAME".into(), schema.into());
            md.insert("ARROW:FLIGHT:SQL:TABLE_NAME".into(), table.into());
            md.insert("ARROW:FLIGHT:SQL:TYPE_NAME".into(), sql_type_name(&t));
            md.insert("ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT".into(), "0".into());
            md.insert("ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE".into(), if t == DataType::Utf8 { "1" } else { "0" }.into());
            md.insert("ARROW:FLIGHT:SQL:IS_READ_ONLY".into(), "0".into());
            md.insert("ARROW:FLIGHT:SQL:IS_SEARCHABLE".into(), "1".into());
            if let DataType::Decimal128(p, sc) | DataType::Decimal256(p, sc) = &t {
                md.insert("ARROW:FLIGHT:SQL:PRECISION".into(), p.to_string());
                md.insert("ARROW:FLIGHT:SQL:SCALE".into(), sc.to_string());
            }
            f.as_ref().clone().with_data_type(t).with_metadata(md)
        })
        .collect();
    Schema::new(fields)
}

/// The SQL name of an Arrow type, as `information_schema` would show it.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INTEGER UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "BYTEA".into()
        }
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => "ARRAY".into(),
        DataType::Struct(_) => "STRUCT".into(),
        DataType::Map(..) => "MAP".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        other => other.to_string(),
    }
}

/// SQL `LIKE` with `%` and `_`, as Flight SQL filter patterns use it.
pub fn like(pattern: Option<&str>, value: &str) -> bool {
    let Some(pattern) = pattern else { return true };
    fn go(p: &[char], v: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('%') => (0..=v.len()).any(|i| go(&p[1..], &v[i..])),
            Some('_') => !v.is_empty() && go(&p[1..], &v[1..]),
            Some('\\') if p.len() > 1 => v.first() == Some(&p[1]) && go(&p[2..], &v[1..]),
            Some(c) => v.first() == Some(c) && go(&p[1..], &v[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        assert!(like(None, "x"));
        assert!(like(Some("%"), "plays"));
        assert!(like(Some("pl_ys"), "plays"));
        assert!(like(Some("p%s"), "plays"));
        assert!(!like(Some("p%x"), "plays"));
        assert!(like(Some("a\\_b"), "a_b"));
        assert!(!like(Some("a\\_b"), "axb"));
    }

    #[test]
    fn views_and_dictionaries_leave_as_plain_types() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Utf8View, false),
            Field::new("b", DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8)), true),
        ]);
        let c = client_schema(&s);
        assert_eq!(c.field(0).data_type(), &DataType::Utf8);
        assert!(!c.field(0).is_nullable());
        assert_eq!(c.field(1).data_type(), &DataType::Utf8);
    }

    #[test]
    fn sql_info_and_xdbc_build() {
        assert!(sql_info().is_ok());
        assert!(xdbc_info().is_ok());
    }
}
