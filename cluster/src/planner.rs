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
//! `information_schema` (they describe this server), JSON_API sources, `top_k_nearest`, tables
//! needing the Delta reader.

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::SessionConfigExt;
use datafusion::catalog::Session;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::internal_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::TryStreamExt;
use streampulse_engine::{FileListTable, ManagedTable};
use tracing::{debug, info};

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
        if let LogicalPlan::Dml(DmlStatement { target, op: WriteOp::Insert(op), input, .. }) = plan
            && why_local(input)?.is_none()
        {
            debug!("insert reads on the cluster");
            let provider = source_as_provider(target)?;
            return provider.insert_into(session, self.distributed(input, session), *op).await;
        }
        match why_local(plan)? {
            None => {
                debug!("query runs on the cluster");
                Ok(self.distributed(plan, session))
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
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream.map_err(move |e| on_cluster(e, &url)))))
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

/// Why `plan` must run on the server (`None`: it can run on the cluster).
pub fn why_local(plan: &LogicalPlan) -> Result<Option<Local>> {
    match plan {
        LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => return Ok(Some(Local::Statement("not a query"))),
        _ => {}
    }
    let mut tables = 0;
    let mut reason = None;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) => {
                tables += 1;
                let shippable = source_as_provider(&scan.source).is_ok_and(|provider| {
                    provider.downcast_ref::<ListingTable>().is_some()
                        || provider.downcast_ref::<FileListTable>().is_some()
                        || provider.downcast_ref::<ManagedTable>().is_some_and(ManagedTable::plain)
                });
                if !shippable {
                    reason = Some(Local::Part(format!("table {} is read on the server", scan.table_name)));
                }
            }
            LogicalPlan::Extension(extension) => {
                reason = Some(Local::Part(format!("plan node {} runs on the server", extension.node.name())));
            }
            _ => {}
        }
        Ok(if reason.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    if reason.is_none() && tables == 0 {
        reason = Some(Local::Statement("the query reads no table"));
    }
    Ok(reason)
}
