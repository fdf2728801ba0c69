//! The Flight SQL service: arrow-flight's `FlightSqlService`, implemented directly over the
//! engine, plus a thin [`wrapper::Service`] that answers `GetSchema` and `PollFlightInfo`
//! (which the arrow-flight adapter leaves unimplemented).
//!
//! How a statement flows:
//! - `GetFlightInfo` plans it. A query's physical plan is kept under a fresh ticket and its
//!   schema (view and dictionary types made plain) is announced; DDL and DML run right away,
//!   so they take effect even if the client never fetches, and their answer (a row count) is
//!   kept under the ticket.
//! - `DoGet` takes the ticket and streams the plan's batches; tonic pulls only as fast as the
//!   client reads (backpressure). Dropping the stream drops the plan, which stops the query;
//!   `CancelFlightInfo` cancels it from another connection.

pub mod metadata;
pub mod wrapper;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{GetCatalogsBuilder, SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionEndSavepointRequest, ActionEndTransactionRequest, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor, FlightEndpoint,
    FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, TableReference};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use streampulse_catalog::{CATALOG_NAME, Engine, IngestMode, Planned, StatementKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, Principal, parse_basic};
use crate::status::{catalog_status, datafusion_status};
use metadata::{annotated_table_schema, client_schema, conform, foreign_keys_schema, like, primary_keys_schema};

/// How long an unfetched ticket or an unused prepared statement is kept.
const HANDLE_TTL: Duration = Duration::from_secs(30 * 60);
/// Largest gRPC message accepted or sent (bulk ingest sends big batches).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

type DoGetStream = <StreamPulseFlightSql as FlightService>::DoGetStream;

/// What a ticket stands for until `DoGet` takes it.
enum Pending {
    /// A planned query, run when fetched.
    Query { ctx: SessionContext, plan: Arc<dyn ExecutionPlan>, schema: SchemaRef, user: String, sql: String },
    /// The answer of a statement that already ran (DDL/DML).
    Ready { batch: RecordBatch, user: String },
}

struct PreparedStatement {
    sql: String,
    user: String,
    kind: StatementKind,
    dataset_schema: SchemaRef,
    parameter_schema: SchemaRef,
    /// Bound parameter rows (one row per execution).
    params: Option<Vec<Vec<ScalarValue>>>,
    touched: Instant,
}

/// The Flight SQL service over one engine.
pub struct StreamPulseFlightSql {
    engine: Engine,
    auth: Arc<Authenticator>,
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
    running: Running,
    prepared: Mutex<HashMap<String, PreparedStatement>>,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
    admission: Admission,
}

/// Admission control: at most `max` statements run at once; the others wait in a FIFO queue
/// (tokio's semaphore is fair) for at most `timeout`, then fail with RESOURCE_EXHAUSTED.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl Admission {
    /// Let `max` statements run at once, queueing the rest for up to `timeout`.
    pub fn new(max: usize, timeout: Duration) -> Self {
        let max = max.max(1);
        Self { permits: Arc::new(Semaphore::new(max)), max, timeout }
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        let waiting = Instant::now();
        let permit = tokio::time::timeout(self.timeout, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "server busy: {} statements running and this one waited {:?} in the queue; retry later, \
                     or raise --max-concurrent-queries / --queue-timeout",
                    self.max, self.timeout
                ))
            })?
            .map_err(|_| Status::unavailable("server shutting down"))?;
        let waited = waiting.elapsed();
        if waited > Duration::from_millis(100) {
            info!(waited_ms = waited.as_millis() as u64, "statement admitted after queueing");
        }
        Ok(permit)
    }
}

impl StreamPulseFlightSql {
    /// A service over `engine`, authenticating with `auth`, admitting statements by `admission`.
    pub fn new(engine: Engine, auth: Arc<Authenticator>, admission: Admission) -> Result<Self, Status> {
        Ok(Self {
            admission,
            engine,
            auth,
            pending: Mutex::new(HashMap::new()),
            running: Arc::new(Mutex::new(HashMap::new())),
            prepared: Mutex::new(HashMap::new()),
            sql_info: metadata::sql_info()?,
            xdbc: metadata::xdbc_info()?,
        })
    }

    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.auth.authenticate(self.engine.catalog(), request.metadata()).await
    }

    fn put_pending(&self, pending: Pending) -> Result<String, Status> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut map = self.pending.lock().map_err(|_| Status::internal("ticket table poisoned"))?;
        map.retain(|_, (_, at)| at.elapsed() < HANDLE_TTL);
        map.insert(id.clone(), (pending, Instant::now()));
        Ok(id)
    }

    fn flight_info(&self, id: &str, schema: &Schema, descriptor: FlightDescriptor, rows: i64) -> Result<FlightInfo, Status> {
        let ticket = TicketStatementQuery { statement_handle: Bytes::from(id.to_string()) };
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding schema: {e}")))
            .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor).with_total_records(rows).with_ordered(true))
    }

    /// Plan (and for DDL/DML, run) a statement, returning its FlightInfo.
    async fn statement_info(
        &self,
        principal: &Principal,
        sql: &str,
        params: Option<Vec<Vec<ScalarValue>>>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let ctx = self.engine.session();
        let planned = self.engine.plan_sql(&ctx, sql).await.map_err(catalog_status)?;
        authorize(principal, &planned)?;
        match planned {
            Planned::Query(plan) => {
                let plan = bind_single(plan, params)?;
                let physical = self.engine.physical_plan(&ctx, plan).await.map_err(catalog_status)?;
                let schema = client_schema(&physical.schema());
                let id = self.put_pending(Pending::Query {
                    ctx,
                    plan: physical,
                    schema: schema.clone(),
                    user: principal.user.clone(),
                    sql: sql.to_string(),
                })?;
                debug!(user = %principal.user, ticket = %id, "query planned");
                self.flight_info(&id, &schema, descriptor, -1)
            }
            other => {
                let _permit = self.admission.admit().await?;
                let count = self.run_command(&ctx, other, params).await?;
                let batch = count_batch(count)?;
                let stats = Engine::stats(&ctx);
                info!(
                    user = %principal.user,
                    sql,
                    rows = count.unwrap_or(0),
                    peak_memory = stats.peak_memory,
                    spill_count = stats.spill_count,
                    spilled_bytes = stats.spilled_bytes,
                    "statement executed"
                );
                let schema = batch.schema();
                let id = self.put_pending(Pending::Ready { batch, user: principal.user.clone() })?;
                self.flight_info(&id, &schema, descriptor, 1)
            }
        }
    }

    /// Run DDL/DML/SET with optional parameter rows; DML over many rows runs as one statement
    /// (one commit), so `executemany` is all-or-nothing.
    async fn run_command(
        &self,
        ctx: &SessionContext,
        planned: Planned,
        params: Option<Vec<Vec<ScalarValue>>>,
    ) -> Result<Option<u64>, Status> {
        match (planned, params) {
            (Planned::Dml(plan), Some(rows)) if !rows.is_empty() => {
                if matches!(&plan, LogicalPlan::Dml(d) if matches!(d.op, WriteOp::Insert(_))) {
                    let plan = bind_many_dml(plan, rows)?;
                    return self.engine.run_dml(ctx, plan).await.map(Some).map_err(catalog_status);
                }
                // UPDATE/DELETE: one statement per parameter row.
                let mut total = 0;
                for row in rows {
                    let bound = plan.clone().with_param_values(param_values(row)).map_err(datafusion_status)?;
                    total += self.engine.run_dml(ctx, bound).await.map_err(catalog_status)?;
                }
                Ok(Some(total))
            }
            (planned, _) => self.engine.run_command(ctx, planned).await.map_err(catalog_status),
        }
    }

    /// Stream a ticket's result.
    async fn stream_ticket(&self, principal: &Principal, id: &str) -> Result<Response<DoGetStream>, Status> {
        let entry = self
            .pending
            .lock()
            .map_err(|_| Status::internal("ticket table poisoned"))?
            .remove(id)
            .map(|(p, _)| p)
            .ok_or_else(|| Status::not_found(format!("ticket {id} is unknown, expired, cancelled or already fetched")))?;
        match entry {
            Pending::Ready { batch, user } => {
                check_owner(principal, &user)?;
                let schema = batch.schema();
                let stream = futures::stream::iter([Ok(batch)]);
                let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(stream).map_err(Status::from);
                Ok(Response::new(Box::pin(flight)))
            }
            Pending::Query { ctx, plan, schema, user, sql } => {
                check_owner(principal, &user)?;
                let permit = self.admission.admit().await?;
                let token = CancellationToken::new();
                self.running
                    .lock()
                    .map_err(|_| Status::internal("query table poisoned"))?
                    .insert(id.to_string(), token.clone());
                let stream = self.engine.execute(&ctx, Arc::clone(&plan)).map_err(catalog_status)?;
                info!(user = %user, ticket = %id, sql = %sql, "query started");
                let target = schema.clone();
                let batches = stream.map(move |r| match r {
                    Ok(b) => conform(b, &target).map_err(|e| FlightError::Tonic(Box::new(Status::internal(e.to_string())))),
                    Err(e) => Err(FlightError::Tonic(Box::new(datafusion_status(e)))),
                });
                let guarded = Cancellable {
                    inner: Box::pin(batches),
                    cancelled: Box::pin(token.clone().cancelled_owned()),
                    done: false,
                    guard: RunningGuard {
                        id: id.to_string(),
                        running: self.running.clone(),
                        rows: 0,
                        completed: false,
                        ctx,
                        plan,
                        _permit: permit,
                    },
                };
                let flight = FlightDataEncoderBuilder::new()
                    .with_schema(schema)
                    .build(guarded)
                    .map_err(Status::from);
                Ok(Response::new(Box::pin(flight)))
            }
        }
    }

    fn cancel(&self, id: &str) -> CancelStatus {
        if let Ok(running) = self.running.lock() {
            if let Some(token) = running.get(id) {
                token.cancel();
                info!(ticket = %id, "query cancelled");
                return CancelStatus::Cancelled;
            }
        }
        if let Ok(mut pending) = self.pending.lock() {
            if pending.remove(id).is_some() {
                info!(ticket = %id, "query cancelled before it was fetched");
                return CancelStatus::Cancelled;
            }
        }
        CancelStatus::NotCancellable
    }

    fn prepared_mut<R>(&self, handle: &[u8], f: impl FnOnce(&mut PreparedStatement) -> Result<R, Status>) -> Result<R, Status> {
        let key = String::from_utf8_lossy(handle).to_string();
        let mut map = self.prepared.lock().map_err(|_| Status::internal("prepared statement table poisoned"))?;
        let stmt = map
            .get_mut(&key)
            .ok_or_else(|| Status::not_found(format!("prepared statement {key} is unknown or closed")))?;
        stmt.touched = Instant::now();
        f(stmt)
    }

    /// The tables GetTables reports, optionally with their schemas.
    async fn list_tables(&self, query: &CommandGetTables) -> Result<RecordBatch, Status> {
        let state = self.engine.refresh().await.map_err(catalog_status)?;
        let mut builder = query.clone().into_builder();
        let catalog_ok = query.catalog.as_deref().is_none_or(|c| c.is_empty() || c == CATALOG_NAME);
        if catalog_ok {
            let ctx = self.engine.session();
            let schema_pattern = query.db_schema_filter_pattern.as_deref();
            let table_pattern = query.table_name_filter_pattern.as_deref();
            let wanted_type = |t: &str| query.table_types.is_empty() || query.table_types.iter().any(|x| x == t);
            let mut rows: Vec<(String, String, String)> = Vec::new();
            for (schema, entry) in &state.schemas {
                for (table, t) in &entry.tables {
                    rows.push((schema.clone(), table.clone(), t.table_type().to_string()));
                }
            }
            for t in ["columns", "df_settings", "parameters", "routines", "schemata", "tables", "views"] {
                rows.push(("information_schema".into(), t.into(), "VIEW".into()));
            }
            for (schema, table, table_type) in rows {
                if !like(schema_pattern, &schema) || !like(table_pattern, &table) || !wanted_type(&table_type) {
                    continue;
                }
                let table_schema = if query.include_schema {
                    let reference = TableReference::full(CATALOG_NAME, schema.as_str(), table.as_str());
                    match ctx.table_provider(reference).await {
                        Ok(p) => annotated_table_schema(CATALOG_NAME, &schema, &table, &p.schema()),
                        Err(e) => {
                            warn!(schema, table, error = %e, "table listed but cannot be opened");
                            continue;
                        }
                    }
                } else {
                    Schema::empty()
                };
                builder
                    .append(CATALOG_NAME, &schema, &table, &table_type, &table_schema)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        builder.build().map_err(|e| Status::internal(e.to_string()))
    }

    fn metadata_info(&self, cmd: impl ProstMessageExt, schema: &Schema, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let ticket = Ticket::new(cmd.as_any().encode_to_vec());
        let endpoint = FlightEndpoint::new().with_ticket(ticket);
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding schema: {e}")))
            .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Schema of what `descriptor` would return, without running anything.
    pub(crate) async fn schema_for(&self, principal: &Principal, cmd: arrow_flight::sql::Command) -> Result<Option<SchemaRef>, Status> {
        use arrow_flight::sql::Command;
        Ok(Some(match cmd {
            Command::CommandStatementQuery(q) => {
                let ctx = self.engine.session();
                let planned = self.engine.plan_sql(&ctx, &q.query).await.map_err(catalog_status)?;
                match planned {
                    Planned::Query(plan) => {
                        let physical = self.engine.physical_plan(&ctx, plan).await.map_err(catalog_status)?;
                        client_schema(&physical.schema())
                    }
                    _ => count_schema_for(planned.kind()),
                }
            }
            Command::CommandPreparedStatementQuery(q) => {
                let _ = principal;
                self.prepared_mut(&q.prepared_statement_handle, |p| Ok(p.dataset_schema.clone()))?
            }
            _ => return Ok(None),
        }))
    }

    fn decode_ticket_id(ticket: &Ticket) -> Option<String> {
        let any = Any::decode(ticket.ticket.clone()).ok()?;
        let t: TicketStatementQuery = any.unpack().ok()??;
        String::from_utf8(t.statement_handle.to_vec()).ok()
    }
}

/// Readers may run queries and session statements only; anything that writes, even wrapped in
/// `EXPLAIN ANALYZE`, needs an admin.
fn authorize(principal: &Principal, planned: &Planned) -> Result<(), Status> {
    match planned.kind() {
        StatementKind::Ddl => principal.require_admin("change the catalog (CREATE, DROP)"),
        _ if planned.writes() => principal.require_admin("change data (INSERT, COPY)"),
        _ => Ok(()),
    }
}

fn check_owner(principal: &Principal, owner: &str) -> Result<(), Status> {
    if principal.user == owner {
        Ok(())
    } else {
        Err(Status::permission_denied("this ticket belongs to another user"))
    }
}

fn count_schema_for(kind: StatementKind) -> SchemaRef {
    match kind {
        StatementKind::Dml => streampulse_catalog::engine::count_schema(),
        _ => Arc::new(Schema::empty()),
    }
}

/// The answer of a statement that ran: `count` for DML, no columns for DDL/SET.
fn count_batch(count: Option<u64>) -> Result<RecordBatch, Status> {
    match count {
        Some(n) => RecordBatch::try_new(
            streampulse_catalog::engine::count_schema(),
            vec![Arc::new(UInt64Array::from(vec![n]))],
        )
        .map_err(|e| Status::internal(e.to_string())),
        None => Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
    }
}

fn param_values(row: Vec<ScalarValue>) -> ParamValues {
    ParamValues::List(row.into_iter().map(ScalarAndMetadata::from).collect())
}

/// Bind at most one parameter row to a query.
fn bind_single(plan: LogicalPlan, params: Option<Vec<Vec<ScalarValue>>>) -> Result<LogicalPlan, Status> {
    match params {
        None => Ok(plan),
        Some(rows) if rows.is_empty() => Ok(plan),
        Some(mut rows) if rows.len() == 1 => {
            plan.with_param_values(param_values(rows.remove(0))).map_err(datafusion_status)
        }
        Some(rows) => Err(Status::invalid_argument(format!(
            "a query takes one row of parameters, {} were bound",
            rows.len()
        ))),
    }
}

/// Bind every parameter row to a DML statement and union the inputs into one statement.
fn bind_many_dml(plan: LogicalPlan, rows: Vec<Vec<ScalarValue>>) -> Result<LogicalPlan, Status> {
    let mut dml: Option<DmlStatement> = None;
    let mut inputs = Vec::with_capacity(rows.len());
    for row in rows {
        match plan.clone().with_param_values(param_values(row)).map_err(datafusion_status)? {
            LogicalPlan::Dml(d) => {
                inputs.push(d.input.as_ref().clone());
                dml.get_or_insert(d);
            }
            other => return Ok(other),
        }
    }
    let (Some(mut dml), Some(first)) = (dml, inputs.first().cloned()) else {
        return Ok(plan);
    };
    let mut builder = LogicalPlanBuilder::from(first);
    for input in inputs.into_iter().skip(1) {
        builder = builder.union(input).map_err(datafusion_status)?;
    }
    dml.input = Arc::new(builder.build().map_err(datafusion_status)?);
    Ok(LogicalPlan::Dml(dml))
}

/// Decode parameter batches into rows of scalars.
async fn read_param_rows(stream: PeekableFlightDataStream) -> Result<Option<Vec<Vec<ScalarValue>>>, Status> {
    // A descriptor-only message (empty IPC header) carries no parameters: some clients send
    // exactly that to execute with the parameters bound earlier.
    let flight = stream
        .try_filter(|data| futures::future::ready(!data.data_header.is_empty()))
        .map_err(FlightError::from);
    let mut batches = FlightRecordBatchStream::new_from_flight_data(flight);
    let mut rows = Vec::new();
    let mut saw_batch = false;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Status::invalid_argument(format!("bad parameter data: {e}")))?;
        saw_batch = true;
        for r in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(datafusion_status)?;
            rows.push(row);
        }
    }
    Ok(saw_batch.then_some(rows))
}

/// Cancellation tokens of the queries being streamed, by ticket.
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// Removes a running query's cancellation token when its stream ends or is dropped, and
/// says so when the query was stopped before its end (client gone, cancelled, or failed).
/// Also logs what the query cost (peak pool memory, spills) and releases its admission permit.
struct RunningGuard {
    id: String,
    running: Running,
    rows: u64,
    completed: bool,
    ctx: SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
        Engine::record_spills(&self.ctx, &self.plan);
        let stats = Engine::stats(&self.ctx);
        let outcome = if self.completed { "query finished" } else { "query stopped before its end" };
        info!(
            ticket = %self.id,
            rows = self.rows,
            peak_memory = stats.peak_memory,
            spill_count = stats.spill_count,
            spilled_bytes = stats.spilled_bytes,
            "{outcome}"
        );
    }
}

/// A batch stream that ends with CANCELLED as soon as its token is cancelled.
struct Cancellable<S> {
    inner: Pin<Box<S>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
    guard: RunningGuard,
}

impl<S> Stream for Cancellable<S>
where
    S: Stream<Item = Result<RecordBatch, FlightError>>,
{
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(Status::cancelled("query was cancelled"))))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.guard.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.guard.completed = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn batch_response(batch: RecordBatch) -> Response<DoGetStream> {
    let schema = batch.schema();
    let stream = futures::stream::iter([Ok(batch)]);
    Response::new(Box::pin(FlightDataEncoderBuilder::new().with_schema(schema).build(stream).map_err(Status::from)))
}

fn ipc_schema(schema: &Schema) -> Result<Bytes, Status> {
    let options = arrow::ipc::writer::IpcWriteOptions::default();
    let message: arrow_flight::IpcMessage = arrow_flight::SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("encoding schema: {e}")))?;
    Ok(message.0)
}

/// `$1, $2, ...` in numeric order with their inferred types.
fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef, Status> {
    let types = plan.get_parameter_types().map_err(datafusion_status)?;
    let mut params: Vec<(usize, String, Option<DataType>)> = types
        .into_iter()
        .map(|(name, t)| {
            let index = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
            (index, name, t)
        })
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(Arc::new(Schema::new(
        params
            .into_iter()
            .map(|(_, name, t)| Field::new(name, t.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    )))
}

fn ingest_mode(cmd: &CommandStatementIngest) -> IngestMode {
    let (create, exists) = match &cmd.table_definition_options {
        Some(o) => (
            o.if_not_exist != TableNotExistOption::Fail as i32,
            TableExistsOption::try_from(o.if_exists).unwrap_or(TableExistsOption::Fail),
        ),
        None => (true, TableExistsOption::Fail),
    };
    match (create, exists) {
        (_, TableExistsOption::Replace) => IngestMode::Replace,
        (true, TableExistsOption::Append) => IngestMode::CreateAppend,
        (false, TableExistsOption::Append) => IngestMode::Append,
        _ => IngestMode::Create,
    }
}

#[tonic::async_trait]
impl FlightSqlService for StreamPulseFlightSql {
    type FlightService = StreamPulseFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let principal = match header.as_deref() {
            Some(h) if h.starts_with("Bearer ") || h.starts_with("bearer ") => self.auth.check_token(h[7..].trim())?,
            Some(h) => {
                let (user, password) =
                    parse_basic(h).ok_or_else(|| Status::unauthenticated("authorization header must be Basic or Bearer"))?;
                self.auth.check_password(self.engine.catalog(), &user, &password).await?
            }
            None => {
                let mut stream = request.into_inner();
                let first = stream
                    .message()
                    .await?
                    .ok_or_else(|| Status::unauthenticated("no credentials: send authorization: Basic user:password"))?;
                let basic = arrow_flight::BasicAuth::decode(first.payload)
                    .map_err(|_| Status::unauthenticated("handshake payload is not BasicAuth"))?;
                self.auth.check_password(self.engine.catalog(), &basic.username, &basic.password).await?
            }
        };
        info!(user = %principal.user, role = principal.role.as_str(), "authenticated");
        let token = self.auth.issue(principal);
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a valid header"))?;
        let response = HandshakeResponse { protocol_version: 0, payload: Bytes::from(token) };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter([Ok(response)]));
        let mut response = Response::new(stream);
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await?;
        let info = self.statement_info(&principal, &query.query, None, request.into_inner()).await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await?;
        let (sql, params) = self.prepared_mut(&cmd.prepared_statement_handle, |p| {
            check_owner(&principal, &p.user)?;
            Ok((p.sql.clone(), p.params.clone()))
        })?;
        let info = self.statement_info(&principal, &sql, params, request.into_inner()).await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        Ok(Response::new(self.metadata_info(query, &primary_keys_schema(), request.into_inner())?))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        Ok(Response::new(self.metadata_info(query, &foreign_keys_schema(), request.into_inner())?))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        Ok(Response::new(self.metadata_info(query, &foreign_keys_schema(), request.into_inner())?))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        Ok(Response::new(self.metadata_info(query, &foreign_keys_schema(), request.into_inner())?))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request).await?;
        let schema = query.clone().into_builder(&self.xdbc).schema();
        Ok(Response::new(self.metadata_info(query, &schema, request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.principal(&request).await?;
        let id = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("ticket is not a StreamPulse ticket"))?;
        self.stream_ticket(&principal, &id).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let mut builder: GetCatalogsBuilder = query.into_builder();
        builder.append(CATALOG_NAME);
        Ok(batch_response(builder.build().map_err(|e| Status::internal(e.to_string()))?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let state = self.engine.refresh().await.map_err(catalog_status)?;
        let mut builder = query.into_builder();
        for schema in state.schemas.keys().map(String::as_str).chain(["information_schema"]) {
            builder.append(CATALOG_NAME, schema);
        }
        Ok(batch_response(builder.build().map_err(|e| Status::internal(e.to_string()))?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        Ok(batch_response(self.list_tables(&query).await?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(batch_response(builder.build().map_err(|e| Status::internal(e.to_string()))?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let batch = query.into_builder(&self.sql_info).build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_response(batch))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        Ok(batch_response(RecordBatch::new_empty(primary_keys_schema())))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        Ok(batch_response(RecordBatch::new_empty(foreign_keys_schema())))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        Ok(batch_response(RecordBatch::new_empty(foreign_keys_schema())))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        Ok(batch_response(RecordBatch::new_empty(foreign_keys_schema())))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.principal(&request).await?;
        let batch = query.into_builder(&self.xdbc).build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_response(batch))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await?;
        let ctx = self.engine.session();
        let planned = self.engine.plan_sql(&ctx, &cmd.query).await.map_err(catalog_status)?;
        if planned.kind() == StatementKind::Query {
            return Err(Status::invalid_argument("this statement returns rows: execute it as a query"));
        }
        authorize(&principal, &planned)?;
        let _permit = self.admission.admit().await?;
        let count = self.run_command(&ctx, planned, None).await?;
        info!(user = %principal.user, sql = %cmd.query, rows = count.unwrap_or(0), "update executed");
        Ok(count.map(|c| c as i64).unwrap_or(0))
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await?;
        principal.require_admin("ingest data")?;
        if cmd.temporary {
            return Err(Status::invalid_argument("temporary tables are not supported"));
        }
        if cmd.transaction_id.is_some() {
            return Err(Status::invalid_argument("transactions are not supported"));
        }
        if let Some(catalog) = cmd.catalog.as_deref().filter(|c| !c.is_empty() && *c != CATALOG_NAME) {
            return Err(Status::not_found(format!("catalog '{catalog}' not found")));
        }
        let target = match cmd.schema.as_deref().filter(|s| !s.is_empty()) {
            Some(schema) => TableReference::partial(schema, cmd.table.as_str()),
            None => TableReference::bare(cmd.table.as_str()),
        };
        let mode = ingest_mode(&cmd);
        let ctx = self.engine.session();
        let _permit = self.admission.admit().await?;
        // The batches are handed on as they arrive (the engine stages them on disk): the schema
        // comes with the first message, so read that one before building the stream.
        let flight = request.into_inner().map_err(FlightError::from);
        let mut stream = FlightRecordBatchStream::new_from_flight_data(flight);
        let bad_data = |e: FlightError| DataFusionError::Execution(format!("bad ingest data: {e}"));
        let first = stream.next().await.transpose().map_err(|e| datafusion_status(bad_data(e)))?;
        let schema = match (stream.schema(), &first) {
            (Some(s), _) => s.clone(),
            (None, Some(b)) => b.schema(),
            (None, None) => return Err(Status::invalid_argument("ingest sent no schema")),
        };
        let batches = futures::stream::iter(first.map(Ok)).chain(stream.map(move |b| b.map_err(bad_data)));
        let input = Box::pin(RecordBatchStreamAdapter::new(schema, batches));
        let rows = self.engine.ingest(&ctx, &target, input, mode).await.map_err(catalog_status)?;
        info!(user = %principal.user, table = %target, rows, ?mode, "ingest done");
        Ok(rows as i64)
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let principal = self.principal(&request).await?;
        let rows = read_param_rows(request.into_inner()).await?;
        self.prepared_mut(&cmd.prepared_statement_handle, |p| {
            check_owner(&principal, &p.user)?;
            if let Some(rows) = &rows {
                if let Some(bad) = rows.iter().find(|r| r.len() != p.parameter_schema.fields().len()) {
                    return Err(Status::invalid_argument(format!(
                        "statement takes {} parameters, {} were bound",
                        p.parameter_schema.fields().len(),
                        bad.len()
                    )));
                }
            }
            p.params = rows;
            Ok(())
        })?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(cmd.prepared_statement_handle) })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await?;
        let sent = read_param_rows(request.into_inner()).await?;
        let (sql, kind, stored) = self.prepared_mut(&cmd.prepared_statement_handle, |p| {
            check_owner(&principal, &p.user)?;
            Ok((p.sql.clone(), p.kind, p.params.clone()))
        })?;
        if kind == StatementKind::Query {
            return Err(Status::invalid_argument("this statement returns rows: execute it as a query"));
        }
        let ctx = self.engine.session();
        let planned = self.engine.plan_sql(&ctx, &sql).await.map_err(catalog_status)?;
        authorize(&principal, &planned)?;
        let _permit = self.admission.admit().await?;
        let count = self.run_command(&ctx, planned, sent.or(stored)).await?;
        info!(user = %principal.user, sql = %sql, rows = count.unwrap_or(0), "prepared update executed");
        Ok(count.map(|c| c as i64).unwrap_or(0))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.principal(&request).await?;
        if query.transaction_id.is_some() {
            return Err(Status::invalid_argument("transactions are not supported"));
        }
        let ctx = self.engine.session();
        let planned = self.engine.plan_sql(&ctx, &query.query).await.map_err(catalog_status)?;
        let kind = planned.kind();
        authorize(&principal, &planned)?;
        let (dataset_schema, parameter_schema) = match &planned {
            Planned::Query(plan) => {
                let params = parameter_schema(plan)?;
                let dataset = if params.fields().is_empty() {
                    let physical = self.engine.physical_plan(&ctx, plan.clone()).await.map_err(catalog_status)?;
                    client_schema(&physical.schema())
                } else {
                    client_schema(plan.schema().as_arrow())
                };
                (dataset, params)
            }
            Planned::Dml(plan) => (count_schema_for(kind), parameter_schema(plan)?),
            _ => (count_schema_for(kind), Arc::new(Schema::empty())),
        };
        let handle = uuid::Uuid::new_v4().to_string();
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: Bytes::from(handle.clone()),
            dataset_schema: ipc_schema(&dataset_schema)?,
            parameter_schema: ipc_schema(&parameter_schema)?,
        };
        let mut map = self.prepared.lock().map_err(|_| Status::internal("prepared statement table poisoned"))?;
        map.retain(|_, p| p.touched.elapsed() < HANDLE_TTL);
        map.insert(
            handle,
            PreparedStatement {
                sql: query.query,
                user: principal.user,
                kind,
                dataset_schema,
                parameter_schema,
                params: None,
                touched: Instant::now(),
            },
        );
        Ok(result)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.principal(&request).await?;
        let key = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        if let Ok(mut map) = self.prepared.lock() {
            map.remove(&key);
        }
        Ok(())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented("transactions are not supported: each statement commits on its own"))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("transactions are not supported: each statement commits on its own"))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        self.principal(&request).await?;
        let info = FlightInfo::decode(query.info).map_err(|e| Status::invalid_argument(format!("bad FlightInfo: {e}")))?;
        let status = self.cancel_info(&info);
        // CancelResult: 1 cancelled, 2 cancelling, 3 not cancellable.
        let result = match status {
            CancelStatus::Cancelled => 1,
            CancelStatus::Cancelling => 2,
            _ => 3,
        };
        Ok(ActionCancelQueryResult { result })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        if request.get_ref().r#type == "CancelFlightInfo" {
            self.principal(&request).await?;
            let body = request.into_inner().body;
            let cancel = CancelFlightInfoRequest::decode(body)
                .map_err(|e| Status::invalid_argument(format!("bad CancelFlightInfoRequest: {e}")))?;
            let info = cancel.info.ok_or_else(|| Status::invalid_argument("CancelFlightInfoRequest has no FlightInfo"))?;
            let status = self.cancel_info(&info);
            let result = CancelFlightInfoResult::new(status);
            let out = arrow_flight::Result { body: result.encode_to_vec().into() };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(out)]))));
        }
        Err(Status::invalid_argument(format!("unknown action '{}'", request.get_ref().r#type)))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        Some(vec![Ok(arrow_flight::ActionType {
            r#type: "CancelFlightInfo".into(),
            description: "Cancel a query: body CancelFlightInfoRequest, result CancelFlightInfoResult".into(),
        })])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

impl StreamPulseFlightSql {
    fn cancel_info(&self, info: &FlightInfo) -> CancelStatus {
        let mut status = CancelStatus::NotCancellable;
        for endpoint in &info.endpoint {
            if let Some(id) = endpoint.ticket.as_ref().and_then(Self::decode_ticket_id) {
                if self.cancel(&id) == CancelStatus::Cancelled {
                    status = CancelStatus::Cancelled;
                }
            }
        }
        status
    }
}
