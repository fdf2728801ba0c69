//! Per-query memory accounting on top of the server-wide pool.
//!
//! Every session gets a [`QueryPool`]: reservations are checked against the query's own cap (a
//! `FairSpillPool`, so the query's spilling operators share it fairly) and then against the
//! global pool (also a `FairSpillPool`, shared by every running query). Whichever refuses first
//! makes the operator spill, or the query fail with ResourcesExhausted naming its biggest
//! consumers. The pool also keeps the query's peak, reported when the query ends.
//!
//! [`super::joins::MemoryAwareJoinSelection`] picks sort-merge over hash joins when a build
//! side would not fit the per-query cap.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};

/// One query's view of the memory pool: its own cap, then the global pool.
#[derive(Debug)]
pub struct QueryPool {
    local: TrackConsumersPool<FairSpillPool>,
    global: Arc<dyn MemoryPool>,
    limit: usize,
    peak: AtomicUsize,
    spill_count: AtomicUsize,
    spilled_bytes: AtomicUsize,
    cluster_jobs: AtomicUsize,
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
            cluster_jobs: AtomicUsize::new(0),
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
        self.cluster_jobs.store(0, Ordering::Relaxed);
    }

    /// Count jobs this query sent to a cluster.
    pub fn add_cluster_jobs(&self, jobs: usize) {
        self.cluster_jobs.fetch_add(jobs, Ordering::Relaxed);
    }

    /// Jobs sent to a cluster since the last [`QueryPool::reset`].
    pub fn cluster_jobs(&self) -> usize {
        self.cluster_jobs.load(Ordering::Relaxed)
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

/// Consumers whose reservations are counted but never refused. DataFusion 55.2's RepartitionExec
/// spills a batch it cannot reserve to a spill pool, and that pool can deadlock when two input
/// tasks spill at once (all workers parked, the query never ends: apache/datafusion#24883, fixed
/// upstream by #24891 after 55.2; seen here as pipeline B hanging under a cap). Its buffering is
/// bounded anyway (its channels close their gate once each holds a batch), so it is counted
/// (the query's peak and the pool's total show it) but never refused, so it never spills. The
/// fair pool's shares of the other spilling operators do not change.
fn never_refused(consumer: &MemoryConsumer) -> bool {
    consumer.name().starts_with("RepartitionExec")
}

/// Say which of the two caps refused a reservation.
fn which_cap(e: DataFusionError, cap: &str) -> DataFusionError {
    match e {
        DataFusionError::ResourcesExhausted(message) => {
            DataFusionError::ResourcesExhausted(format!("{message} [{cap}]"))
        }
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
        if never_refused(reservation.consumer()) {
            self.grow(reservation, additional);
            return Ok(());
        }
        self.local
            .try_grow(reservation, additional)
            .map_err(|e| which_cap(e, &format!("this query's cap, --query-memory-limit = {} bytes", self.limit)))?;
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

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::UnboundedMemoryPool;

    use super::*;

    #[test]
    fn repartition_is_counted_but_never_refused() {
        let pool: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(Arc::new(UnboundedMemoryPool::default()), 1000));
        let sort = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&pool);
        let repartition = MemoryConsumer::new("RepartitionExec[0]").with_can_spill(true).register(&pool);
        assert!(sort.try_grow(2000).is_err(), "over the cap: refused, so the sort spills");
        repartition.try_grow(2000).expect("RepartitionExec is never refused");
        assert_eq!(pool.reserved(), 2000, "but it is counted");
        // The fair pool gives each spilling consumer an equal share whatever the others hold:
        // the sort's share (half the cap) is unchanged.
        sort.try_grow(500).expect("within the sort's share");
        assert!(sort.try_grow(1).is_err());
        assert_eq!(pool.reserved(), 2500);
    }
}
