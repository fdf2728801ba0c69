//! `INSERT OVERWRITE` into a partitioned managed table replaces only the partitions that the
//! new rows fall in (dynamic partition overwrite), in one Delta commit: rerunning a daily job
//! for one day replaces that day and leaves the others alone, and a failed run changes nothing.
//! Unpartitioned tables are overwritten whole by DataFusion's Delta sink.

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan};
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
        // The rows it reads of the table itself and the commit must see one snapshot: the
        // input was planned on an older one, and a row appended in between (a pipe's batch)
        // would otherwise be neither in the new rows nor a conflict — silently lost. So the
        // table is opened once, here, its scans in the input are pointed at that snapshot, and
        // the write commits on it (a later append to a replaced partition is a conflict).
        let table_delta = delta::open_table(self.warehouse(), &location).await?;
        let pinned = provider_as_source(table_delta.table_provider().await?);
        let input = (*dml.input)
            .clone()
            .transform_up(|plan| match plan {
                LogicalPlan::TableScan(mut scan)
                    if self.resolve(session, &scan.table_name).is_ok_and(|t| t == (schema.clone(), table.clone())) =>
                {
                    scan.source = Arc::clone(&pinned);
                    Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        let input = delta::delta_compatible_plan(input)?;
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
        let props = delta::table_writer_properties(&table_delta)?;
        table_delta
            .write(Vec::<arrow::record_batch::RecordBatch>::new())
            .with_writer_properties(props)
            .with_input_plan(staged.scan(session.ctx(), &columns).await?)
            .with_session_state(delta::delta_session(session))
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate)
            .await?;
        let partitions = staged.tuples.len();
        drop(staged);
        info!(schema = %schema, table = %table, rows, partitions, "partitions overwritten");
        Ok(Some(rows))
    }
}
