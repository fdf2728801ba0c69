//! `STORED AS JSON_API`: a paged HTTP JSON API as an external table with declared columns.
//!
//! ```sql
//! CREATE EXTERNAL TABLE landing.songs_api (song_id BIGINT NOT NULL, title VARCHAR, ...)
//! STORED AS JSON_API LOCATION 'http://127.0.0.1:8099/songs?page={page}&page_size=1000'
//! OPTIONS ('concurrency' '16', 'timeout' '10s', 'retries' '8', 'primary_key' 'song_id');
//! ```
//!
//! A scan fetches **every page before it returns a row**: pages are requested `concurrency`
//! at a time (`{page}` from 1; with `'pagination' 'cursor'` one after another, following
//! `next_cursor`), each request under its own timeout and retried on connection errors,
//! timeouts, 408/429/5xx, cut-off bodies, malformed JSON and records that do not fit the
//! declared columns, waiting a full-jitter exponential backoff and at least the server's
//! `Retry-After` (a 429 pauses every request to the API). Pagination ends at the reported
//! `total_pages` (or `total`), else at the first empty or short page. Then the crawl is
//! checked: every page reported the same total and version, the rows add up to the total,
//! no primary key came twice. A crawl that fails those checks (the catalogue changed while
//! it was read) is repeated up to `consistency_retries` times. Anything that cannot be
//! fetched fails the statement with the URL, the page, the status and what was wrong, before
//! any row reaches a write: a `MERGE` or `INSERT` from the table changes nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::http::{HttpPolicy, redact};
use crate::error::{Error, Result};

/// The `STORED AS` name.
pub const FILE_TYPE: &str = "JSON_API";

/// How pages are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pagination {
    /// `{page}` = 1, 2, ...: fetched concurrently.
    Page,
    /// `{cursor}` = what the previous page gave: fetched one after another.
    Cursor,
}

/// What to do with fields the table does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnknownFields {
    Ignore,
    Error,
}

/// A table's fetch policy, from its OPTIONS.
#[derive(Debug, Clone)]
struct ApiOptions {
    pagination: Pagination,
    records: String,
    total: String,
    total_pages: String,
    next_cursor: String,
    version: String,
    concurrency: usize,
    timeout: Duration,
    connect_timeout: Duration,
    retries: usize,
    retry_base: Duration,
    retry_max: Duration,
    max_retry_after: Duration,
    deadline: Duration,
    bearer_token_env: Option<String>,
    primary_key: Vec<String>,
    unknown_fields: UnknownFields,
    consistency_retries: u32,
    max_pages: u64,
}

/// Every option, its default and meaning (the README's table is this list).
pub const OPTIONS: &[(&str, &str, &str)] = &[
    (
        "pagination",
        "page",
        "`page`: `{page}` in the URL counts from 1, pages fetched concurrently; `cursor`: `{cursor}` is the previous page's `next_cursor` (empty at first), one page at a time",
    ),
    ("records", "/data", "JSON pointer to each page's array of records"),
    ("total", "/meta/total", "JSON pointer to the total record count (checked against the rows received)"),
    (
        "total_pages",
        "/meta/total_pages",
        "JSON pointer to the page count (else derived from `total`, else pages run to the first empty or short one)",
    ),
    ("next_cursor", "/meta/next_cursor", "JSON pointer to the next cursor (`cursor` pagination; null or absent ends)"),
    ("version", "/meta/version", "JSON pointer to the catalogue's version: pages of one crawl must agree"),
    ("concurrency", "8", "requests in flight at once (1 to 256)"),
    ("timeout", "30s", "limit for one request, answer and body"),
    ("connect_timeout", "10s", "limit for connecting"),
    ("retries", "6", "retries per page after the first attempt"),
    ("retry_base", "200ms", "first backoff; doubles per retry, full jitter"),
    ("retry_max", "30s", "longest backoff"),
    ("max_retry_after", "120s", "longest `Retry-After` honoured; a longer one fails the page"),
    ("deadline", "15m", "limit for the whole crawl"),
    ("bearer_token_env", "", "environment variable of the server holding a bearer token (the token is never stored)"),
    ("primary_key", "", "comma-separated columns that must be unique across all pages"),
    ("unknown_fields", "ignore", "`ignore` or `error` for record fields the table does not declare"),
    ("consistency_retries", "2", "crawls repeated when pages disagree (the catalogue changed while read)"),
    ("max_pages", "100000", "most pages one crawl may fetch"),
];

impl ApiOptions {
    fn parse(options: &HashMap<String, String>, schema: &Schema) -> Result<Self> {
        let mut given: HashMap<&str, &str> = HashMap::new();
        for (key, value) in options {
            let key = key.strip_prefix("format.").unwrap_or(key);
            if !OPTIONS.iter().any(|(k, _, _)| *k == key) {
                let known: Vec<&str> = OPTIONS.iter().map(|(k, _, _)| *k).collect();
                let hint = if key.contains("token") || key.contains("secret") || key.contains("password") {
                    " (secrets are never stored: name an environment variable with 'bearer_token_env')"
                } else {
                    ""
                };
                return Err(Error::invalid(format!(
                    "JSON_API: unknown option '{key}'{hint}; known: {}",
                    known.join(", ")
                )));
            }
            given.insert(key, value.as_str());
        }
        let get = |k: &str| -> &str {
            given.get(k).copied().unwrap_or_else(|| OPTIONS.iter().find(|(n, _, _)| *n == k).map_or("", |o| o.1))
        };
        let duration = |k: &str| -> Result<Duration> {
            humantime::parse_duration(get(k))
                .map_err(|e| Error::invalid(format!("JSON_API: option '{k}' = '{}': {e}", get(k))))
        };
        let number = |k: &str, min: u64, max: u64| -> Result<u64> {
            match get(k).parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(Error::invalid(format!(
                    "JSON_API: option '{k}' must be a whole number from {min} to {max}, got '{}'",
                    get(k)
                ))),
            }
        };
        let pointer = |k: &str| -> Result<String> {
            let p = get(k);
            if !p.is_empty() && !p.starts_with('/') {
                return Err(Error::invalid(format!(
                    "JSON_API: option '{k}' must be a JSON pointer like /meta/total, got '{p}'"
                )));
            }
            Ok(p.to_string())
        };
        let pagination = match get("pagination").to_ascii_lowercase().as_str() {
            "page" => Pagination::Page,
            "cursor" => Pagination::Cursor,
            other => {
                return Err(Error::invalid(format!(
                    "JSON_API: option 'pagination' must be page or cursor, got '{other}'"
                )));
            }
        };
        let unknown_fields = match get("unknown_fields").to_ascii_lowercase().as_str() {
            "ignore" => UnknownFields::Ignore,
            "error" => UnknownFields::Error,
            other => {
                return Err(Error::invalid(format!(
                    "JSON_API: option 'unknown_fields' must be ignore or error, got '{other}'"
                )));
            }
        };
        let primary_key: Vec<String> =
            get("primary_key").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        for k in &primary_key {
            if schema.field_with_name(k).is_err() {
                return Err(Error::invalid(format!("JSON_API: primary_key column '{k}' is not a declared column")));
            }
        }
        let bearer_token_env = Some(get("bearer_token_env").to_string()).filter(|s| !s.is_empty());
        if get("records").is_empty() {
            return Err(Error::invalid(
                "JSON_API: option 'records' must name the field holding the records, e.g. /data",
            ));
        }
        Ok(Self {
            pagination,
            records: pointer("records")?,
            total: pointer("total")?,
            total_pages: pointer("total_pages")?,
            next_cursor: pointer("next_cursor")?,
            version: pointer("version")?,
            concurrency: number("concurrency", 1, 256)? as usize,
            timeout: duration("timeout")?,
            connect_timeout: duration("connect_timeout")?,
            retries: number("retries", 0, 100)? as usize,
            retry_base: duration("retry_base")?,
            retry_max: duration("retry_max")?,
            max_retry_after: duration("max_retry_after")?,
            deadline: duration("deadline")?,
            bearer_token_env,
            primary_key,
            unknown_fields,
            consistency_retries: number("consistency_retries", 0, 10)? as u32,
            max_pages: number("max_pages", 1, 10_000_000)?,
        })
    }
}

/// Registered as `STORED AS JSON_API`; holds the server's allow-list.
#[derive(Debug)]
pub struct JsonApiFactory {
    policy: Arc<HttpPolicy>,
}

impl JsonApiFactory {
    pub fn new(policy: Arc<HttpPolicy>) -> Self {
        Self { policy }
    }
}

#[async_trait]
impl TableProviderFactory for JsonApiFactory {
    async fn create(&self, _state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
        let table = JsonApiTable::new(Arc::clone(&self.policy), cmd).map_err(Error::into_datafusion)?;
        Ok(Arc::new(table))
    }
}

/// One JSON_API external table.
#[derive(Debug)]
pub struct JsonApiTable {
    template: String,
    schema: SchemaRef,
    options: ApiOptions,
    policy: Arc<HttpPolicy>,
}

impl JsonApiTable {
    fn new(policy: Arc<HttpPolicy>, cmd: &CreateExternalTable) -> Result<Self> {
        let schema: SchemaRef = Arc::new(cmd.schema.as_arrow().clone());
        if schema.fields().is_empty() {
            return Err(Error::invalid(
                "JSON_API tables declare their columns: CREATE EXTERNAL TABLE t (id BIGINT NOT NULL, ...) STORED AS JSON_API ...",
            ));
        }
        if !cmd.table_partition_cols.is_empty() {
            return Err(Error::invalid("JSON_API tables have no PARTITIONED BY"));
        }
        if cmd.locations.len() != 1 {
            return Err(Error::invalid("JSON_API tables take one LOCATION, the URL template"));
        }
        let options = ApiOptions::parse(&cmd.options, &schema)?;
        let template = cmd.locations[0].clone();
        let placeholder = match options.pagination {
            Pagination::Page => "{page}",
            Pagination::Cursor => "{cursor}",
        };
        if !template.contains(placeholder) {
            return Err(Error::invalid(format!(
                "JSON_API: LOCATION must contain {placeholder} where the {} goes, e.g. 'https://api.example.com/songs?{}={placeholder}'",
                placeholder.trim_matches(|c| c == '{' || c == '}'),
                placeholder.trim_matches(|c| c == '{' || c == '}')
            )));
        }
        // The allow-list decides here, before anything is stored or fetched.
        policy.check(&render(&template, "1", ""))?;
        Ok(Self { template, schema, options, policy })
    }

    /// The URL template (for messages).
    pub fn template(&self) -> &str {
        &self.template
    }
}

fn render(template: &str, page: &str, cursor: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
    template.replace("{page}", page).replace("{cursor}", &encoded)
}

#[async_trait]
impl TableProvider for JsonApiTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&projected)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Arc::new(JsonApiExec {
            fetch: Arc::new(Fetch {
                template: self.template.clone(),
                schema: Arc::clone(&self.schema),
                options: self.options.clone(),
                policy: Arc::clone(&self.policy),
            }),
            projection: projection.cloned(),
            projected,
            properties: Arc::new(properties),
        }))
    }
}

/// Everything one crawl needs.
#[derive(Debug)]
struct Fetch {
    template: String,
    schema: SchemaRef,
    options: ApiOptions,
    policy: Arc<HttpPolicy>,
}

/// Fetches the whole API, then yields its rows.
#[derive(Debug)]
pub struct JsonApiExec {
    fetch: Arc<Fetch>,
    projection: Option<Vec<usize>>,
    projected: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for JsonApiExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "JsonApiExec: url={}, concurrency={}", self.fetch.template, self.fetch.options.concurrency)
    }
}

impl ExecutionPlan for JsonApiExec {
    fn name(&self) -> &str {
        "JsonApiExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("JsonApiExec has one partition, asked for {partition}")));
        }
        let reservation = MemoryConsumer::new("JsonApiExec").register(context.memory_pool());
        let fetch = Arc::clone(&self.fetch);
        let projection = self.projection.clone();
        let batches = futures::stream::once(async move {
            let batches = fetch.run(reservation).await.map_err(Error::into_datafusion)?;
            let projected = batches
                .into_iter()
                .map(|b| match &projection {
                    Some(p) => b.project(p).map_err(DataFusionError::from),
                    None => Ok(b),
                })
                .collect::<DfResult<Vec<_>>>()?;
            Ok::<_, DataFusionError>(futures::stream::iter(projected.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.projected), batches)))
    }
}

/// One page as fetched and checked.
struct Page {
    number: u64,
    batch: RecordBatch,
    rows: usize,
    total: Option<u64>,
    total_pages: Option<u64>,
    next_cursor: Option<String>,
    version: Option<Value>,
    keys: Vec<String>,
}

/// Why one request failed.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    detail: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn retry(detail: impl Into<String>) -> Self {
        Self { status: None, detail: detail.into(), retryable: true, retry_after: None }
    }

    fn fatal(detail: impl Into<String>) -> Self {
        Self { status: None, detail: detail.into(), retryable: false, retry_after: None }
    }
}

/// Counters of one crawl, for the log lines.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    /// Pages fetched in the current crawl, and how many it has (0 while unknown).
    pages: AtomicU64,
    expected: AtomicU64,
}

/// What requests share: the client, the token, the pause a 429 imposes, the memory held.
struct Shared {
    client: reqwest::Client,
    token: Option<String>,
    paused_until: Mutex<Option<Instant>>,
    reservation: Mutex<MemoryReservation>,
    counters: Counters,
    /// When progress was last logged: a long crawl says how far it is every few seconds.
    reported: Mutex<Instant>,
}

impl Shared {
    fn page_done(&self, url: &str) {
        let c = &self.counters;
        let pages = c.pages.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut last) = self.reported.lock() else { return };
        if last.elapsed() < Duration::from_secs(5) {
            return;
        }
        *last = Instant::now();
        let expected = c.expected.load(Ordering::Relaxed);
        info!(
            url = %url,
            pages,
            of = if expected > 0 { expected.to_string() } else { "?".to_string() },
            retries = c.retries.load(Ordering::Relaxed),
            bytes = c.bytes.load(Ordering::Relaxed),
            "JSON_API progress"
        );
    }
}

impl Fetch {
    /// Every page, checked, as batches in page order.
    async fn run(&self, reservation: MemoryReservation) -> Result<Vec<RecordBatch>> {
        let started = Instant::now();
        let token = match &self.options.bearer_token_env {
            Some(name) => Some(std::env::var(name).map_err(|_| {
                Error::invalid(format!(
                    "JSON_API: bearer_token_env names {name}, which is not set in the server's environment"
                ))
            })?),
            None => None,
        };
        let shared = Shared {
            client: self.policy.client(self.options.connect_timeout)?,
            token,
            paused_until: Mutex::new(None),
            reservation: Mutex::new(reservation),
            counters: Counters::default(),
            reported: Mutex::new(Instant::now()),
        };
        let deadline = self.options.deadline;
        let mut crawl = 0;
        loop {
            let result = tokio::time::timeout(deadline, self.crawl(&shared)).await.unwrap_or_else(|_| {
                Err(Error::Source(format!(
                    "JSON_API {}: the crawl did not finish within the deadline of {} (option 'deadline')",
                    self.template,
                    humantime::format_duration(deadline)
                )))
            });
            match result {
                Ok(Ok(pages)) => {
                    let rows: usize = pages.iter().map(|p| p.rows).sum();
                    let c = &shared.counters;
                    info!(
                        url = %self.template,
                        pages = pages.len(),
                        rows,
                        requests = c.requests.load(Ordering::Relaxed),
                        retries = c.retries.load(Ordering::Relaxed),
                        bytes = c.bytes.load(Ordering::Relaxed),
                        crawls = crawl + 1,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "JSON_API fetched"
                    );
                    return Ok(pages.into_iter().map(|p| p.batch).filter(|b| b.num_rows() > 0).collect());
                }
                Ok(Err(inconsistent)) if crawl < self.options.consistency_retries => {
                    warn!(url = %self.template, crawl = crawl + 1, reason = %inconsistent, "JSON_API pages disagree; crawling again");
                    shared.reservation.lock().map(|r| r.free()).ok();
                    crawl += 1;
                }
                Ok(Err(inconsistent)) => {
                    return Err(Error::Source(format!(
                        "JSON_API {}: the pages do not add up after {} crawls: {inconsistent} (the catalogue may be \
                         changing while it is read; raise 'consistency_retries' or sync at a quieter time)",
                        self.template,
                        crawl + 1
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One crawl: `Ok(Err(reason))` when the pages arrived but disagree.
    async fn crawl(&self, shared: &Shared) -> Result<std::result::Result<Vec<Page>, String>> {
        shared.counters.pages.store(0, Ordering::Relaxed);
        shared.counters.expected.store(0, Ordering::Relaxed);
        let pages = match self.options.pagination {
            Pagination::Page => self.crawl_pages(shared).await?,
            Pagination::Cursor => self.crawl_cursor(shared).await?,
        };
        Ok(self.check(&pages).map(|()| pages))
    }

    async fn crawl_pages(&self, shared: &Shared) -> Result<Vec<Page>> {
        let first = self.page(shared, 1, "").await?;
        let per_page = first.rows as u64;
        let known_pages = first.total_pages.or_else(|| match (first.total, per_page) {
            (Some(t), n) if n > 0 => Some(t.div_ceil(n)),
            (Some(_), _) => Some(1),
            _ => None,
        });
        let mut pages = vec![first];
        if per_page == 0 {
            return Ok(pages);
        }
        shared.counters.expected.store(known_pages.unwrap_or(0), Ordering::Relaxed);
        if let Some(n) = known_pages {
            if n > self.options.max_pages {
                return Err(self.too_many(n));
            }
            let rest: Vec<Page> = futures::stream::iter(2..=n)
                .map(|p| self.page(shared, p, ""))
                .buffered(self.options.concurrency)
                .try_collect()
                .await?;
            pages.extend(rest);
            return Ok(pages);
        }
        // No count: waves of `concurrency` pages until an empty or short one.
        let mut next = 2u64;
        loop {
            if next > self.options.max_pages {
                return Err(self.too_many(next));
            }
            let wave_end = (next + self.options.concurrency as u64 - 1).min(self.options.max_pages);
            let wave: Vec<Page> = futures::stream::iter(next..=wave_end)
                .map(|p| self.page(shared, p, ""))
                .buffered(self.options.concurrency)
                .try_collect()
                .await?;
            for page in wave {
                let last = (page.rows as u64) < per_page;
                pages.push(page);
                if last {
                    return Ok(pages);
                }
            }
            next = wave_end + 1;
        }
    }

    async fn crawl_cursor(&self, shared: &Shared) -> Result<Vec<Page>> {
        let mut pages = Vec::new();
        let mut cursor = String::new();
        let mut seen = HashSet::new();
        loop {
            let number = pages.len() as u64 + 1;
            if number > self.options.max_pages {
                return Err(self.too_many(number));
            }
            let page = self.page(shared, number, &cursor).await?;
            let next = page.next_cursor.clone();
            let empty = page.rows == 0;
            pages.push(page);
            match next {
                Some(c) if !c.is_empty() && !empty => {
                    if !seen.insert(c.clone()) {
                        return Err(Error::Source(format!(
                            "JSON_API {}: the API returned cursor '{c}' twice: its pagination loops",
                            self.template
                        )));
                    }
                    cursor = c;
                }
                _ => return Ok(pages),
            }
        }
    }

    fn too_many(&self, n: u64) -> Error {
        Error::Source(format!(
            "JSON_API {}: {n} pages is more than 'max_pages' ({}) allows",
            self.template, self.options.max_pages
        ))
    }

    /// Pages agree on total and version, rows add up, keys are unique.
    fn check(&self, pages: &[Page]) -> std::result::Result<(), String> {
        let Some(first) = pages.first() else { return Ok(()) };
        for p in pages {
            if p.total != first.total {
                return Err(format!(
                    "page {} reported a total of {:?} records, page {} reported {:?}",
                    first.number, first.total, p.number, p.total
                ));
            }
            if p.version != first.version {
                return Err(format!(
                    "page {} came from catalogue version {:?}, page {} from {:?}",
                    first.number, first.version, p.number, p.version
                ));
            }
        }
        let rows: u64 = pages.iter().map(|p| p.rows as u64).sum();
        if let Some(total) = first.total
            && rows != total
        {
            return Err(format!("{} pages gave {rows} records, the API reported {total}", pages.len()));
        }
        if !self.options.primary_key.is_empty() {
            let mut seen: HashMap<&str, u64> = HashMap::new();
            for p in pages {
                for k in &p.keys {
                    if let Some(other) = seen.insert(k.as_str(), p.number) {
                        return Err(format!(
                            "{} = {k} came on page {other} and on page {}",
                            self.options.primary_key.join(", "),
                            p.number
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// One page with retries: the error names the URL, the page, the status and the cause.
    async fn page(&self, shared: &Shared, number: u64, cursor: &str) -> Result<Page> {
        let url = render(&self.template, &number.to_string(), cursor);
        let checked = self.policy.check(&url)?;
        let shown = redact(&checked);
        let attempts = AtomicU64::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.options.retry_base)
            .with_max_delay(self.options.retry_max)
            .with_max_times(self.options.retries);
        let max_retry_after = self.options.max_retry_after;
        let too_long = Mutex::new(None::<Duration>);
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(shared, &url, number).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retryable)
        .adjust(|f: &Failure, delay: Option<Duration>| {
            let delay = delay?;
            // Full jitter: anywhere from nothing to the exponential delay.
            let jittered = delay.mul_f64(rand::random::<f64>());
            match f.retry_after {
                Some(after) if after > max_retry_after => {
                    if let Ok(mut t) = too_long.lock() {
                        *t = Some(after);
                    }
                    None
                }
                Some(after) => Some(after.max(jittered)),
                None => Some(jittered),
            }
        })
        .notify(|f: &Failure, delay: Duration| {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            debug!(url = %shown, page = number, status = ?f.status, detail = %f.detail, delay_ms = delay.as_millis() as u64, "JSON_API retry");
        })
        .await;
        result.map_err(|f| {
            let n = attempts.load(Ordering::Relaxed);
            let status = f.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
            let why = match too_long.lock().ok().and_then(|t| *t) {
                Some(after) => format!(
                    "; the server asked to wait {}, more than 'max_retry_after' ({}) allows",
                    humantime::format_duration(after),
                    humantime::format_duration(max_retry_after)
                ),
                None if f.retryable => format!(
                    "; gave up after {n} attempt{} (raise 'retries' or 'timeout' if the API is slow)",
                    if n == 1 { "" } else { "s" }
                ),
                None => String::new(),
            };
            Error::Source(format!("JSON_API {shown} (page {number}): {status}{}{why}", f.detail))
        })
    }

    /// One request.
    async fn attempt(&self, shared: &Shared, url: &str, number: u64) -> std::result::Result<Page, Failure> {
        let pause = shared.paused_until.lock().ok().and_then(|p| *p);
        if let Some(until) = pause {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
            }
        }
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = shared.client.get(url).timeout(self.options.timeout).header("accept", "application/json");
        if let Some(token) = &shared.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| describe(&e, self.options.timeout))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            let retryable = status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error();
            if status.as_u16() == 429 {
                let wait = retry_after.unwrap_or(Duration::from_secs(1)).min(self.options.max_retry_after);
                if let Ok(mut p) = shared.paused_until.lock() {
                    let until = Instant::now() + wait;
                    if p.is_none_or(|u| u < until) {
                        *p = Some(until);
                    }
                }
            }
            let detail = if status.is_redirection() {
                "a redirect the client did not follow".to_string()
            } else {
                format!("{} {}", status.canonical_reason().unwrap_or(""), body.trim()).trim().to_string()
            };
            return Err(Failure { status: Some(status.as_u16()), detail, retryable, retry_after });
        }
        let bytes = response.bytes().await.map_err(|e| {
            let mut f = describe(&e, self.options.timeout);
            f.detail = format!("the body ended early: {}", f.detail);
            f
        })?;
        shared.counters.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| Failure::retry(format!("the body is not valid JSON: {e}")))?;
        let page = self.decode(&bytes, &value, number).map_err(Failure::retry)?;
        shared.page_done(&self.template);
        let size = page.batch.get_array_memory_size();
        if let Ok(r) = shared.reservation.lock() {
            r.try_grow(size).map_err(|e| Failure::fatal(format!("the pages do not fit in the query's memory: {e}")))?;
        }
        Ok(page)
    }

    /// Records of a page checked against the declared columns, as one batch.
    fn decode(&self, bytes: &[u8], value: &Value, number: u64) -> std::result::Result<Page, String> {
        let records = value
            .pointer(&self.options.records)
            .ok_or_else(|| format!("the answer has no records at {}", self.options.records))?
            .as_array()
            .ok_or_else(|| format!("{} is not an array", self.options.records))?;
        let pointer_u64 = |p: &str| if p.is_empty() { None } else { value.pointer(p).and_then(Value::as_u64) };
        let mut keys = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let object = record.as_object().ok_or_else(|| format!("record {} is not an object", i + 1))?;
            for field in self.schema.fields() {
                let v = object.get(field.name()).unwrap_or(&Value::Null);
                if v.is_null() {
                    if !field.is_nullable() {
                        return Err(format!("record {} has no value for {}, which is NOT NULL", i + 1, field.name()));
                    }
                    continue;
                }
                if !fits(field.data_type(), v) {
                    return Err(format!(
                        "record {}: field {} should be {}, got {}",
                        i + 1,
                        field.name(),
                        field.data_type(),
                        short(v)
                    ));
                }
            }
            if self.options.unknown_fields == UnknownFields::Error
                && let Some(extra) = object.keys().find(|k| self.schema.field_with_name(k).is_err())
            {
                return Err(format!("record {} has field '{extra}', which the table does not declare", i + 1));
            }
            if !self.options.primary_key.is_empty() {
                let mut key = String::new();
                for (j, k) in self.options.primary_key.iter().enumerate() {
                    let v = object.get(k).unwrap_or(&Value::Null);
                    if v.is_null() {
                        return Err(format!("record {} has no value for primary key column {k}", i + 1));
                    }
                    if j > 0 {
                        key.push_str(", ");
                    }
                    key.push_str(&v.to_string());
                }
                keys.push(key);
            }
        }
        let batch = self.decode_records(bytes, records.len())?;
        Ok(Page {
            number,
            rows: records.len(),
            batch,
            total: pointer_u64(&self.options.total),
            total_pages: pointer_u64(&self.options.total_pages),
            next_cursor: if self.options.next_cursor.is_empty() {
                None
            } else {
                value.pointer(&self.options.next_cursor).and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            },
            version: if self.options.version.is_empty() { None } else { value.pointer(&self.options.version).cloned() },
            keys,
        })
    }
}

impl Fetch {
    /// The records as a batch, decoded by arrow-json from the page's own text: its number
    /// parsing is exact (serde_json's default float parsing can be one unit in the last place
    /// off). The page is read as one row of a schema that nests the declared columns under
    /// the `records` pointer, e.g. `{data: [struct]}`; other fields are ignored.
    fn decode_records(&self, bytes: &[u8], expected: usize) -> std::result::Result<RecordBatch, String> {
        use arrow::array::{Array, AsArray, StructArray};
        use arrow::datatypes::{Field, Fields};
        let segments: Vec<String> =
            self.options.records.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
        let row = DataType::Struct(self.schema.fields().clone());
        let mut field = Field::new(
            segments.last().cloned().unwrap_or_default(),
            DataType::List(Arc::new(Field::new("item", row, true))),
            true,
        );
        for name in segments.iter().rev().skip(1) {
            field = Field::new(name.clone(), DataType::Struct(Fields::from(vec![field])), true);
        }
        let wrapper = Arc::new(Schema::new(vec![field]));
        let mut decoder =
            arrow::json::ReaderBuilder::new(wrapper).with_batch_size(1).build_decoder().map_err(|e| e.to_string())?;
        decoder.decode(bytes).map_err(|e| format!("records do not fit the declared columns: {e}"))?;
        let page = decoder.flush().map_err(|e| format!("records do not fit the declared columns: {e}"))?;
        let Some(page) = page else {
            return Err("the body holds no JSON object".to_string());
        };
        let mut column = Arc::clone(page.column(0));
        for _ in 1..segments.len() {
            column = Arc::clone(column.as_struct().column(0));
        }
        let list = column.as_list::<i32>();
        if list.is_empty() || list.is_null(0) {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        let values = list.value(0);
        let rows: &StructArray = values.as_struct();
        if rows.len() != expected {
            return Err(format!("decoded {} records where the page holds {expected}", rows.len()));
        }
        RecordBatch::try_new(Arc::clone(&self.schema), rows.columns().to_vec()).map_err(|e| e.to_string())
    }
}

/// Whether a JSON value has the shape a column of `t` takes (no silent coercion of strings
/// into numbers or numbers into strings).
fn fits(t: &DataType, v: &Value) -> bool {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => v.is_i64(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => v.is_u64(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => v.is_number(),
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            v.is_number() || v.is_string()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => v.is_string(),
        DataType::Boolean => v.is_boolean(),
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => v.is_string(),
        DataType::Timestamp(..) => v.is_string() || v.is_i64(),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => v.is_array(),
        DataType::Struct(_) | DataType::Map(..) => v.is_object(),
        _ => true,
    }
}

/// A JSON value as text, cut at 60 characters (for error messages).
pub(crate) fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 { format!("{}…", text.chars().take(60).collect::<String>()) } else { text }
}

/// A client error as a retryable failure with a readable cause.
fn describe(e: &reqwest::Error, timeout: Duration) -> Failure {
    if e.is_redirect() {
        let mut source = std::error::Error::source(e);
        let mut text = e.to_string();
        while let Some(s) = source {
            text = s.to_string();
            source = s.source();
        }
        return Failure::fatal(text);
    }
    if e.is_timeout() {
        return Failure::retry(format!("no answer within {} (option 'timeout')", humantime::format_duration(timeout)));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let mut f = Failure::retry(text);
    f.status = e.status().map(|s| s.as_u16());
    f
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)])
    }

    #[test]
    fn options_have_defaults_and_clear_errors() {
        let o = ApiOptions::parse(&HashMap::new(), &schema()).unwrap();
        assert_eq!((o.concurrency, o.retries, o.pagination), (8, 6, Pagination::Page));
        let bad = |k: &str, v: &str| {
            let m = HashMap::from([(format!("format.{k}"), v.to_string())]);
            ApiOptions::parse(&m, &schema()).unwrap_err().to_string()
        };
        assert!(bad("concurrency", "0").contains("from 1 to 256"));
        assert!(bad("timeout", "soon").contains("'timeout'"));
        assert!(bad("token", "abc").contains("bearer_token_env"));
        assert!(bad("primary_key", "nope").contains("not a declared column"));
        assert!(bad("pagination", "offset").contains("page or cursor"));
        assert!(bad("records", "data").contains("JSON pointer"));
    }

    #[test]
    fn values_must_have_the_declared_shape() {
        assert!(fits(&DataType::Int64, &serde_json::json!(3)));
        assert!(!fits(&DataType::Int64, &serde_json::json!("3")));
        assert!(!fits(&DataType::Int64, &serde_json::json!(3.5)));
        assert!(!fits(&DataType::Utf8, &serde_json::json!(3)));
        assert!(fits(&DataType::Date32, &serde_json::json!("2024-01-02")));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn cursors_are_encoded_into_the_template() {
        assert_eq!(render("http://h/s?c={cursor}", "1", "a b&c"), "http://h/s?c=a+b%26c");
        assert_eq!(render("http://h/s?page={page}", "7", ""), "http://h/s?page=7");
    }
}
