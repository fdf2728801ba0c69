//! The server side of a cluster: which plans run on the cluster and how they are sent there.
//!
//! [`ClusterPlanner`] is the query planner of every session of a server started with
//! `--cluster`. A query whose every table can be read on the cluster (managed tables read as
//! plain Parquet, listing tables) becomes one `DistributedQueryExec`: its optimized logical plan
//! goes to the scheduler, which plans stages for the executors; the server streams the result.
//! An INSERT whose rows can be read there is planned the same way, below the table's own sink:
//! the server writes the cluster's result stream and commits once. Anything else runs here as
//! without a cluster ([`Local`] says why): other statements (DDL, UPDATE, DELETE, MERGE),
//! queries that read no table, and queries reading what only the server can: system tables and
//! `information_schema` (they describe this server), JSON_API sources, tables needing the
//! Delta reader.
//!
//! `top_k_nearest(users_sql, items_sql, k)` runs on the cluster when both its queries can: the
//! server plans them here, against its catalog, and the job carries the plans (see
//! [`crate::codec`]). The users side is then spread over the executors' tasks, and each task
//! reads all the items (`TopKNearestExec` requires them as one partition, which Ballista makes
//! a stage of its own whose whole output every scoring task fetches).

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::CancelJobParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_connection};
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::{provider_as_source, source_as_provider};
use datafusion::common::internal_err;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::{StreamExt, TryStreamExt};
use streampulse_engine::{FileListTable, ManagedTable};
use streampulse_udfs::table::top_k_nearest::{TopKNearestPlanned, TopKNearestTable};
use tracing::{debug, info, warn};

use crate::codec::ClusterCodec;

/// Plans queries onto the cluster whose scheduler is at `scheduler_url`, the rest locally.
pub struct ClusterPlanner {
    scheduler_url: String,
    codec: Arc<ClusterCodec>,
    local: DefaultPhysicalPlanner,
}

impl std::fmt::Debug for ClusterPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPlanner").field("scheduler_url", &self.scheduler_url).finish_non_exhaustive()
    }
}

impl ClusterPlanner {
    /// A planner for the scheduler at `scheduler_url` (`http://host:port`).
    pub fn new(scheduler_url: String) -> Self {
        Self { scheduler_url, codec: Arc::new(ClusterCodec::default()), local: DefaultPhysicalPlanner::default() }
    }
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        // An INSERT (and CTAS, which the catalog runs as one): the rows come from the cluster,
        // the table's own sink writes them here, as one Delta commit.
        if let LogicalPlan::Dml(DmlStatement { target, op: WriteOp::Insert(op), input, .. }) = plan {
            let input = with_top_k_planned(input, session).await?;
            if why_local(&input)?.is_none() {
                debug!("insert reads on the cluster");
                let provider = source_as_provider(target)?;
                return provider.insert_into(session, self.distributed(&input, session), *op).await;
            }
        }
        let shipped = if statement(plan).is_some() { plan.clone() } else { with_top_k_planned(plan, session).await? };
        match why_local(&shipped)? {
            None => {
                debug!("query runs on the cluster");
                Ok(self.distributed(&shipped, session))
            }
            Some(local) => {
                // A query the cluster could run but for one part is worth a line at the
                // default level; statements and table-less queries always run here.
                match &local {
                    Local::Part(reason) => info!(reason, "query runs on the server, not the cluster"),
                    Local::Statement(reason) => debug!(reason, "statement runs on the server"),
                }
                self.local.create_physical_plan(plan, session).await
            }
        }
    }
}

impl ClusterPlanner {
    /// `plan` as one job on the cluster, its result streamed back.
    fn distributed(&self, plan: &LogicalPlan, session: &dyn Session) -> Arc<dyn ExecutionPlan> {
        let job = Arc::new(DistributedQueryExec::<LogicalPlanNode>::with_extension(
            self.scheduler_url.clone(),
            session.config().ballista_config(),
            plan.clone(),
            self.codec.clone(),
            session.session_id().to_string(),
        ));
        Arc::new(OnCluster { job, scheduler_url: self.scheduler_url.clone() })
    }
}

/// A job on the cluster, whose errors say so: Ballista reports an unreachable scheduler as a
/// bare transport error.
#[derive(Debug)]
struct OnCluster {
    job: Arc<dyn ExecutionPlan>,
    scheduler_url: String,
}

impl DisplayAs for OnCluster {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnCluster: scheduler={}", self.scheduler_url)
    }
}

impl ExecutionPlan for OnCluster {
    fn name(&self) -> &str {
        // The engine counts these per statement (system.queries.cluster_jobs).
        streampulse_engine::CLUSTER_JOB_NODE
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.job.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.job]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("OnCluster has one child, got {}", children.len());
        }
        Ok(Arc::new(OnCluster { job: children.remove(0), scheduler_url: self.scheduler_url.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let url = self.scheduler_url.clone();
        let stream = self.job.execute(partition, context).map_err(|e| on_cluster(e, &url))?;
        let schema = stream.schema();
        let stream =
            JobStream { inner: Some(stream), job: Arc::clone(&self.job), scheduler_url: url.clone(), ended: false };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream.map_err(move |e| on_cluster(e, &url)))))
    }
}

/// A job's result stream that cancels the job on the cluster when dropped before its end: a
/// cancelled or timed-out statement, a client gone. Ballista's stream does not, so the
/// executors would go on computing a result nobody reads.
struct JobStream {
    inner: Option<SendableRecordBatchStream>,
    job: Arc<dyn ExecutionPlan>,
    scheduler_url: String,
    ended: bool,
}

/// Longest wait, after its statement ended, for the scheduler to name a job so it can be
/// cancelled (the name comes with the job's first status).
const JOB_ID_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How often, meanwhile, to look whether it has.
const JOB_ID_POLL: std::time::Duration = std::time::Duration::from_millis(20);

impl futures::Stream for JobStream {
    type Item = Result<datafusion::arrow::record_batch::RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else { return std::task::Poll::Ready(None) };
        let polled = inner.poll_next_unpin(cx);
        // the end, or the job's failure: nothing left to cancel
        if let std::task::Poll::Ready(None | Some(Err(_))) = polled {
            self.ended = true;
        }
        polled
    }
}

impl Drop for JobStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (Some(mut inner), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let job = Arc::clone(&self.job);
        let url = std::mem::take(&mut self.scheduler_url);
        let job_id = move || job.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>().and_then(|j| j.job_id());
        runtime.spawn(async move {
            // Until the scheduler has named the job, Ballista's stream is what hears the name:
            // keep driving it (dropping what it yields), looking for the name between polls,
            // since the stream itself yields nothing before the job's end.
            let deadline = tokio::time::Instant::now() + JOB_ID_WAIT;
            loop {
                if let Some(id) = job_id() {
                    drop(inner);
                    cancel_job(url, id.into()).await;
                    return;
                }
                match tokio::time::timeout(JOB_ID_POLL, inner.next()).await {
                    Ok(Some(_)) => {}
                    // the job ended: nothing to cancel
                    Ok(None) => return,
                    Err(_) if tokio::time::Instant::now() >= deadline => return,
                    Err(_) => {}
                }
            }
        });
    }
}

async fn cancel_job(scheduler_url: String, job_id: String) {
    let address = scheduler_url.trim_start_matches("http://").to_string();
    let channel = match create_grpc_client_connection(scheduler_url, &GrpcClientConfig::default()).await {
        Ok(channel) => channel,
        Err(e) => {
            warn!(job = %job_id, scheduler = %address, error = %e, "cannot cancel a cluster job whose statement ended");
            return;
        }
    };
    let request = CancelJobParams { job_id: job_id.clone() };
    match SchedulerGrpcClient::new(channel).cancel_job(request).await {
        Ok(_) => info!(job = %job_id, scheduler = %address, "cluster job cancelled: its statement ended first"),
        Err(e) => warn!(job = %job_id, scheduler = %address, error = %e, "cannot cancel a cluster job"),
    }
}

/// `e` from a cluster job, naming the scheduler; an unreachable one said in words.
fn on_cluster(e: DataFusionError, scheduler_url: &str) -> DataFusionError {
    let text = e.to_string();
    if text.contains("transport error") || text.contains("tcp connect error") {
        let address = scheduler_url.trim_start_matches("http://");
        // An outside service that is unavailable (UNAVAILABLE over Flight SQL), like a source's.
        return streampulse_engine::Error::Source(format!(
            "the cluster's scheduler at {address} cannot be reached: is `streampulse scheduler` running there? \
             ({text})"
        ))
        .into_datafusion();
    }
    e.context(format!("on the cluster (scheduler {})", scheduler_url.trim_start_matches("http://")))
}

/// Why a plan runs on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Not a query, or a query that reads no table: never the cluster's.
    Statement(&'static str),
    /// A query the cluster could run but for this part of it (a table, a plan node).
    Part(String),
}

impl std::fmt::Display for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Local::Statement(reason) => f.write_str(reason),
            Local::Part(reason) => f.write_str(reason),
        }
    }
}

/// `plan` with each `top_k_nearest(...)` holding its queries planned in `session`, as the
/// cluster needs them (the scheduler has no catalog to plan their SQL against).
pub(crate) async fn with_top_k_planned(plan: &LogicalPlan, session: &dyn Session) -> Result<LogicalPlan> {
    let mut calls: Vec<Arc<dyn TableProvider>> = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && provider.downcast_ref::<TopKNearestTable>().is_some()
        {
            calls.push(provider);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
        return Ok(plan.clone());
    };
    if calls.is_empty() {
        return Ok(plan.clone());
    }
    let mut planned: Vec<(Arc<dyn TableProvider>, Arc<dyn TableProvider>)> = Vec::with_capacity(calls.len());
    for call in calls {
        let Some(table) = call.downcast_ref::<TopKNearestTable>() else { continue };
        let plans: Arc<dyn TableProvider> = Arc::new(table.plan(state).await?);
        planned.push((call, plans));
    }
    let swapped = plan.clone().transform_up_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = &node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some((_, plans)) = planned.iter().find(|(call, _)| Arc::ptr_eq(call, &provider))
        {
            let mut scan = scan.clone();
            scan.source = provider_as_source(Arc::clone(plans));
            return Ok(Transformed::yes(LogicalPlan::TableScan(scan)));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(swapped.data)
}

/// Why `plan` must run on the server (`None`: it can run on the cluster).
pub fn why_local(plan: &LogicalPlan) -> Result<Option<Local>> {
    if let Some(reason) = statement(plan) {
        return Ok(Some(Local::Statement(reason)));
    }
    let (tables, part) = part_on_server(plan)?;
    Ok(match part {
        Some(part) => Some(Local::Part(part)),
        None if tables == 0 => Some(Local::Statement("the query reads no table")),
        None => None,
    })
}

/// Why `plan` is not a query, if it is not.
fn statement(plan: &LogicalPlan) -> Option<&'static str> {
    match plan {
        LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => Some("not a query"),
        _ => None,
    }
}

/// The tables `plan` reads, and the first part of it that only the server can run.
fn part_on_server(plan: &LogicalPlan) -> Result<(usize, Option<String>)> {
    let mut tables = 0;
    let mut part = None;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) => {
                tables += 1;
                let provider = source_as_provider(&scan.source).ok();
                if let Some(top_k) = provider.as_ref().and_then(|p| p.downcast_ref::<TopKNearestPlanned>()) {
                    for (what, inner) in [("users", &top_k.users), ("items", &top_k.items)] {
                        let (_, inner_part) = part_on_server(inner)?;
                        if let Some(inner_part) = inner_part {
                            part = Some(format!("in top_k_nearest's {what} query, {inner_part}"));
                            break;
                        }
                    }
                } else {
                    let shippable = provider.is_some_and(|provider| {
                        provider.downcast_ref::<ListingTable>().is_some()
                            || provider.downcast_ref::<FileListTable>().is_some()
                            || provider.downcast_ref::<ManagedTable>().is_some_and(ManagedTable::plain)
                    });
                    if !shippable {
                        part = Some(format!("table {} is read on the server", scan.table_name));
                    }
                }
            }
            LogicalPlan::Extension(extension) => {
                part = Some(format!("plan node {} runs on the server", extension.node.name()));
            }
            _ => {}
        }
        Ok(if part.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok((tables, part))
}
