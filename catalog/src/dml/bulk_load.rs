//! Bulk load: a client's record batches into a managed table (Flight SQL's
//! `CommandStatementIngest`), in one Delta commit.
//!
//! The rows stream into a staging Parquet file in the spill directory (under `--spill-max-size`)
//! as they arrive, so an upload never sits in memory whatever its size; then one Delta write
//! reads the staged file in the caller's session. A bad batch, an aborted upload or a failed
//! write commits nothing, and the staging file goes on every path.

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::execution::SendableRecordBatchStream;
use deltalake::protocol::SaveMode;
use tracing::info;

use crate::catalog::TableEntry;
use crate::delta::{self, Source, Staged};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

/// What a bulk load does when the table exists or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Create; fail if it exists.
    Create,
    /// Append; fail if it does not exist.
    Append,
    /// Create or replace.
    Replace,
    /// Create if missing, else append.
    CreateAppend,
}

impl LoadMode {
    /// How logs name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            LoadMode::Create => "create",
            LoadMode::Append => "append",
            LoadMode::Replace => "replace",
            LoadMode::CreateAppend => "create_append",
        }
    }
}

impl Engine {
    /// Load `input` into `target` as `mode` says; returns the rows loaded.
    pub async fn bulk_load(
        &self,
        session: &Session,
        target: &TableReference,
        input: SendableRecordBatchStream,
        mode: LoadMode,
    ) -> Result<u64> {
        let (schema_name, table) = self.resolve(session, target)?;
        let snapshot = self.store.refresh().await?;
        if !snapshot.schemas.contains_key(&schema_name) {
            return Err(Error::NotFound { kind: "schema", name: schema_name });
        }
        let existing = snapshot.table(&schema_name, &table).cloned();
        let full = format!("{schema_name}.{table}");
        match (&existing, mode) {
            (None, LoadMode::Append) => return Err(Error::NotFound { kind: "table", name: full }),
            (Some(_), LoadMode::Create) => return Err(Error::AlreadyExists { kind: "table", name: full }),
            (Some(TableEntry::Managed { .. }) | None, _) => {}
            (Some(_), _) => {
                return Err(Error::invalid(format!("{full} is not a managed table: cannot load into it")));
            }
        }
        let schema = input.schema();
        // Appending: the table's columns, checked before anything is staged.
        let append_to = match &existing {
            Some(TableEntry::Managed { location, .. }) if mode != LoadMode::Replace => {
                let table_delta = delta::open_table(self.warehouse(), location).await?;
                let columns = table_delta.snapshot()?.snapshot().arrow_schema();
                if columns.fields().len() != schema.fields().len() {
                    return Err(Error::invalid(format!(
                        "ingested data has {} columns, {full} has {}",
                        schema.fields().len(),
                        columns.fields().len()
                    )));
                }
                Some((table_delta, columns))
            }
            _ => None,
        };
        let staged = Staged::write(session.ctx(), input, &[], "ingest staging").await?;
        let rows = staged.rows;
        // Read back as nullable, as ingested tables' columns are (a later append may hold NULLs).
        let nullable = Schema::new_with_metadata(
            schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            schema.metadata().clone(),
        );
        match append_to {
            // Into the existing table (append, create_append), matching its columns by position.
            Some((table_delta, columns)) => {
                if rows > 0 {
                    let props = delta::table_writer_properties(&table_delta)?;
                    table_delta
                        .write(Vec::<RecordBatch>::new())
                        .with_writer_properties(props)
                        .with_input_plan(delta::cast_plan_to(staged.scan(session.ctx(), &nullable).await?, &columns)?)
                        .with_session_state(delta::delta_session(session))
                        .with_save_mode(SaveMode::Append)
                        .await?;
                }
            }
            // A new table (create, create_append, replace), swapped in by one catalog commit.
            None => {
                let replace = mode == LoadMode::Replace;
                let source = if rows == 0 {
                    Source::Empty(schema)
                } else {
                    let plan = delta::delta_compatible_plan(staged.scan(session.ctx(), &nullable).await?)?;
                    Source::Plan(plan, Box::new(session.clone()))
                };
                let location = delta::create_table(self.warehouse(), &schema_name, &table, source, &[]).await?;
                let entry = TableEntry::Managed { location: location.clone(), partition_columns: Vec::new() };
                if let Err(e) = self.put_entry(&schema_name, &table, entry, false, replace, "table").await {
                    delta::delete_location(self.warehouse(), &location).await;
                    return Err(e);
                }
            }
        }
        drop(staged);
        info!(table = %full, rows, mode = mode.as_str(), "bulk load committed");
        Ok(rows)
    }
}
