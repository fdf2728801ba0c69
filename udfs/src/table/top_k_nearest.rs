//! `top_k_nearest(users_sql, items_sql, k [, metric])`: a table function that scores every
//! query vector against every item vector with a blocked matrix multiply and keeps the `k` best
//! items per query, skipping the items each query lists as already seen.
//!
//! ```sql
//! SELECT user_id, rank, item_id AS song_id, score
//! FROM top_k_nearest(
//!     'SELECT user_id, taste, played FROM music.user_taste',  -- id, vector [, ids to exclude]
//!     'SELECT song_id, vector FROM music.song_vectors',       -- id, vector
//!     10)
//! ```
//!
//! How it runs. Both queries are planned in the caller's session (read-only: DDL, DML and SET
//! are refused) and become the two children of [`TopKNearestExec`], so EXPLAIN and the metrics
//! show them. The item side is collected once per query into a row-major matrix (f32 for
//! scoring, f64 for the final scores; its bytes are reserved in the memory pool), grouped into
//! clusters of nearby items that each bound the score their members can reach
//! ([`super::clusters`]). Each output partition streams its share of the user side: per batch,
//! users are sorted by their most promising cluster and cut into blocks of [`USER_BLOCK`]; a
//! block visits the clusters best bound first and multiplies a cluster's items (tiles of at
//! most [`ITEM_TILE`], by `matrixmultiply::sgemm`, the GEMM kernel behind ndarray) only for the
//! users whose bound for it beats their current candidate threshold. A per-user candidate
//! list of `k + SLACK` best items is kept with a threshold test, so the hot loop is a GEMM and
//! a compare, and the clusters no user can use are skipped whole (metrics `pairs` and
//! `pairs_scored` count the user-item pairs in all and those multiplied). Candidates are then rescored in f64
//! and ordered by (score desc, item id asc), so results are exact and deterministic; f32 only
//! chooses the candidates, with [`SLACK`] extra places to absorb its rounding. The CPU work runs
//! on tokio's blocking pool, one task per batch and up to `target_partitions` batches in flight
//! per partition, so even a one-file user table uses every core without stalling
//! the server's request threads.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Documentation, Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::clusters::{self, BOUND_SLACK, Cluster};

/// Users multiplied at once: one block's score tile is `USER_BLOCK x ITEM_TILE` f32 (256 KiB,
/// so it stays in L2 between the multiply that writes it and the scan that reads it).
pub const USER_BLOCK: usize = 64;
/// Items per tile of the multiply.
pub const ITEM_TILE: usize = 1024;
/// Extra candidates kept per user from the f32 pass before the exact f64 rescoring.
pub const SLACK: usize = 8;
/// Largest `k` accepted.
pub const MAX_K: i64 = 10_000;

const NAME: &str = "top_k_nearest";

/// How a query vector is compared with an item vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity: both sides are normalised; zero vectors are skipped.
    Cosine,
    /// Plain dot product.
    InnerProduct,
}

impl Metric {
    /// The metric named `name` as the function's fourth argument spells it.
    pub fn from_name(name: &str) -> Option<Metric> {
        match name.to_ascii_lowercase().as_str() {
            "cosine" => Some(Metric::Cosine),
            "inner_product" | "dot" => Some(Metric::InnerProduct),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Cosine => "cosine",
            Metric::InnerProduct => "inner_product",
        })
    }
}

/// The output columns: one row per (query, rank).
pub fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
    ]))
}

/// The table function registered as `top_k_nearest`.
#[derive(Debug, Default)]
pub struct TopKNearestFunction;

impl TopKNearestFunction {
    /// Reference documentation (table functions have no `Documentation` hook of their own).
    pub fn documentation() -> &'static Documentation {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            Documentation::builder(
                datafusion::logical_expr::DocSection {
                    include: true,
                    label: "StreamPulse Functions",
                    description: None,
                },
                "Table function: for every row of `users_sql` (id, vector [, list of item ids to exclude]) \
returns its `k` most similar rows of `items_sql` (id, vector) as columns `user_id, rank, item_id, score`, \
rank 1 = best, ties to the lower item id. Scores users against items with a blocked matrix multiply \
(matrixmultiply's sgemm) on all cores, skipping whole clusters of items whose score bound proves they cannot \
enter a user's top `k` — exact: no item that could rank is skipped, and candidates from f32 are rescored in f64. \
The plan's metrics `pairs` and `pairs_scored` (and an INFO log line per partition) say how much was skipped. \
Both arguments are \
read-only SQL queries (write quotes inside them as ''). Ids must be integers, vectors lists of numbers of one \
length; users or items with a NULL or (for cosine) all-zero vector are skipped; excluded ids that are not items \
are ignored; a user with fewer than `k` eligible items gets fewer rows. The item matrix is held in memory \
(about 12 bytes per value, reserved in the memory pool)."
                    .to_string(),
                "top_k_nearest(users_sql, items_sql, k [, metric])".to_string(),
            )
            .with_sql_example(
                r#"```sql
> SELECT * FROM top_k_nearest('SELECT * FROM (VALUES (1, [1.0, 0.0], [10])) AS u(id, v, seen)',
                              'SELECT * FROM (VALUES (10, [1.0, 0.1]), (11, [0.9, 0.3]), (12, [0.0, 1.0])) AS s(id, v)', 2);
user_id rank item_id score
1       1    11      0.9486832980505138
2       2    12      0.0
```"#,
            )
            .with_argument("users_sql", "Query giving (id, vector) or (id, vector, ids to exclude) per user.")
            .with_argument("items_sql", "Query giving (id, vector) per item.")
            .with_argument("k", "How many items per user, 1 to 10000.")
            .with_argument("metric", "'cosine' (default) or 'inner_product'.")
            .build()
        });
        &DOC
    }
}

fn string_arg(args: &[Expr], i: usize, name: &str) -> Result<String> {
    match args.get(i) {
        Some(Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        )) => Ok(s.clone()),
        Some(other) => plan_err!("{NAME}: {name} (argument {}) must be a string literal, got {other}", i + 1),
        None => {
            plan_err!("{NAME}: missing argument {} ({name}); usage: {NAME}(users_sql, items_sql, k [, metric])", i + 1)
        }
    }
}

impl TableFunctionImpl for TopKNearestFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !(3..=4).contains(&exprs.len()) {
            return plan_err!(
                "{NAME}: expected 3 or 4 arguments (users_sql, items_sql, k [, metric]), got {}",
                exprs.len()
            );
        }
        let users_sql = string_arg(exprs, 0, "users_sql")?;
        let items_sql = string_arg(exprs, 1, "items_sql")?;
        let k = match &exprs[2] {
            Expr::Literal(v, _) if v.data_type().is_integer() && !v.is_null() => match v.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(k)) => k,
                _ => return plan_err!("{NAME}: k must be an integer literal"),
            },
            other => return plan_err!("{NAME}: k (argument 3) must be an integer literal, got {other}"),
        };
        if !(1..=MAX_K).contains(&k) {
            return plan_err!("{NAME}: k must be between 1 and {MAX_K}, got {k}");
        }
        let metric = match exprs.get(3) {
            None => Metric::Cosine,
            Some(_) => {
                let name = string_arg(exprs, 3, "metric")?;
                match Metric::from_name(&name) {
                    Some(metric) => metric,
                    None => return plan_err!("{NAME}: unknown metric '{name}'; use 'cosine' or 'inner_product'"),
                }
            }
        };
        Ok(Arc::new(TopKNearestTable { users_sql, items_sql, k: k as usize, metric }))
    }
}

/// What `top_k_nearest(...)` returns at planning time; the queries are planned at scan.
#[derive(Debug)]
pub struct TopKNearestTable {
    users_sql: String,
    items_sql: String,
    k: usize,
    metric: Metric,
}

impl TopKNearestTable {
    /// The two queries planned in `session` (read-only), ready to be sent elsewhere whole: a
    /// cluster's scheduler has no catalog to plan the SQL against, but can run these plans.
    pub async fn plan(&self, session: &SessionState) -> Result<TopKNearestPlanned> {
        Ok(TopKNearestPlanned {
            users: plan_query(session, &self.users_sql, "users").await?,
            items: plan_query(session, &self.items_sql, "items").await?,
            k: self.k,
            metric: self.metric,
        })
    }
}

async fn plan_query(session: &SessionState, sql: &str, what: &str) -> Result<LogicalPlan> {
    let ctx = SessionContext::new_with_state(session.clone());
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| DataFusionError::Plan(format!("{NAME}: {what} query: {e}")))?;
    df.into_optimized_plan()
}

fn check_vector_type(what: &str, column: &Field) -> Result<()> {
    match column.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) if f.data_type().is_numeric() => {
            Ok(())
        }
        other => plan_err!(
            "{NAME}: the {what} query's second column ({}) must be a list of numbers, got {other}",
            column.name()
        ),
    }
}

fn check_id_type(what: &str, column: &Field) -> Result<()> {
    if column.data_type().is_integer() {
        Ok(())
    } else {
        plan_err!(
            "{NAME}: the {what} query's first column ({}) must be an integer id, got {}",
            column.name(),
            column.data_type()
        )
    }
}

/// The columns `users` and `items` must have (see the function's documentation).
fn check_inputs(users: &Schema, items: &Schema) -> Result<()> {
    if !(2..=3).contains(&users.fields().len()) {
        return plan_err!(
            "{NAME}: the users query must return (id, vector) or (id, vector, excluded ids), got {} columns",
            users.fields().len()
        );
    }
    if items.fields().len() != 2 {
        return plan_err!("{NAME}: the items query must return (id, vector), got {} columns", items.fields().len());
    }
    check_id_type("users", users.field(0))?;
    check_vector_type("users", users.field(1))?;
    check_id_type("items", items.field(0))?;
    check_vector_type("items", items.field(1))?;
    if let Some(excluded) = users.fields().get(2) {
        match excluded.data_type() {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                if f.data_type().is_integer() => {}
            other => {
                return plan_err!(
                    "{NAME}: the users query's third column ({}) must be a list of item ids, got {other}",
                    excluded.name()
                );
            }
        }
    }
    Ok(())
}

#[async_trait]
impl TableProvider for TopKNearestTable {
    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{NAME} needs a DataFusion SessionState to plan its queries");
        };
        self.plan(session).await?.scan(state, projection, filters, limit).await
    }
}

/// `top_k_nearest` with its two queries already planned ([`TopKNearestTable::plan`]): what a
/// cluster's scheduler receives. Its scan turns the plans into the two children of a
/// [`TopKNearestExec`] in whatever session scans it.
#[derive(Debug)]
pub struct TopKNearestPlanned {
    /// Gives (id, vector [, excluded ids]) per user.
    pub users: LogicalPlan,
    /// Gives (id, vector) per item.
    pub items: LogicalPlan,
    /// Items per user.
    pub k: usize,
    /// How users and items are compared.
    pub metric: Metric,
}

#[async_trait]
impl TableProvider for TopKNearestPlanned {
    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let users = state.create_physical_plan(&self.users).await?;
        let items = state.create_physical_plan(&self.items).await?;
        Ok(Arc::new(TopKNearestExec::try_new(users, items, self.k, self.metric, projection.cloned())?))
    }
}

/// The item side, loaded once per query.
#[derive(Debug)]
struct Items {
    ids: Vec<i64>,
    dim: usize,
    /// `ids.len() x dim`, row-major, normalised for cosine, in cluster order.
    f32s: Vec<f32>,
    f64s: Vec<f64>,
    index: HashMap<i64, u32>,
    /// Groups of nearby items covering `0..ids.len()`, each with a bound on its scores.
    clusters: Vec<Cluster>,
    /// The clusters' centres, `clusters.len() x dim`, row-major (one GEMM gives every bound).
    centers: Vec<f32>,
    /// The matrix's bytes in the memory pool, released when the last partition drops it.
    _reservation: MemoryReservation,
}

impl Items {
    /// The item matrix of `rows` (id order, prepared vectors of `dim` values), clustered and
    /// stored in cluster order.
    fn build(
        rows: Vec<(i64, Vec<f64>)>,
        dim: usize,
        metric: Metric,
        skipped: usize,
        reservation: MemoryReservation,
    ) -> Items {
        let started = std::time::Instant::now();
        let n = rows.len();
        let f64s: Vec<f64> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let f32s: Vec<f32> = f64s.iter().map(|x| *x as f32).collect();
        let (clusters, order) = clusters::cluster(&f64s, &f32s, n, dim, metric);
        let mut items = Items {
            ids: Vec::with_capacity(n),
            dim,
            f32s: Vec::with_capacity(n * dim),
            f64s: Vec::with_capacity(n * dim),
            index: HashMap::with_capacity(n),
            centers: clusters.iter().flat_map(|c| c.center.iter().copied()).collect(),
            clusters,
            _reservation: reservation,
        };
        for (i, &row) in order.iter().enumerate() {
            items.ids.push(rows[row].0);
            items.index.insert(rows[row].0, i as u32);
            items.f32s.extend_from_slice(&f32s[row * dim..(row + 1) * dim]);
            items.f64s.extend_from_slice(&f64s[row * dim..(row + 1) * dim]);
        }
        tracing::debug!(
            items = n,
            dim,
            skipped,
            clusters = items.clusters.len(),
            clustering_ms = started.elapsed().as_millis() as u64,
            "top_k_nearest items loaded"
        );
        items
    }
}

/// Scores users against items; see the module documentation.
#[derive(Debug)]
pub struct TopKNearestExec {
    users: Arc<dyn ExecutionPlan>,
    items: Arc<dyn ExecutionPlan>,
    k: usize,
    metric: Metric,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    loaded: Arc<OnceCell<Arc<Items>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl TopKNearestExec {
    /// Scores `users` against `items` (their columns checked), keeping `k` per user; the
    /// output columns are `projection` of [`output_schema`].
    pub fn try_new(
        users: Arc<dyn ExecutionPlan>,
        items: Arc<dyn ExecutionPlan>,
        k: usize,
        metric: Metric,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        check_inputs(&users.schema(), &items.schema())?;
        if !(1..=MAX_K as usize).contains(&k) {
            return plan_err!("{NAME}: k must be between 1 and {MAX_K}, got {k}");
        }
        if let Some(p) = &projection
            && let Some(bad) = p.iter().find(|&&i| i >= output_schema().fields().len())
        {
            return plan_err!("{NAME}: no output column {bad}");
        }
        Ok(Self::new(users, items, k, metric, projection))
    }

    /// Items kept per user.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How users and items are compared.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The output columns, as indices of [`output_schema`] (`None`: all).
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    fn new(
        users: Arc<dyn ExecutionPlan>,
        items: Arc<dyn ExecutionPlan>,
        k: usize,
        metric: Metric,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let full = output_schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p).unwrap_or_else(|_| full.as_ref().clone())),
            None => full,
        };
        let partitions = users.output_partitioning().partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            users,
            items,
            k,
            metric,
            projection,
            schema,
            properties,
            loaded: Arc::new(OnceCell::new()),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for TopKNearestExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "TopKNearestExec: k={}, metric={}", self.k, self.metric)
            }
            DisplayFormatType::TreeRender => write!(f, "k={}\nmetric={}", self.k, self.metric),
        }
    }
}

impl ExecutionPlan for TopKNearestExec {
    fn name(&self) -> &'static str {
        "TopKNearestExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.users, &self.items]
    }

    /// Users stream by partition; every partition scores against all the items. Saying so
    /// matters on a cluster: Ballista gives each task only its share of a child's partitions
    /// unless the child must be one partition, so without it each task would score its users
    /// against a slice of the items and return a wrong top k.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution, Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [users, items]: [Arc<dyn ExecutionPlan>; 2] =
            children.try_into().map_err(|_| DataFusionError::Internal("TopKNearestExec takes two children".into()))?;
        Ok(Arc::new(Self::new(users, items, self.k, self.metric, self.projection.clone())))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let users = self.users.execute(partition, Arc::clone(&context))?;
        let items_plan = Arc::clone(&self.items);
        let loaded = Arc::clone(&self.loaded);
        let (k, metric, projection) = (self.k, self.metric, self.projection.clone());
        let work = Work {
            partition,
            pairs: MetricBuilder::new(&self.metrics).counter("pairs", partition),
            pairs_scored: MetricBuilder::new(&self.metrics).counter("pairs_scored", partition),
        };
        let done = work.clone();
        let stream = futures::stream::once(async move {
            let items = loaded
                .get_or_try_init(|| load_items(items_plan, Arc::clone(&context), metric))
                .await
                .map(Arc::clone)?;
            // Several batches in flight per partition: a scan's partitions follow files and row
            // groups, so a one-file user table would otherwise be scored on one core.
            let in_flight = context.session_config().target_partitions().max(1);
            let scored = users
                .map(move |batch| {
                    let items = Arc::clone(&items);
                    let projection = projection.clone();
                    let work = work.clone();
                    async move {
                        let batch = batch?;
                        let out = tokio::task::spawn_blocking(move || score_batch(&items, &batch, k, metric, &work))
                            .await
                            .map_err(|e| DataFusionError::External(Box::new(e)))??;
                        match projection {
                            Some(p) => Ok(out.project(&p)?),
                            None => Ok(out),
                        }
                    }
                })
                .buffered(in_flight)
                .chain(
                    futures::stream::once(async move {
                        done.log();
                        None
                    })
                    .filter_map(futures::future::ready),
                );
            Ok::<_, DataFusionError>(scored)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), stream)))
    }
}

/// Ids as i64 and vectors as `List<Float64>`, whatever integer/list/number types came in.
fn ids_and_vectors(batch: &RecordBatch) -> Result<(Int64Array, ListArray)> {
    let ids = cast(batch.column(0), &DataType::Int64)?;
    let list_type = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    let vectors = cast(batch.column(1), &list_type)?;
    let ids = ids
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("id cast".into()))?;
    let vectors = vectors
        .as_any()
        .downcast_ref::<ListArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("vector cast".into()))?;
    Ok((ids, vectors))
}

/// Row `row` of a `List<Float64>` as a slice, or None when it is NULL or holds a NULL.
fn row_values(list: &ListArray, row: usize) -> Option<&[f64]> {
    if list.is_null(row) {
        return None;
    }
    let offsets = list.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let floats = list.values().as_any().downcast_ref::<Float64Array>()?;
    if floats.null_count() > 0 && (start..end).any(|i| floats.is_null(i)) {
        return None;
    }
    Some(&floats.values()[start..end])
}

/// The vector to score with, normalised for cosine; None when it cannot be scored.
fn prepared(values: &[f64], metric: Metric) -> Option<Vec<f64>> {
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    match metric {
        Metric::InnerProduct => Some(values.to_vec()),
        Metric::Cosine => {
            let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
            (norm > 0.0).then(|| values.iter().map(|v| v / norm).collect())
        }
    }
}

async fn load_items(plan: Arc<dyn ExecutionPlan>, context: Arc<TaskContext>, metric: Metric) -> Result<Arc<Items>> {
    let batches = datafusion::physical_plan::collect(plan, Arc::clone(&context)).await?;
    let mut rows: Vec<(i64, Vec<f64>)> = Vec::new();
    let mut dim: Option<usize> = None;
    let mut skipped = 0usize;
    for batch in &batches {
        let (ids, vectors) = ids_and_vectors(batch)?;
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                return exec_err!("{NAME}: the items query returned a NULL id");
            }
            let Some(values) = row_values(&vectors, row) else {
                skipped += 1;
                continue;
            };
            match dim {
                None => dim = Some(values.len()),
                Some(d) if d != values.len() => {
                    return exec_err!(
                        "{NAME}: item {} has a vector of {} values, earlier items have {d}",
                        ids.value(row),
                        values.len()
                    );
                }
                Some(_) => {}
            }
            match prepared(values, metric) {
                Some(v) => rows.push((ids.value(row), v)),
                None => skipped += 1,
            }
        }
    }
    drop(batches);
    rows.sort_unstable_by_key(|(id, _)| *id);
    if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
        return exec_err!("{NAME}: item id {} appears more than once in the items query", w[0].0);
    }
    let dim = dim.unwrap_or(0);
    let n = rows.len();
    // the matrix twice (f32, f64), the id and its index entry; the clusters' share is small
    let bytes = n * (dim * 12 + 24) + (n / clusters::CLUSTER_SIZE + 1) * (dim * 4 + 48);
    let reservation = MemoryConsumer::new("TopKNearestExec[items]").register(context.memory_pool());
    reservation.try_grow(bytes)?;
    // clustering is seconds of CPU for large item sets: off the request threads
    let items = tokio::task::spawn_blocking(move || Items::build(rows, dim, metric, skipped, reservation))
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(items))
}

/// What one partition scored: user-item pairs in all, and those actually multiplied (the rest
/// were in clusters whose bound ruled them out). Logged when the partition's stream ends, and
/// in EXPLAIN ANALYZE.
#[derive(Clone)]
struct Work {
    partition: usize,
    pairs: Count,
    pairs_scored: Count,
}

impl Work {
    fn log(&self) {
        let (pairs, scored) = (self.pairs.value(), self.pairs_scored.value());
        if pairs > 0 {
            tracing::info!(
                partition = self.partition,
                pairs,
                pairs_scored = scored,
                skipped = format!("{:.1}%", 100.0 * (1.0 - scored as f64 / pairs as f64)),
                "top_k_nearest partition done"
            );
        }
    }
}

/// The candidate list of one user: at most `capacity` (f32 score, item index), best first.
struct Candidates {
    capacity: usize,
    best: Vec<(f32, u32)>,
}

impl Candidates {
    fn new(capacity: usize) -> Self {
        Self { capacity, best: Vec::with_capacity(capacity + 1) }
    }

    #[inline]
    fn threshold(&self) -> f32 {
        if self.best.len() < self.capacity { f32::NEG_INFINITY } else { self.best[self.capacity - 1].0 }
    }

    /// Offer a tile of scores for items `first..first + scores.len()`. Most chunks of 16 scores
    /// hold nothing above the threshold: their maximum (a vectorised reduction) rules them out
    /// without a branch per score.
    fn offer(&mut self, scores: &[f32], first: usize, excluded: &[u32]) {
        let mut threshold = self.threshold();
        for (c, chunk) in scores.chunks(16).enumerate() {
            if chunk.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) <= threshold {
                continue;
            }
            for (j, &s) in chunk.iter().enumerate() {
                if s > threshold {
                    let item = (first + c * 16 + j) as u32;
                    if excluded.binary_search(&item).is_ok() {
                        continue;
                    }
                    let at = self.best.partition_point(|(b, _)| *b >= s);
                    self.best.insert(at, (s, item));
                    self.best.truncate(self.capacity);
                    threshold = self.threshold();
                }
            }
        }
    }
}

/// The score bounds of `norms.len()` users (`users`: their f32 vectors, row-major) against every
/// cluster, into `bounds` (`users x clusters`, row-major): one GEMM with the clusters' centres.
fn block_bounds(items: &Items, metric: Metric, users: &[f32], norms: &[f32], bounds: &mut [f32]) {
    let (m, nc, dim) = (norms.len(), items.clusters.len(), items.dim);
    if m == 0 || nc == 0 || dim == 0 {
        return;
    }
    assert!(users.len() >= m * dim && bounds.len() >= m * nc && items.centers.len() >= nc * dim);
    // SAFETY: a is m x dim (row stride dim) inside users; b is the dim x nc view of the centres
    // (centre-major: row stride 1, column stride dim); c is m x nc (row stride nc) inside
    // bounds; the sizes are checked just above, and the buffers do not overlap.
    unsafe {
        matrixmultiply::sgemm(
            m,
            dim,
            nc,
            1.0,
            users.as_ptr(),
            dim as isize,
            1,
            items.centers.as_ptr(),
            1,
            dim as isize,
            0.0,
            bounds.as_mut_ptr(),
            nc as isize,
            1,
        );
    }
    for (r, norm) in norms.iter().enumerate() {
        for (b, cluster) in bounds[r * nc..(r + 1) * nc].iter_mut().zip(&items.clusters) {
            *b = cluster.bound(metric, *b, *norm);
        }
    }
}

/// A user of a batch: its id, its vector, and the indexes of the items it excludes.
type UserRow = (i64, Vec<f64>, Vec<u32>);

fn score_batch(items: &Items, batch: &RecordBatch, k: usize, metric: Metric, work: &Work) -> Result<RecordBatch> {
    let (ids, vectors) = ids_and_vectors(batch)?;
    let excluded_lists = match batch.num_columns() {
        3 => {
            let t = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
            Some(cast(batch.column(2), &t)?)
        }
        _ => None,
    };
    let excluded_lists = excluded_lists.as_ref().and_then(|a| a.as_any().downcast_ref::<ListArray>());
    let dim = items.dim;
    let n = items.ids.len();
    // the users that can be scored, with their prepared vectors and excluded item indexes
    let mut users: Vec<UserRow> = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if ids.is_null(row) {
            continue;
        }
        let Some(values) = row_values(&vectors, row) else { continue };
        if n > 0 && values.len() != dim {
            return exec_err!(
                "{NAME}: user {} has a vector of {} values, items have {dim}",
                ids.value(row),
                values.len()
            );
        }
        let Some(v) = prepared(values, metric) else { continue };
        let mut excluded: Vec<u32> = Vec::new();
        if let Some(lists) = excluded_lists
            && !lists.is_null(row)
        {
            let list = lists.value(row);
            if let Some(seen) = list.as_any().downcast_ref::<Int64Array>() {
                excluded.extend(seen.iter().flatten().filter_map(|id| items.index.get(&id).copied()));
            }
        }
        excluded.sort_unstable();
        excluded.dedup();
        users.push((ids.value(row), v, excluded));
    }

    let (mut out_user, mut out_rank, mut out_item, mut out_score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let clusters = &items.clusters;
    let nc = clusters.len();
    let user_f32: Vec<f32> = users.iter().flat_map(|(_, v, _)| v.iter().map(|x| *x as f32)).collect();
    let norms: Vec<f32> = match metric {
        Metric::Cosine => vec![1.0; users.len()],
        Metric::InnerProduct => {
            users.iter().map(|(_, v, _)| v.iter().map(|x| x * x).sum::<f64>().sqrt() as f32).collect()
        }
    };
    // bounds[r * nc + c]: the most any item of cluster c can score for user `first + r`
    let mut bounds = vec![0f32; USER_BLOCK * nc];
    // Users in the order of their most promising cluster (clusters are in spatial order), so a
    // block's users are alike and need few clusters scored.
    let mut promising = vec![0u32; users.len()];
    for first in (0..users.len()).step_by(USER_BLOCK) {
        let m = USER_BLOCK.min(users.len() - first);
        block_bounds(items, metric, &user_f32[first * dim..], &norms[first..first + m], &mut bounds);
        for r in 0..m {
            let row = &bounds[r * nc..(r + 1) * nc];
            promising[first + r] = (0..nc).fold(0, |best, c| if row[c] > row[best] { c } else { best }) as u32;
        }
    }
    let mut by_place: Vec<usize> = (0..users.len()).collect();
    by_place.sort_by_key(|&u| (promising[u], u));
    let user_f32: Vec<f32> = by_place.iter().flat_map(|&u| user_f32[u * dim..(u + 1) * dim].iter().copied()).collect();
    let norms: Vec<f32> = by_place.iter().map(|&u| norms[u]).collect();
    let mut slots: Vec<Option<UserRow>> = users.into_iter().map(Some).collect();
    let users: Vec<UserRow> = by_place.iter().filter_map(|&u| slots[u].take()).collect();

    let mut tile = vec![0f32; USER_BLOCK * ITEM_TILE];
    let mut active_f32 = vec![0f32; USER_BLOCK * dim];
    let mut cluster_order: Vec<usize> = Vec::with_capacity(nc);
    let mut best_bound = vec![0f32; nc];
    let mut active: Vec<usize> = Vec::with_capacity(USER_BLOCK);
    let mut scored = 0usize;
    for (b, block) in users.chunks(USER_BLOCK).enumerate() {
        let m = block.len();
        let first_user = b * USER_BLOCK;
        block_bounds(items, metric, &user_f32[first_user * dim..], &norms[first_user..first_user + m], &mut bounds);
        for (c, best) in best_bound.iter_mut().enumerate() {
            *best = (0..m).map(|r| bounds[r * nc + c]).fold(f32::NEG_INFINITY, f32::max);
        }
        cluster_order.clear();
        cluster_order.extend(0..nc);
        cluster_order.sort_by(|&a, &b| best_bound[b].total_cmp(&best_bound[a]).then(a.cmp(&b)));
        let mut candidates: Vec<Candidates> = (0..m).map(|_| Candidates::new(k + SLACK)).collect();
        for &c in &cluster_order {
            // Clusters come best bound first: once none can beat the lowest threshold, none of
            // the rest can either.
            let lowest = candidates.iter().map(Candidates::threshold).fold(f32::INFINITY, f32::min);
            if best_bound[c] + BOUND_SLACK <= lowest {
                break;
            }
            active.clear();
            active.extend((0..m).filter(|&r| bounds[r * nc + c] + BOUND_SLACK > candidates[r].threshold()));
            if active.is_empty() {
                continue;
            }
            let a = active.len();
            for (i, &r) in active.iter().enumerate() {
                let at = (first_user + r) * dim;
                active_f32[i * dim..(i + 1) * dim].copy_from_slice(&user_f32[at..at + dim]);
            }
            let cluster = &clusters[c];
            let mut first = cluster.start;
            while first < cluster.end {
                let width = ITEM_TILE.min(cluster.end - first);
                // SAFETY: a is `a` x dim (row stride dim) inside active_f32 (USER_BLOCK x dim); b
                // is the dim x width view of items first..first+width (item-major, so row
                // stride 1 and column stride dim) inside f32s; c is `a` x width (row stride
                // width) inside tile (USER_BLOCK x ITEM_TILE). None overlap.
                unsafe {
                    matrixmultiply::sgemm(
                        a,
                        dim,
                        width,
                        1.0,
                        active_f32.as_ptr(),
                        dim as isize,
                        1,
                        items.f32s[first * dim..].as_ptr(),
                        1,
                        dim as isize,
                        0.0,
                        tile.as_mut_ptr(),
                        width as isize,
                        1,
                    );
                }
                for (i, &r) in active.iter().enumerate() {
                    candidates[r].offer(&tile[i * width..(i + 1) * width], first, &block[r].2);
                }
                scored += a * width;
                first += width;
            }
        }
        // exact rescoring in f64 of the candidates, then (score desc, item id asc)
        for ((user, v, _), cand) in block.iter().zip(candidates) {
            let mut exact: Vec<(f64, u32)> = cand
                .best
                .iter()
                .map(|&(_, i)| {
                    let row = &items.f64s[i as usize * dim..(i as usize + 1) * dim];
                    (row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>(), i)
                })
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0).then(items.ids[a.1 as usize].cmp(&items.ids[b.1 as usize])));
            for (rank, (score, i)) in exact.into_iter().take(k).enumerate() {
                out_user.push(*user);
                out_rank.push(rank as i32 + 1);
                out_item.push(items.ids[i as usize]);
                out_score.push(score);
            }
        }
    }
    work.pairs.add(users.len() * n);
    work.pairs_scored.add(scored);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(out_user)),
        Arc::new(Int32Array::from(out_rank)),
        Arc::new(Int64Array::from(out_item)),
        Arc::new(Float64Array::from(out_score)),
    ];
    Ok(RecordBatch::try_new(output_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::ListBuilder;
    use datafusion::arrow::array::{Float64Builder, Int64Builder};
    use datafusion::execution::memory_pool::UnboundedMemoryPool;

    /// Points around `centres` blobs (a deterministic LCG), like songs around genres.
    fn blobs(n: usize, dim: usize, centres: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let means: Vec<Vec<f64>> = (0..centres).map(|_| (0..dim).map(|_| 2.0 * next()).collect()).collect();
        (0..n).map(|i| means[i % centres].iter().map(|m| m + 0.4 * next()).collect()).collect()
    }

    fn work() -> Work {
        let metrics = ExecutionPlanMetricsSet::new();
        Work {
            partition: 0,
            pairs: MetricBuilder::new(&metrics).counter("pairs", 0),
            pairs_scored: MetricBuilder::new(&metrics).counter("pairs_scored", 0),
        }
    }

    /// Pruned scoring gives exactly the brute-force answer in f64 (ids, order and scores), with
    /// and without exclusions, for both metrics, while skipping most of the work.
    #[test]
    fn pruned_scoring_equals_brute_force() {
        let (n, dim, k) = (6000, 8, 10);
        let item_vectors = blobs(n, dim, 40, 3);
        let user_vectors = blobs(300, dim, 40, 5);
        for metric in [Metric::Cosine, Metric::InnerProduct] {
            let rows: Vec<(i64, Vec<f64>)> = item_vectors
                .iter()
                .enumerate()
                .filter_map(|(i, v)| prepared(v, metric).map(|p| (10 * i as i64 + 7, p)))
                .collect();
            let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
                Arc::new(UnboundedMemoryPool::default());
            let reservation = MemoryConsumer::new("test").register(&pool);
            let items = Items::build(rows.clone(), dim, metric, 0, reservation);
            assert!(items.clusters.len() > 10);

            // users: id, vector, and every user excludes the items with ids of its own residue
            let (mut ids, mut vectors, mut seen) =
                (Int64Builder::new(), ListBuilder::new(Float64Builder::new()), ListBuilder::new(Int64Builder::new()));
            let mut excluded: HashMap<i64, Vec<i64>> = HashMap::new();
            for (u, v) in user_vectors.iter().enumerate() {
                ids.append_value(u as i64);
                vectors.values().append_slice(v);
                vectors.append(true);
                let ex: Vec<i64> = rows.iter().map(|r| r.0).filter(|id| (id / 10) % 300 == u as i64).collect();
                seen.values().append_slice(&ex);
                seen.append(true);
                excluded.insert(u as i64, ex);
            }
            let batch = RecordBatch::try_from_iter(vec![
                ("id", Arc::new(ids.finish()) as ArrayRef),
                ("v", Arc::new(vectors.finish()) as ArrayRef),
                ("seen", Arc::new(seen.finish()) as ArrayRef),
            ])
            .unwrap();
            let w = work();
            let out = score_batch(&items, &batch, k, metric, &w).unwrap();
            let (users, ranks, got_items, scores) = (
                out.column(0).as_any().downcast_ref::<Int64Array>().unwrap(),
                out.column(1).as_any().downcast_ref::<Int32Array>().unwrap(),
                out.column(2).as_any().downcast_ref::<Int64Array>().unwrap(),
                out.column(3).as_any().downcast_ref::<Float64Array>().unwrap(),
            );
            let mut answers: HashMap<i64, Vec<(i32, i64, f64)>> = HashMap::new();
            for r in 0..out.num_rows() {
                answers.entry(users.value(r)).or_default().push((ranks.value(r), got_items.value(r), scores.value(r)));
            }
            assert_eq!(answers.len(), user_vectors.len());
            for (u, v) in user_vectors.iter().enumerate() {
                let q = prepared(v, metric).unwrap();
                let ex = &excluded[&(u as i64)];
                let mut all: Vec<(f64, i64)> = rows
                    .iter()
                    .filter(|(id, _)| !ex.contains(id))
                    .map(|(id, x)| (x.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>(), *id))
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut got = answers[&(u as i64)].clone();
                got.sort_by_key(|g| g.0);
                let want: Vec<(i32, i64, f64)> =
                    all.iter().take(k).enumerate().map(|(r, (s, id))| (r as i32 + 1, *id, *s)).collect();
                assert_eq!(got.len(), k);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.1), (w.0, w.1), "{metric}, user {u}");
                    assert!((g.2 - w.2).abs() < 1e-12, "{metric}, user {u}: {} vs {}", g.2, w.2);
                }
            }
            let (pairs, scored) = (w.pairs.value(), w.pairs_scored.value());
            assert_eq!(pairs, user_vectors.len() * rows.len());
            assert!(scored * 2 < pairs, "{metric}: scored {scored} of {pairs} pairs: the bounds pruned too little");
        }
    }
}
