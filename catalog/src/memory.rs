//! Per-query memory accounting on top of the server-wide pool.
//!
//! Every session gets a [`QueryPool`]: reservations are checked against the query's own cap (a
//! `FairSpillPool`, so the query's spilling operators share it fairly) and then against the
//! global pool (also a `FairSpillPool`, shared by every running query). Whichever refuses first
//! makes the operator spill, or the query fail with ResourcesExhausted naming its biggest
//! consumers. The pool also keeps the query's peak, reported when the query ends.
//!
//! [`MemoryAwareJoinSelection`] picks sort-merge over hash joins when a build side would not
//! fit the per-query cap.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::compute::SortOptions;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, JoinType, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use tracing::debug;

/// One query's view of the memory pool: its own cap, then the global pool.
#[derive(Debug)]
pub struct QueryPool {
    local: TrackConsumersPool<FairSpillPool>,
    global: Arc<dyn MemoryPool>,
    limit: usize,
    peak: AtomicUsize,
    spill_count: AtomicUsize,
    spilled_bytes: AtomicUsize,
}

impl QueryPool {
    /// A pool capping one query at `limit` bytes inside `global`.
    pub fn new(global: Arc<dyn MemoryPool>, limit: usize) -> Self {
        let top = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        Self {
            local: TrackConsumersPool::new(FairSpillPool::new(limit), top),
            global,
            limit,
            peak: AtomicUsize::new(0),
            spill_count: AtomicUsize::new(0),
            spilled_bytes: AtomicUsize::new(0),
        }
    }

    /// Highest reservation total since creation or the last [`QueryPool::reset`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Start measuring a new statement: peak from what is reserved now, no spills.
    pub fn reset(&self) {
        self.peak.store(self.local.reserved(), Ordering::Relaxed);
        self.spill_count.store(0, Ordering::Relaxed);
        self.spilled_bytes.store(0, Ordering::Relaxed);
    }

    /// Count spills of a plan this query executed.
    pub fn add_spills(&self, count: usize, bytes: usize) {
        self.spill_count.fetch_add(count, Ordering::Relaxed);
        self.spilled_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Spill files written and their bytes since the last [`QueryPool::reset`].
    pub fn spills(&self) -> (usize, usize) {
        (self.spill_count.load(Ordering::Relaxed), self.spilled_bytes.load(Ordering::Relaxed))
    }

    /// The per-query cap in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn note_peak(&self) {
        self.peak.fetch_max(self.local.reserved(), Ordering::Relaxed);
    }
}

/// Say which of the two caps refused a reservation.
fn which_cap(e: DataFusionError, cap: &str) -> DataFusionError {
    match e {
        DataFusionError::ResourcesExhausted(message) => DataFusionError::ResourcesExhausted(format!("{message} [{cap}]")),
        other => other,
    }
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query pool (cap {} bytes) within {}", self.limit, self.global)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "QueryPool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.local.register(consumer);
        self.global.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.local.unregister(consumer);
        self.global.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.local.grow(reservation, additional);
        self.global.grow(reservation, additional);
        self.note_peak();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.local.shrink(reservation, shrink);
        self.global.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.local.try_grow(reservation, additional).map_err(|e| {
            which_cap(e, &format!("this query's cap, --query-memory-limit = {} bytes", self.limit))
        })?;
        if let Err(e) = self.global.try_grow(reservation, additional) {
            self.local.shrink(reservation, additional);
            return Err(which_cap(e, "the server-wide cap shared by all queries, --memory-limit"));
        }
        self.note_peak();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.local.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

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
    let width: usize = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(24))
        .sum();
    Some(estimated_rows(plan)?.saturating_mul(width.max(1)))
}

fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    if let Ok(stats) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) {
        if let Some(rows) = stats.num_rows.get_value() {
            return Some(*rows);
        }
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
