//! The memory-aware join choice: hash join where the build side fits, sort-merge (which
//! spills) where it would not.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use tracing::debug;

/// Physical optimizer rule: a hash join whose build side would not fit its share of the
/// per-query memory cap becomes a sort-merge join, which spills; small joins stay hash joins.
///
/// DataFusion's hash join keeps its whole build side in memory and cannot spill, so under a cap
/// a large x large join fails with ResourcesExhausted, while its sort-merge join sorts both
/// inputs (sorts spill) and buffers only one key's rows at a time. Switching every join
/// (`prefer_hash_join = false`) would slow the many small joins, so the choice is per join,
/// from the build side's estimated size: rows x (the row's fixed width + 24 bytes per variable
/// width column), tripled for the hash table and batch overheads, against a quarter of the
/// per-query cap. Joins
/// whose build size is unknown keep the hash join. Runs right after `join_selection`, so the
/// distribution and sorting rules that follow add the repartitions and sorts the merge needs.
#[derive(Debug)]
pub struct MemoryAwareJoinSelection {
    budget: usize,
}

impl MemoryAwareJoinSelection {
    /// Hash joins may use up to a quarter of `query_memory_limit` for their build side.
    pub fn new(query_memory_limit: usize) -> Self {
        Self { budget: query_memory_limit / 4 }
    }

    /// Name of the rule after which this one is inserted.
    pub const AFTER: &'static str = "join_selection";
}

/// Estimated bytes of a plan's output: its rows (from statistics, or else an upper bound from
/// its input: an aggregate, filter or projection never outputs more rows than it reads; a union
/// outputs the sum) times the row width of its schema. `None` when nothing bounds the rows.
pub fn estimated_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let width: usize = plan.schema().fields().iter().map(|f| f.data_type().primitive_width().unwrap_or(24)).sum();
    Some(estimated_rows(plan)?.saturating_mul(width.max(1)))
}

fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    if let Ok(stats) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())
        && let Some(rows) = stats.num_rows.get_value()
    {
        return Some(*rows);
    }
    if plan.is::<HashJoinExec>() || plan.is::<SortMergeJoinExec>() {
        return None; // a join can multiply rows
    }
    let children = plan.children();
    if children.is_empty() {
        return None;
    }
    children.into_iter().map(estimated_rows).try_fold(0usize, |sum, rows| Some(sum.saturating_add(rows?)))
}

impl PhysicalOptimizerRule for MemoryAwareJoinSelection {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let budget = self.budget;
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let convertible = join.projection.is_none()
                && !join.null_aware
                && matches!(
                    join.join_type,
                    JoinType::Inner
                        | JoinType::Left
                        | JoinType::Right
                        | JoinType::Full
                        | JoinType::LeftSemi
                        | JoinType::RightSemi
                        | JoinType::LeftAnti
                        | JoinType::RightAnti
                );
            let Some(build) = estimated_bytes(&join.left) else {
                return Ok(Transformed::no(node));
            };
            let needed = build.saturating_mul(3);
            if !convertible || needed <= budget {
                return Ok(Transformed::no(node));
            }
            let smj = SortMergeJoinExec::try_new(
                Arc::clone(&join.left),
                Arc::clone(&join.right),
                join.on.clone(),
                join.filter.clone(),
                join.join_type,
                vec![SortOptions::default(); join.on.len()],
                join.null_equality,
            )?;
            debug!(build_bytes = build, budget, join_type = ?join.join_type, "hash join -> sort-merge join");
            Ok(Transformed::yes(Arc::new(smj) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "memory_aware_join_selection"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::session::{Engine, EngineConfig};
    use crate::sql::Planned;

    /// Engine over `dir` whose queries may each use `query_cap` bytes.
    async fn engine(dir: &std::path::Path, query_cap: usize) -> Engine {
        let mut config = EngineConfig::new(dir.to_string_lossy(), 4 << 30);
        config.query_memory_limit = Some(query_cap);
        Engine::open(config).await.unwrap()
    }

    /// The physical plan of `sql` as text.
    async fn plan_text(engine: &Engine, sql: &str) -> String {
        let session = engine.session();
        let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!("not a query: {sql}") };
        let physical = session.physical_plan(plan).await.unwrap();
        datafusion::physical_plan::displayable(physical.as_ref()).indent(false).to_string()
    }

    #[tokio::test]
    async fn joins_become_sort_merge_only_when_the_build_side_would_not_fit() {
        // Two managed tables of 2 M and 1 k rows: Delta's statistics give the row counts. The
        // 2 M-row build side (~16 MB of keys, x3 for a hash table) is over a quarter of a 16 MiB
        // per-query cap and well under a quarter of 1 GiB.
        let dir = tempfile::tempdir().unwrap();
        let setup = engine(dir.path(), 1 << 30).await;
        let session = setup.session();
        for sql in [
            "CREATE TABLE big AS SELECT value AS k FROM generate_series(1, 2000000)",
            "CREATE TABLE small AS SELECT value AS k FROM generate_series(1, 1000)",
        ] {
            let planned = setup.plan_sql(&session, sql).await.unwrap();
            setup.run_command(&session, planned).await.unwrap();
        }
        let join = "SELECT count(*) FROM big a JOIN big b ON a.k = b.k";
        let roomy = plan_text(&setup, join).await;
        assert!(roomy.contains("HashJoinExec") && !roomy.contains("SortMergeJoin"), "{roomy}");
        let tight = engine(dir.path(), 16 << 20).await;
        let plan = plan_text(&tight, join).await;
        assert!(plan.contains("SortMergeJoin") && !plan.contains("HashJoinExec"), "{plan}");
        // A small build side stays a hash join even under the tight cap.
        let plan = plan_text(&tight, "SELECT count(*) FROM big a JOIN small b ON a.k = b.k").await;
        assert!(plan.contains("HashJoinExec") && !plan.contains("SortMergeJoin"), "{plan}");
    }
}
