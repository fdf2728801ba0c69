//! `MERGE INTO` a managed table, as one Delta commit (deltalake's merge).
//!
//! DataFusion plans the statement (`WriteOp::MergeInto`: the `ON` condition and the `WHEN`
//! clauses, with the `USING` relation as input) but no table provider executes it. Here the
//! source is run **once** into a staging file (an HTTP source is fetched once, every page
//! checked, before anything is written), its join keys are checked for duplicates, and the
//! clauses are handed to deltalake in their SQL order with the target and source columns
//! renamed to deltalake's aliases. A merge that changes no row makes no commit.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::dml::{MergeIntoAction, MergeIntoClauseKind, MergeIntoOp};
use datafusion::logical_expr::{BinaryExpr, DmlStatement, Expr, LogicalPlan, Operator};
use datafusion::prelude::DataFrame;
use tracing::info;

use crate::catalog::TableEntry;
use crate::delta::{self, Staged};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

/// deltalake's names for the two sides inside the merge.
const TARGET: &str = "__merge_target";
const SOURCE: &str = "__merge_source";

impl Engine {
    /// Run `MERGE INTO`; returns the rows inserted, updated and deleted together.
    pub(crate) async fn merge_into(&self, session: &Session, dml: &DmlStatement, op: &MergeIntoOp) -> Result<u64> {
        let (schema, table) = self.resolve(session, &dml.table_name)?;
        let location = match self.store.refresh().await?.table(&schema, &table) {
            Some(TableEntry::Managed { location, .. }) => location.clone(),
            Some(_) => {
                return Err(Error::not_supported(format!(
                    "MERGE INTO works on managed tables; {schema}.{table} is an external table or a view"
                )));
            }
            None => return Err(Error::NotFound { kind: "table", name: format!("{schema}.{table}") }),
        };
        reject_subqueries(op)?;
        let source_schema = dml.input.schema();
        let mut names = std::collections::HashSet::new();
        for field in source_schema.fields() {
            if !names.insert(field.name().as_str()) {
                return Err(Error::invalid(format!(
                    "MERGE INTO: the USING relation has two columns named '{}'; give them distinct aliases",
                    field.name()
                )));
            }
        }
        let rename = Renamer {
            target: dml.table_name.clone(),
            sources: source_schema.iter().filter_map(|(q, _)| q.cloned()).collect(),
        };
        let on = rename.apply(op.on.clone())?;

        // The source runs once, into a staging file in the spill folder: deltalake reads its
        // input twice (statistics for pruning, then the join), and the keys are checked below.
        let physical = session.physical_plan(delta::delta_compatible_plan((*dml.input).clone())?).await?;
        let arrow_schema = physical.schema();
        let stream = session.execute(physical)?;
        let staged = Staged::write(session.ctx(), stream, &[], "MERGE INTO source").await?;
        let source_plan = staged.scan(session.ctx(), &arrow_schema).await?;
        check_unique_keys(session, &source_plan, &on).await?;

        let table_delta = delta::open_table(self.warehouse(), &location).await?;
        let target_columns: Vec<String> =
            table_delta.snapshot()?.schema().fields().map(|f| f.name().to_string()).collect();
        let source = DataFrame::new(session.ctx().state(), source_plan);
        let props = delta::table_writer_properties(&table_delta)?;
        let mut builder = table_delta
            .merge(source, on)
            .with_writer_properties(props)
            .with_target_alias(TARGET)
            .with_source_alias(SOURCE)
            .with_session_state(delta::delta_session(session));
        for clause in &op.clauses {
            let predicate = clause.predicate.clone().map(|p| rename.apply(p)).transpose()?;
            let kind = clause.kind.canonical();
            builder = match (&clause.action, kind) {
                (
                    MergeIntoAction::Update(assignments),
                    MergeIntoClauseKind::Matched | MergeIntoClauseKind::NotMatchedBySource,
                ) => {
                    let mut sets = Vec::with_capacity(assignments.len());
                    for (column, value) in assignments {
                        sets.push((column.clone(), rename.apply(value.clone())?));
                    }
                    let build = move |mut u: deltalake::operations::merge::UpdateBuilder| {
                        if let Some(p) = predicate {
                            u = u.predicate(p);
                        }
                        for (column, value) in sets {
                            u = u.update(Column::new_unqualified(column), value);
                        }
                        u
                    };
                    if kind == MergeIntoClauseKind::Matched {
                        builder.when_matched_update(build)?
                    } else {
                        builder.when_not_matched_by_source_update(build)?
                    }
                }
                (MergeIntoAction::Delete, MergeIntoClauseKind::Matched | MergeIntoClauseKind::NotMatchedBySource) => {
                    let build = move |mut d: deltalake::operations::merge::DeleteBuilder| {
                        if let Some(p) = predicate {
                            d = d.predicate(p);
                        }
                        d
                    };
                    if kind == MergeIntoClauseKind::Matched {
                        builder.when_matched_delete(build)?
                    } else {
                        builder.when_not_matched_by_source_delete(build)?
                    }
                }
                (MergeIntoAction::Insert { columns, values }, MergeIntoClauseKind::NotMatchedByTarget) => {
                    let columns = if columns.is_empty() { target_columns.clone() } else { columns.clone() };
                    if columns.len() != values.len() {
                        return Err(Error::invalid(format!(
                            "MERGE INTO: INSERT names {} columns but gives {} values",
                            columns.len(),
                            values.len()
                        )));
                    }
                    let mut sets = Vec::with_capacity(values.len());
                    for (column, value) in columns.into_iter().zip(values) {
                        sets.push((column, rename.apply(value.clone())?));
                    }
                    builder.when_not_matched_insert(move |mut i| {
                        if let Some(p) = predicate {
                            i = i.predicate(p);
                        }
                        for (column, value) in sets {
                            i = i.set(Column::new_unqualified(column), value);
                        }
                        i
                    })?
                }
                (action, kind) => {
                    let action = match action {
                        MergeIntoAction::Update(_) => "UPDATE",
                        MergeIntoAction::Insert { .. } => "INSERT",
                        MergeIntoAction::Delete => "DELETE",
                    };
                    let when = match kind {
                        MergeIntoClauseKind::Matched => "WHEN MATCHED",
                        MergeIntoClauseKind::NotMatchedBySource => "WHEN NOT MATCHED BY SOURCE",
                        _ => "WHEN NOT MATCHED",
                    };
                    return Err(Error::invalid(format!("MERGE INTO: {when} cannot {action}")));
                }
            };
        }
        let (_, metrics) = builder.await?;
        drop(staged);
        let changed =
            metrics.num_target_rows_inserted + metrics.num_target_rows_updated + metrics.num_target_rows_deleted;
        info!(
            schema = %schema,
            table = %table,
            source_rows = metrics.num_source_rows,
            inserted = metrics.num_target_rows_inserted,
            updated = metrics.num_target_rows_updated,
            deleted = metrics.num_target_rows_deleted,
            files_added = metrics.num_target_files_added,
            files_removed = metrics.num_target_files_removed,
            "merged"
        );
        Ok(changed as u64)
    }
}

/// Renames column qualifiers to deltalake's aliases: the target table's to [`TARGET`], every
/// qualifier of the `USING` relation to [`SOURCE`].
struct Renamer {
    target: TableReference,
    sources: Vec<TableReference>,
}

impl Renamer {
    fn apply(&self, expr: Expr) -> Result<Expr> {
        Ok(expr
            .transform(|e| match e {
                Expr::Column(c) => {
                    let side = match &c.relation {
                        Some(q) if q.resolved_eq(&self.target) => TARGET,
                        Some(q) if self.sources.iter().any(|s| s.resolved_eq(q)) => SOURCE,
                        // Unqualified: the planner resolved it; only the source can be unnamed.
                        None => SOURCE,
                        Some(_) => return Ok(Transformed::no(Expr::Column(c))),
                    };
                    Ok(Transformed::yes(Expr::Column(Column::new(Some(TableReference::bare(side)), c.name))))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data)
    }
}

fn reject_subqueries(op: &MergeIntoOp) -> Result<()> {
    let mut found = false;
    for e in op.exprs() {
        e.apply(|x| {
            if matches!(x, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)) {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    if found {
        return Err(Error::not_supported(
            "MERGE INTO conditions and values cannot contain subqueries; join what you need into the USING relation",
        ));
    }
    Ok(())
}

/// The source columns that `ON` compares for equality with a target column (`t.a = s.b AND ...`).
fn source_keys(on: &Expr) -> Vec<String> {
    let mut keys = Vec::new();
    let mut stack = vec![on];
    while let Some(e) = stack.pop() {
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e {
            match op {
                Operator::And => {
                    stack.push(left);
                    stack.push(right);
                }
                Operator::Eq => {
                    let side = |x: &Expr| match x {
                        Expr::Column(c) => c.relation.as_ref().map(|r| (r.table() == SOURCE, c.name.clone())),
                        _ => None,
                    };
                    match (side(left), side(right)) {
                        (Some((true, s)), Some((false, _))) | (Some((false, _)), Some((true, s))) => keys.push(s),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A source row may match at most one target row's key: two source rows with the same
/// (non-NULL) key would update one target row twice or insert the key twice.
async fn check_unique_keys(session: &Session, source: &LogicalPlan, on: &Expr) -> Result<()> {
    let keys = source_keys(on);
    if keys.is_empty() {
        return Ok(());
    }
    let key_cols: Vec<Expr> = keys.iter().map(|k| Expr::Column(Column::new_unqualified(k.clone()))).collect();
    let not_null = key_cols.iter().cloned().map(Expr::is_not_null).reduce(Expr::and);
    let mut df = DataFrame::new(session.ctx().state(), source.clone());
    if let Some(p) = not_null {
        df = df.filter(p)?;
    }
    let count = datafusion::functions_aggregate::count::count_all();
    let dupes = df
        .aggregate(key_cols, vec![count.alias("n")])?
        .filter(Expr::Column(Column::new_unqualified("n")).gt(datafusion::prelude::lit(1i64)))?
        .limit(0, Some(1))?
        .create_physical_plan()
        .await?;
    let dupes = datafusion::physical_plan::common::collect(session.execute(dupes)?).await?;
    let Some(batch) = dupes.iter().find(|b| b.num_rows() > 0) else {
        return Ok(());
    };
    let key = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let value = arrow::util::display::array_value_to_string(batch.column(i), 0).unwrap_or_default();
            format!("{k} = {value}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let n = arrow::util::display::array_value_to_string(batch.column(keys.len()), 0).unwrap_or_default();
    Err(Error::invalid(format!(
        "MERGE INTO: the USING relation has {n} rows with {key}; each key may appear once \
         (deduplicate the source, e.g. with row_number() OVER (PARTITION BY key ORDER BY ...) = 1)"
    )))
}
