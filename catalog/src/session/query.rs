//! One caller's session: a DataFusion context for planning, and a runtime whose memory pool is
//! its own [`QueryPool`], so what it runs is capped at the per-query limit and measured (peak
//! reserved memory, spills).
//!
//! Every plan a session runs goes through [`Session::execute`], which runs it under the
//! session's runtime and adds the plan's spill figures to the session's statistics when its
//! stream ends or is dropped: the one place where "execute, then record what it spilled"
//! happens. The context itself keeps the engine's shared runtime: planning reserves no memory,
//! and building a context per statement with its own runtime cost more than the statement.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::Stream;

use super::pool::QueryPool;
use crate::error::Result;

/// What one statement cost: its peak reserved memory and what it spilled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Highest total the statement's operators had reserved in the memory pool, in bytes.
    pub peak_memory: usize,
    /// Spill files written.
    pub spill_count: usize,
    /// Bytes written to spill files.
    pub spilled_bytes: usize,
    /// Jobs it ran on a cluster ([`crate::session::CLUSTER_JOB_NODE`]): 0 when it ran here.
    pub cluster_jobs: usize,
}

/// A session over the engine's catalog and functions with its own per-query pool.
#[derive(Clone)]
pub struct Session {
    ctx: SessionContext,
    /// The engine's runtime with `pool` as its memory pool: what plans execute under.
    runtime: Arc<RuntimeEnv>,
    pool: Arc<QueryPool>,
    origin: Origin,
}

/// Who runs a session's statements and how they came, as `system.queries` shows them.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The user (`embedded` for the command line without a server).
    pub user: String,
    /// `embedded`, `flight_sql` or `task`.
    pub protocol: &'static str,
    /// The task and run id, for a task run's session.
    pub run: Option<(String, String)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("session_id", &self.ctx.session_id()).finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(ctx: SessionContext, runtime: Arc<RuntimeEnv>, pool: Arc<QueryPool>) -> Self {
        Self { ctx, runtime, pool, origin: Origin { user: "embedded".into(), protocol: "embedded", run: None } }
    }

    /// The same session, its statements attributed to `origin`.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// The session, its statements attributed to `user` over `protocol`.
    pub fn for_user(self, user: &str, protocol: &'static str) -> Self {
        self.with_origin(Origin { user: user.to_string(), protocol, run: None })
    }

    /// Who runs this session's statements.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The DataFusion context (planning, `ctx.sql`, table lookups). Run what it plans with
    /// [`Session::execute`]: the context's own task context has no per-query cap.
    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// What this session's statements cost since the last [`Session::reset_stats`].
    pub fn stats(&self) -> QueryStats {
        let (spill_count, spilled_bytes) = self.pool.spills();
        QueryStats { peak_memory: self.pool.peak(), spill_count, spilled_bytes, cluster_jobs: self.pool.cluster_jobs() }
    }

    /// Start measuring the next statement.
    pub fn reset_stats(&self) {
        self.pool.reset();
    }

    /// The physical plan of a query, DML or session statement.
    pub async fn physical_plan(&self, plan: LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        let df = self.ctx.execute_logical_plan(plan).await?;
        Ok(df.create_physical_plan().await?)
    }

    /// The runtime the session's plans execute under: the engine's, with the per-query pool.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// The session's functions and settings with its own runtime (the per-query pool).
    pub fn task_ctx(&self) -> Arc<TaskContext> {
        let task = TaskContext::from(&*self.ctx.state_ref().read());
        Arc::new(task.with_runtime(Arc::clone(&self.runtime)))
    }

    /// Run a physical plan as a stream of batches; its spills are added to [`Session::stats`]
    /// when the stream ends or is dropped.
    pub fn execute(&self, plan: Arc<dyn ExecutionPlan>) -> Result<SendableRecordBatchStream> {
        self.pool.add_cluster_jobs(cluster_jobs(&plan));
        let inner = datafusion::physical_plan::execute_stream(Arc::clone(&plan), self.task_ctx())?;
        Ok(Box::pin(RecordSpills { inner, plan, pool: Arc::clone(&self.pool), recorded: false }))
    }
}

/// Jobs a plan sends to a cluster: its nodes named [`crate::session::CLUSTER_JOB_NODE`].
fn cluster_jobs(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = usize::from(plan.name() == super::engine::CLUSTER_JOB_NODE);
    own + plan.children().into_iter().map(cluster_jobs).sum::<usize>()
}

/// Spill files and bytes written by every operator of an executed plan.
fn plan_spills(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
    let (mut count, mut bytes) =
        plan.metrics().map_or((0, 0), |m| (m.spill_count().unwrap_or(0), m.spilled_bytes().unwrap_or(0)));
    for child in plan.children() {
        let (c, b) = plan_spills(child);
        count += c;
        bytes += b;
    }
    (count, bytes)
}

/// A plan's stream that, once finished or dropped, adds the plan's spills to its session.
struct RecordSpills {
    inner: SendableRecordBatchStream,
    plan: Arc<dyn ExecutionPlan>,
    pool: Arc<QueryPool>,
    recorded: bool,
}

impl RecordSpills {
    fn record(&mut self) {
        if !self.recorded {
            self.recorded = true;
            let (count, bytes) = plan_spills(&self.plan);
            self.pool.add_spills(count, bytes);
        }
    }
}

impl Stream for RecordSpills {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            self.record();
        }
        next
    }
}

impl RecordBatchStream for RecordSpills {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for RecordSpills {
    fn drop(&mut self) {
        self.record();
    }
}

#[cfg(test)]
mod tests {
    use crate::session::{Engine, EngineConfig};

    /// What a statement runs counts in its session's pool, whichever way it runs: a query
    /// through `execute`, a CTAS through Delta's sink. Run under the engine's own runtime instead,
    /// the session's peak would stay 0.
    #[tokio::test]
    async fn statements_reserve_in_their_sessions_pool() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        for sql in [
            "SELECT value FROM generate_series(1, 200000) ORDER BY value DESC",
            "CREATE TABLE sorted AS SELECT value AS k FROM generate_series(1, 200000) ORDER BY k DESC",
        ] {
            let session = engine.session();
            let planned = engine.plan_sql(&session, sql).await.unwrap();
            match planned {
                crate::sql::Planned::Query(plan) => {
                    let physical = session.physical_plan(plan).await.unwrap();
                    datafusion::physical_plan::common::collect(session.execute(physical).unwrap()).await.unwrap();
                }
                other => {
                    engine.run_command(&session, other).await.unwrap();
                }
            }
            assert!(session.stats().peak_memory > 0, "{sql}: nothing reserved in the session's pool");
            assert_eq!(engine.memory_in_use(), 0, "{sql}: memory left reserved");
        }
    }
}
