//! `UPDATE` and `DELETE` on a managed table, as one Delta commit each (deltalake rewrites only
//! the files holding matching rows). Predicates and new values may use the table's own columns
//! and any expression; subqueries and joins are refused with a clear message.

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, WriteOp};
use tracing::info;

use crate::catalog::TableEntry;
use crate::delta;
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

impl Engine {
    pub(crate) async fn update_or_delete(&self, session: &Session, dml: &DmlStatement) -> Result<u64> {
        let (schema, table) = self.resolve(session, &dml.table_name)?;
        let verb = if dml.op == WriteOp::Delete { "DELETE" } else { "UPDATE" };
        let location = match self.store.refresh().await?.table(&schema, &table) {
            Some(TableEntry::Managed { location, .. }) => location.clone(),
            Some(_) => {
                return Err(Error::not_supported(format!(
                    "{verb} works on managed tables; {schema}.{table} is an external table or a view"
                )));
            }
            None => return Err(Error::NotFound { kind: "table", name: format!("{schema}.{table}") }),
        };
        let (assignments, predicate) = decompose_dml_input(&dml.input, verb)?;
        let table_delta = delta::open_table(self.warehouse(), &location).await?;
        let rows = if dml.op == WriteOp::Delete {
            let props = delta::table_writer_properties(&table_delta)?;
            let mut builder = table_delta.delete().with_writer_properties(props);
            if let Some(p) = predicate {
                builder = builder.with_predicate(unqualify(p)?);
            }
            let (_, metrics) = builder.with_session_state(delta::delta_session(session)).await?;
            metrics.num_deleted_rows.unwrap_or(0) as u64
        } else {
            let props = delta::table_writer_properties(&table_delta)?;
            let mut builder = table_delta.update().with_writer_properties(props);
            for (column, value) in assignments {
                builder = builder.with_update(column.as_str(), unqualify(value)?);
            }
            if let Some(p) = predicate {
                builder = builder.with_predicate(unqualify(p)?);
            }
            let (_, metrics) = builder.with_session_state(delta::delta_session(session)).await?;
            metrics.num_updated_rows as u64
        };
        info!(schema = %schema, table = %table, rows, op = verb, "rows changed");
        Ok(rows)
    }
}

/// `(column, new value)` pairs of an UPDATE.
type Assignments = Vec<(String, Expr)>;

/// Split the input DataFusion plans for `DELETE`/`UPDATE` into `(column, new value)` pairs
/// and the row predicate. The input is `[Projection] [Filter] TableScan`.
fn decompose_dml_input(plan: &LogicalPlan, verb: &str) -> Result<(Assignments, Option<Expr>)> {
    let mut node = plan;
    let mut assignments = Vec::new();
    if let LogicalPlan::Projection(p) = node {
        for (expr, field) in p.expr.iter().zip(p.schema.fields()) {
            let value = match expr {
                Expr::Alias(a) => a.expr.as_ref(),
                other => other,
            };
            let unchanged = matches!(value, Expr::Column(c) if c.name == *field.name());
            if !unchanged {
                assignments.push((field.name().clone(), value.clone()));
            }
        }
        node = p.input.as_ref();
    }
    let mut predicate = None;
    if let LogicalPlan::Filter(f) = node {
        predicate = Some(f.predicate.clone());
        node = f.input.as_ref();
    }
    let mut has_subquery = false;
    for e in assignments.iter().map(|(_, e)| e).chain(predicate.iter()) {
        e.apply(|x| {
            if matches!(x, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)) {
                has_subquery = true;
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    if has_subquery || !matches!(node, LogicalPlan::TableScan(_)) {
        return Err(Error::not_supported(format!(
            "{verb} supports conditions and values over the table's own columns, without subqueries or joins"
        )));
    }
    Ok((assignments, predicate))
}

/// Column references without the table qualifier, as deltalake resolves them.
fn unqualify(expr: Expr) -> Result<Expr> {
    Ok(expr
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => {
                Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name))))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}
