//! Scale-out on Apache DataFusion Ballista 55: the same SQL, functions and tables on a scheduler
//! and executors.
//!
//! | Module | What |
//! |---|---|
//! | [`codec`] | the codecs all roles share: managed tables travel as file lists, `top_k_nearest` as its planned queries and its scoring node |
//! | [`planner`] | on the server: which plans run on the cluster, and sending them there |
//! | [`roles`] | `streampulse scheduler` and `streampulse executor`: Ballista's, with our functions, codec, stores and memory pool |
//!
//! [`Cluster`] is what a server started with `--cluster df://host:port` gives its engine
//! ([`streampulse_engine::ClusterHook`]): Ballista's settings and logical rules for every
//! session, and [`planner::ClusterPlanner`] as the query planner. Catalog, DDL, writes and
//! their Delta commits stay on the server.

pub mod codec;
pub mod planner;
pub mod roles;

use std::sync::Arc;

use ballista_core::config::{BALLISTA_ADAPTIVE_PLANNER_ENABLED, BALLISTA_CLIENT_PULL};
use ballista_core::extension::SessionConfigExt;
use datafusion::execution::context::QueryPlanner;
use datafusion::optimizer::OptimizerRule;
use datafusion::prelude::SessionConfig;
use futures::future::BoxFuture;
use streampulse_engine::{ClusterHook, Error, Result};
use url::Url;

/// The port Ballista's scheduler listens on by default (and `streampulse scheduler`).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// A Ballista cluster as a server sees it: where its scheduler is.
#[derive(Debug, Clone)]
pub struct Cluster {
    scheduler_url: String,
    http: reqwest::Client,
}

impl Cluster {
    /// The cluster whose scheduler is at `url`: `df://host[:port]` (Ballista's notation),
    /// `http://host:port` or `host:port`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("cluster '{url}': {why}; expected df://host:port"));
        let with_scheme = if url.contains("://") { url.to_string() } else { format!("df://{url}") };
        let parsed = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "df" | "http") {
            return Err(bad(&format!("unknown scheme {}", parsed.scheme())));
        }
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(bad("a scheduler address has no path"));
        }
        let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .map_err(|e| Error::internal(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { scheduler_url: format!("http://{host}:{port}"), http })
    }

    /// The scheduler's gRPC URL, `http://host:port`.
    pub fn scheduler_url(&self) -> &str {
        &self.scheduler_url
    }
}

impl ClusterHook for Cluster {
    /// Ballista's restricted settings (sort-merge joins, which spill, instead of hash joins,
    /// which cannot; no round-robin repartitioning; scalar subqueries as joins), and the static
    /// planner: Ballista's adaptive planner is young (see the README's design notes). Jobs are
    /// followed by polling (every 50 ms) rather than by the scheduler's push stream, which
    /// names the job only when it has ended: a statement cancelled meanwhile could not cancel
    /// its job.
    fn configure(&self, config: SessionConfig) -> SessionConfig {
        config
            .upgrade_for_ballista()
            .set_bool(BALLISTA_ADAPTIVE_PLANNER_ENABLED, false)
            .set_bool(BALLISTA_CLIENT_PULL, true)
    }

    fn optimizer_rules(
        &self,
        rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
    ) -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
        ballista_core::optimizer::with_ballista_optimizer_rules(&rules)
    }

    fn query_planner(&self) -> Arc<dyn QueryPlanner + Send + Sync> {
        Arc::new(planner::ClusterPlanner::new(self.scheduler_url.clone()))
    }

    /// From the scheduler's `/readyz` (on its gRPC port), which says "ready: N executors
    /// registered" or "not ready: N/M executors registered": Ballista's gRPC API has no call
    /// listing executors, and its REST API is a feature this build leaves out.
    fn executors(&self) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let url = format!("{}/readyz", self.scheduler_url);
            let unreachable = |e: reqwest::Error| Error::Source(format!("the cluster's scheduler at {url}: {e}"));
            let body = self.http.get(&url).send().await.map_err(unreachable)?.text().await.map_err(unreachable)?;
            executors_in(&body)
                .ok_or_else(|| Error::Source(format!("the cluster's scheduler at {url} answered {body:?}")))
        })
    }
}

/// N in the scheduler's "ready: N executors registered" or "not ready: N/M executors registered".
fn executors_in(readyz: &str) -> Option<usize> {
    let (_, rest) = readyz.split_once(": ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_addresses() {
        assert_eq!(Cluster::parse("df://127.0.0.1:50050").unwrap().scheduler_url(), "http://127.0.0.1:50050");
        assert_eq!(Cluster::parse("df://sched").unwrap().scheduler_url(), "http://sched:50050");
        assert_eq!(Cluster::parse("sched:7000").unwrap().scheduler_url(), "http://sched:7000");
        for bad in ["s3://bucket", "df://", "df://h:1/x", "df://h:99999"] {
            let e = Cluster::parse(bad).unwrap_err().to_string();
            assert!(e.contains("df://host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn executors_from_the_schedulers_readiness() {
        assert_eq!(executors_in("ready: 2 executors registered\n"), Some(2));
        assert_eq!(executors_in("not ready: 1/3 executors registered\n"), Some(1));
        assert_eq!(executors_in("<html>"), None);
    }
}

/// Plans of the server, as the scheduler and executors decode them: same answers.
#[cfg(test)]
mod roundtrip_tests {

    use ballista_core::serde::BallistaPhysicalExtensionCodec;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::collect;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use streampulse_engine::{Engine, EngineConfig, Planned, StatementOutput};

    use ballista_core::JobId;
    use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner};
    use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
    use std::sync::Arc;

    use crate::codec::{ClusterCodec, ClusterPhysicalCodec};
    use crate::planner::{why_local, with_top_k_planned};
    use crate::roles::{config_producer, session_state};

    async fn answer(engine: &Engine, sql: &str) -> String {
        let session = engine.session();
        let mut batches = Vec::new();
        engine
            .run_script(&session, sql, true, |report| {
                if let StatementOutput::Rows(rows) = report.output {
                    batches.extend(rows);
                }
                Ok(())
            })
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn plans_decode_on_cluster_nodes_and_answer_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        let parquet = dir.path().join("ext.parquet");
        answer(
            &engine,
            &format!(
                "CREATE TABLE plays (day DATE, user_id BIGINT, song_id BIGINT, ms BIGINT, country VARCHAR) \
                 PARTITIONED BY (country);
                 INSERT INTO plays SELECT CAST('2026-11-01' AS DATE) + CAST(value % 5 AS INT), value % 97, \
                 value % 13, value * 7 % 1000, CASE value % 3 WHEN 0 THEN 'SE' WHEN 1 THEN 'a b/c' ELSE NULL END \
                 FROM generate_series(1, 3000);
                 COPY (SELECT value AS song_id, 'song ' || CAST(value AS VARCHAR) AS title \
                 FROM generate_series(0, 12)) TO '{}' STORED AS PARQUET;
                 CREATE EXTERNAL TABLE songs STORED AS PARQUET LOCATION '{}';",
                parquet.display(),
                parquet.display()
            ),
        )
        .await;
        let node = session_state(config_producer(), RuntimeEnvBuilder::new().build_arc().unwrap()).unwrap();
        let task = node.task_ctx();
        let queries = [
            "SELECT country, count(*) AS n, sum(ms) AS ms FROM plays GROUP BY country ORDER BY country",
            "SELECT s.title, count(DISTINCT p.user_id) AS listeners FROM plays p JOIN songs s USING (song_id) \
             WHERE p.day >= DATE '2026-11-03' GROUP BY s.title ORDER BY listeners DESC, s.title LIMIT 5",
            "SELECT song_id, ms, largest_remainder(1000, ms) OVER (PARTITION BY country ORDER BY song_id, ms) AS share \
             FROM plays WHERE user_id = 5 ORDER BY song_id, ms, share",
            "SELECT song_id % 3 AS g, weighted_avg_vector(make_array(CAST(ms AS DOUBLE), 1.0), CAST(user_id AS DOUBLE)) \
             AS v FROM plays GROUP BY g ORDER BY g",
        ];
        for sql in queries {
            let session = engine.session();
            let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!("{sql}") };
            let optimized = session.ctx().state().optimize(&plan).unwrap();
            assert_eq!(why_local(&optimized).unwrap(), None, "{sql}");
            // Server to scheduler: the logical plan.
            let bytes = logical_plan_to_bytes_with_extension_codec(&optimized, &ClusterCodec::default()).unwrap();
            let decoded =
                logical_plan_from_bytes_with_extension_codec(&bytes, &task, &ClusterCodec::default()).unwrap();
            // Scheduler to executor: the physical plan, in Ballista's physical codec.
            let physical = node.create_physical_plan(&decoded).await.unwrap();
            let codec = BallistaPhysicalExtensionCodec::default();
            let bytes = physical_plan_to_bytes_with_extension_codec(physical, &codec).unwrap();
            let physical = physical_plan_from_bytes_with_extension_codec(&bytes, &task, &codec).unwrap();
            let there = pretty_format_batches(&collect(physical, task.clone()).await.unwrap()).unwrap().to_string();
            assert_eq!(there, answer(&engine, sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn what_stays_on_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        answer(&engine, "CREATE TABLE t (k BIGINT, v DOUBLE); INSERT INTO t VALUES (1, 2.0)").await;
        for (sql, reason) in [
            ("SELECT 1", "reads no table"),
            ("SELECT * FROM system.queries", "system.queries"),
            ("SELECT table_name FROM information_schema.tables", "information_schema"),
            ("SELECT * FROM t WHERE k IN (SELECT count(*) FROM system.queries)", "system.queries"),
        ] {
            let session = engine.session();
            let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!("{sql}") };
            let why = why_local(&plan).unwrap().unwrap_or_else(|| panic!("{sql}: sent to the cluster")).to_string();
            assert!(why.contains(reason), "{sql}: {why}");
        }
        let session = engine.session();
        let Planned::Query(plan) = engine.plan_sql(&session, "SELECT * FROM t").await.unwrap() else { panic!() };
        assert_eq!(why_local(&plan).unwrap(), None);
    }

    fn find<'a>(plan: &'a Arc<dyn ExecutionPlan>, name: &str) -> Option<&'a Arc<dyn ExecutionPlan>> {
        if plan.name() == name {
            return Some(plan);
        }
        plan.children().into_iter().find_map(|child| find(child, name))
    }

    /// `top_k_nearest` goes to the cluster with its queries planned on the server; the
    /// scheduler's plan spreads the users over tasks while each task reads every item (their
    /// scan is a stage of its own), and the executors' plan answers as the server does.
    #[tokio::test]
    async fn top_k_nearest_is_planned_here_and_scores_all_items_in_every_task() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path().to_string_lossy(), 1 << 30)).await.unwrap();
        // two files of users and three of items: several partitions on each side
        answer(
            &engine,
            "CREATE TABLE users AS SELECT value AS id, make_array(sin(value), cos(value), 1.0) AS v,              make_array(value % 50) AS seen FROM generate_series(1, 40);
             INSERT INTO users SELECT value, make_array(cos(value), sin(value), 0.5), make_array(value % 50)              FROM generate_series(41, 80);
             CREATE TABLE items AS SELECT value AS id, make_array(sin(value * 0.7), cos(value * 1.3), 0.2) AS v              FROM generate_series(1, 100);
             INSERT INTO items SELECT value, make_array(cos(value * 0.3), sin(value), 0.9) FROM generate_series(101, 200);
             INSERT INTO items SELECT value, make_array(0.1, sin(value * 2.0), cos(value)) FROM generate_series(201, 300);",
        )
        .await;
        let sql = "SELECT user_id, rank, item_id, round(score, 9) AS score                    FROM top_k_nearest('SELECT id, v, seen FROM users', 'SELECT id, v FROM items', 4)                    ORDER BY user_id, rank";
        let session = engine.session();
        let state = session.ctx().state();
        let Planned::Query(plan) = engine.plan_sql(&session, sql).await.unwrap() else { panic!() };
        let optimized = state.optimize(&plan).unwrap();
        let shipped = with_top_k_planned(&optimized, &state).await.unwrap();
        assert_eq!(why_local(&shipped).unwrap(), None);

        let node = session_state(config_producer(), RuntimeEnvBuilder::new().build_arc().unwrap()).unwrap();
        let task = node.task_ctx();
        let bytes = logical_plan_to_bytes_with_extension_codec(&shipped, &ClusterCodec::default()).unwrap();
        let decoded = logical_plan_from_bytes_with_extension_codec(&bytes, &task, &ClusterCodec::default()).unwrap();
        let physical = node.create_physical_plan(&decoded).await.unwrap();

        let top_k = find(&physical, "TopKNearestExec").expect("a TopKNearestExec");
        assert!(top_k.children()[0].output_partitioning().partition_count() > 1, "users on one partition");
        let stages = DefaultDistributedPlanner::new()
            .plan_query_stages(&JobId::new("job"), Arc::clone(&physical), node.config().options())
            .unwrap();
        let scoring = stages
            .iter()
            .map(|stage| Arc::clone(stage) as Arc<dyn ExecutionPlan>)
            .find(|stage| find(stage, "TopKNearestExec").is_some())
            .unwrap();
        let scoring = find(&scoring, "TopKNearestExec").unwrap();
        let items = Arc::clone(scoring.children()[1]);
        assert!(find(&items, "DataSourceExec").is_none(), "items read inside the scoring stage:\n{items:?}");
        assert!(find(&items, "UnresolvedShuffleExec").is_some(), "items not read whole from a stage:\n{items:?}");

        let codec = ClusterPhysicalCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical, &codec).unwrap();
        let physical = physical_plan_from_bytes_with_extension_codec(&bytes, &task, &codec).unwrap();
        let there = pretty_format_batches(&collect(physical, task.clone()).await.unwrap()).unwrap().to_string();
        let here = answer(&engine, sql).await;
        assert_eq!(there, here);
        assert_eq!(here.lines().count(), 80 * 4 + 4, "{here}");
    }
}
