//! Changing data: [`insert_overwrite`] (dynamic partition overwrite), [`update_delete`]
//! (deltalake's UPDATE and DELETE), [`merge`] (MERGE INTO, deltalake's merge) and
//! [`bulk_load`] (a client's upload, Flight SQL ingest).
//! A plain `INSERT INTO` runs on DataFusion with the Delta table provider, whose sink commits
//! once at the end, so a failed INSERT leaves the table exactly as it was.

pub mod bulk_load;
pub mod insert_overwrite;
pub mod merge;
pub mod update_delete;

use std::sync::Arc;

use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};

use crate::delta::count_rows;
use crate::error::Result;
use crate::session::{Engine, Session};

pub use bulk_load::LoadMode;

impl Engine {
    /// Run a DML plan to the end and return the number of rows it changed.
    pub async fn run_dml(&self, session: &Session, plan: LogicalPlan) -> Result<u64> {
        if let LogicalPlan::Dml(dml) = &plan {
            if let WriteOp::MergeInto(op) = &dml.op {
                return self.merge_into(session, dml, op).await;
            }
            if matches!(dml.op, WriteOp::Delete | WriteOp::Update) {
                return self.update_or_delete(session, dml).await;
            }
            if matches!(dml.op, WriteOp::Insert(InsertOp::Overwrite))
                && let Some(rows) = self.overwrite_partitions(session, dml).await?
            {
                return Ok(rows);
            }
        }
        let physical = session.physical_plan(plan).await?;
        count_rows(session.execute(Arc::clone(&physical))?).await
    }
}
