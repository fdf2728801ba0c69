//! Runs the catalog's SQL behaviour tests in `tests/slt/*.slt` (sqllogictest format, as in
//! DataFusion's own test files) against a fresh local warehouse per file, through the same
//! engine the server and CLI use.

use std::path::PathBuf;

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::TryStreamExt;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use streampulse_engine::{Engine, EngineConfig, Error, Planned, Session};

struct Warehouse {
    engine: Engine,
    session: Session,
}

#[async_trait::async_trait]
impl AsyncDB for Warehouse {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let planned = self.engine.plan_sql(&self.session, sql).await?;
        match planned {
            Planned::Query(plan) => {
                let physical = self.session.physical_plan(plan).await?;
                let schema = physical.schema();
                let batches: Vec<_> = self.session.execute(physical)?.try_collect().await?;
                let types = schema
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        t if t.is_integer() => DefaultColumnType::Integer,
                        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
                            DefaultColumnType::FloatingPoint
                        }
                        _ => DefaultColumnType::Text,
                    })
                    .collect();
                let options = FormatOptions::default().with_null("NULL");
                let mut rows = Vec::new();
                for batch in &batches {
                    let formatters = batch
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(Error::from)?;
                    for r in 0..batch.num_rows() {
                        rows.push(
                            formatters
                                .iter()
                                .zip(batch.columns())
                                .map(|(f, c)| {
                                    let s = f.value(r).to_string();
                                    if c.is_valid(r) && s.is_empty() { "(empty)".to_string() } else { s }
                                })
                                .collect(),
                        );
                    }
                }
                Ok(DBOutput::Rows { types, rows })
            }
            other => {
                let count = self.engine.run_command(&self.session, other).await?;
                Ok(DBOutput::StatementComplete(count.unwrap_or(0)))
            }
        }
    }

    async fn shutdown(&mut self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_slt_files() {
    // Cargo sets CARGO_MANIFEST_DIR when it runs the test too; prefer that over the compile-time
    // value so a test binary built in another checkout (shared target dir) reads this one's files.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let dir = PathBuf::from(manifest_dir).join("../tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for file in files {
        let warehouse = tempfile::tempdir().expect("temp dir");
        let location = warehouse.path().to_string_lossy().to_string();
        let engine = Engine::open(EngineConfig::new(location, 512 << 20)).await.expect("engine opens");
        let mut runner = sqllogictest::Runner::new(move || {
            let engine = engine.clone();
            async move { Ok(Warehouse { session: engine.session(), engine }) }
        });
        runner.with_column_validator(sqllogictest::default_column_validator);
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
        eprintln!("ok: {}", file.display());
    }
}
