//! `INSERT OVERWRITE` into a partitioned managed table replaces only the partitions that the
//! new rows fall in (dynamic partition overwrite), in one Delta commit: rerunning a daily job
//! for one day replaces that day and leaves the others alone, and a failed run changes nothing.
//! Unpartitioned tables are overwritten whole by DataFusion's Delta sink.

use datafusion::common::Column;
use datafusion::logical_expr::{DmlStatement, Expr};
use deltalake::protocol::SaveMode;
use tracing::info;

use crate::catalog::TableEntry;
use crate::delta::{self, Staged};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

impl Engine {
    /// Returns `None` for tables without partitions (whole-table overwrite).
    pub(crate) async fn overwrite_partitions(&self, session: &Session, dml: &DmlStatement) -> Result<Option<u64>> {
        let (schema, table) = self.resolve(session, &dml.table_name)?;
        let Some(TableEntry::Managed { location, partition_columns }) =
            self.store.refresh().await?.table(&schema, &table).cloned()
        else {
            return Ok(None);
        };
        if partition_columns.is_empty() {
            return Ok(None);
        }
        // The new rows stream into a staging file in the spill directory (under --spill-max-size)
        // while their distinct partition values are collected, so the output never sits in
        // memory whatever its size; then one Delta write of the staged rows replaces exactly
        // those partitions. The staging file goes when `staged` is dropped, on every path.
        let input = delta::delta_compatible_plan((*dml.input).clone())?;
        let physical = session.physical_plan(input).await?;
        let columns = physical.schema();
        let indices = partition_columns
            .iter()
            .map(|c| columns.index_of(c).map_err(|e| Error::invalid(format!("INSERT OVERWRITE: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let stream = session.execute(physical)?;
        let staged = Staged::write(session.ctx(), stream, &indices, "INSERT OVERWRITE staging").await?;
        let rows = staged.rows;
        if rows == 0 {
            return Ok(Some(0));
        }
        let predicate = staged
            .tuples
            .iter()
            .map(|tuple| {
                partition_columns
                    .iter()
                    .zip(tuple)
                    .map(|(c, v)| {
                        let column = Expr::Column(Column::new_unqualified(c.clone()));
                        if v.is_null() { column.is_null() } else { column.eq(Expr::Literal(v.clone(), None)) }
                    })
                    .reduce(Expr::and)
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|conjunctions| conjunctions.into_iter().reduce(Expr::or))
            .ok_or_else(|| Error::internal("INSERT OVERWRITE staged rows but found no partition values"))?;
        let table_delta = delta::open_table(self.warehouse(), &location).await?;
        table_delta
            .write(Vec::<arrow::record_batch::RecordBatch>::new())
            .with_input_plan(staged.scan(session.ctx(), &columns).await?)
            .with_session_state(delta::delta_session(session.ctx()))
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate)
            .await?;
        let partitions = staged.tuples.len();
        drop(staged);
        info!(schema = %schema, table = %table, rows, partitions, "partitions overwritten");
        Ok(Some(rows))
    }
}
