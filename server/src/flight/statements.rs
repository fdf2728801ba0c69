//! Statements: planning a query under a ticket, running DDL/DML/SET at once, binding
//! parameters, and streaming a ticket's result.
//!
//! - `GetFlightInfo` plans a statement. A query's physical plan is kept under a fresh ticket
//!   and its schema (view and dictionary types made plain) is announced; DDL and DML run right
//!   away, so they take effect even if the client never fetches, and their answer (a row count)
//!   is kept under the ticket.
//! - `DoGet` takes the ticket and streams the plan's batches; tonic pulls only as fast as the
//!   client reads (backpressure). Dropping the stream drops the plan, which stops the query.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::common::ScalarValue;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder, WriteOp};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use std::time::Instant;
use streampulse_engine::sql::count_schema;

use streampulse_engine::{Error, Planned, QueryHandle, Result, Session, StatementKind};
use tracing::{debug, info};

use super::fit::fit;
use super::metadata::{client_schema, conform};
use super::status::{flight_error, flight_status};
use super::tickets::{Cancellable, Pending};
use super::{DoGetStream, StreamPulseFlightSql};
use crate::auth::Principal;

impl StreamPulseFlightSql {
    /// A FlightInfo whose one endpoint is ticket `id`.
    pub(crate) fn ticket_info(
        &self,
        id: &str,
        schema: &Schema,
        descriptor: FlightDescriptor,
        rows: i64,
    ) -> Result<FlightInfo> {
        let ticket = TicketStatementQuery { statement_handle: Bytes::from(id.to_string()) };
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new().try_with_schema(schema)?;
        Ok(info.with_endpoint(endpoint).with_descriptor(descriptor).with_total_records(rows).with_ordered(true))
    }

    /// Plan (and for DDL/DML, run) a statement, returning its FlightInfo.
    pub(crate) async fn statement_info(
        &self,
        principal: &Principal,
        sql: &str,
        params: Option<Vec<Vec<ScalarValue>>>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let session = self.engine.session().for_user(&principal.user, PROTOCOL);
        let planned = self.plan_authorized(principal, &session, sql).await?;
        match planned {
            Planned::Query(plan) => {
                let plan = bind_single(plan, params)?;
                let physical = session.physical_plan(plan).await?;
                let schema = client_schema(&physical.schema());
                let id = self.tickets.put(Pending::Query {
                    session,
                    plan: physical,
                    schema: schema.clone(),
                    user: principal.user.clone(),
                    sql: sql.to_string(),
                })?;
                debug!(user = %principal.user, ticket = %id, "query planned");
                self.ticket_info(&id, &schema, descriptor, -1)
            }
            Planned::Task(task) => {
                let run = self.engine.run_task_statement(&session, *task);
                let batch = self.execute_answering(principal, &session, sql, StatementKind::Task, run).await?;
                let (schema, rows) = (batch.schema(), batch.num_rows() as i64);
                let id = self.tickets.put(Pending::Ready { batch, user: principal.user.clone() })?;
                self.ticket_info(&id, &schema, descriptor, rows)
            }
            Planned::Ingest(statement, text) => {
                let kind = Planned::Ingest(statement.clone(), text.clone()).kind();
                let run = self.engine.run_ingest_statement(&session, &text, *statement);
                let batch = self.execute_answering(principal, &session, sql, kind, run).await?;
                let (schema, rows) = (batch.schema(), batch.num_rows() as i64);
                let id = self.tickets.put(Pending::Ready { batch, user: principal.user.clone() })?;
                self.ticket_info(&id, &schema, descriptor, rows)
            }
            other => {
                let count = self.execute_command(principal, &session, sql, other, params).await?;
                let batch = count_batch(count)?;
                let schema = batch.schema();
                let id = self.tickets.put(Pending::Ready { batch, user: principal.user.clone() })?;
                self.ticket_info(&id, &schema, descriptor, 1)
            }
        }
    }

    /// Plan `sql` and check that `principal` may run it. A statement refused here still shows in
    /// system.queries, with why.
    pub(crate) async fn plan_authorized(&self, principal: &Principal, session: &Session, sql: &str) -> Result<Planned> {
        let planned = self.engine.plan_sql(session, sql).await.and_then(|p| authorize(principal, &p).map(|_| p));
        if let Err(e) = &planned {
            self.engine.query_log().start(&principal.user, PROTOCOL, sql).finish(
                None,
                Default::default(),
                Some(error_of(e)),
            );
        }
        planned
    }

    /// Run DDL/DML/SET under admission with optional parameter rows, and log what it did.
    /// DML over many rows runs as one statement (one commit), so `executemany` is all-or-nothing.
    pub(crate) async fn execute_command(
        &self,
        principal: &Principal,
        session: &Session,
        sql: &str,
        planned: Planned,
        params: Option<Vec<Vec<ScalarValue>>>,
    ) -> Result<Option<u64>> {
        let log = self.engine.query_log().start(&principal.user, PROTOCOL, sql);
        log.planned(kind_name(planned.kind()));
        let result = self.run_command(&log, session, planned, params).await;
        let stats = session.stats();
        match &result {
            Ok(count) => log.finish(*count, stats, None),
            Err(e) => log.finish(None, stats, Some(error_of(e))),
        }
        let count = result?;
        debug!(
            user = %principal.user,
            sql,
            rows = count.unwrap_or(0),
            peak_memory = stats.peak_memory,
            spill_count = stats.spill_count,
            spilled_bytes = stats.spilled_bytes,
            "statement executed"
        );
        Ok(count)
    }

    /// Run a statement that answers rows of its own (a task or ingest statement: `EXECUTE
    /// TASK` answers its runs, `COPY INTO` its files) under admission, and log it.
    async fn execute_answering(
        &self,
        principal: &Principal,
        session: &Session,
        sql: &str,
        kind: StatementKind,
        run: impl std::future::Future<Output = streampulse_engine::Result<Option<RecordBatch>>>,
    ) -> Result<RecordBatch> {
        let log = self.engine.query_log().start(&principal.user, PROTOCOL, sql);
        log.planned(kind_name(kind));
        let waiting = Instant::now();
        let result = async {
            let _permit = self.admission.admit().await?;
            log.admitted(waiting.elapsed());
            run.await
        }
        .await;
        let stats = session.stats();
        match &result {
            Ok(rows) => log.finish(rows.as_ref().map(|b| b.num_rows() as u64), stats, None),
            Err(e) => log.finish(None, stats, Some(error_of(e))),
        }
        debug!(user = %principal.user, sql, ok = result.is_ok(), "statement executed");
        Ok(result?.unwrap_or_else(|| RecordBatch::new_empty(Arc::new(Schema::empty()))))
    }

    async fn run_command(
        &self,
        log: &QueryHandle,
        session: &Session,
        planned: Planned,
        params: Option<Vec<Vec<ScalarValue>>>,
    ) -> Result<Option<u64>> {
        let waiting = Instant::now();
        let _permit = self.admission.admit().await?;
        log.admitted(waiting.elapsed());
        let count = match (planned, params) {
            (Planned::Dml(plan), Some(rows)) if !rows.is_empty() => {
                if matches!(&plan, LogicalPlan::Dml(d) if matches!(d.op, WriteOp::Insert(_))) {
                    Some(self.engine.run_dml(session, bind_many_dml(plan, rows)?).await?)
                } else {
                    // UPDATE/DELETE: one statement per parameter row.
                    let mut total = 0;
                    for row in rows {
                        total +=
                            self.engine.run_dml(session, plan.clone().with_param_values(param_values(row))?).await?;
                    }
                    Some(total)
                }
            }
            (planned, _) => self.engine.run_command(session, planned).await?,
        };
        Ok(count)
    }

    /// Stream a ticket's result.
    pub(crate) async fn stream_ticket(&self, principal: &Principal, id: &str) -> Result<DoGetStream> {
        let entry = self.tickets.take(id)?;
        check_owner(principal, entry.user())?;
        match entry {
            Pending::Ready { batch, .. } => Ok(batch_stream(batch)),
            Pending::Query { session, plan, schema, user, sql } => {
                let log = self.engine.query_log().start(&user, PROTOCOL, &sql);
                log.planned("query");
                let waiting = Instant::now();
                let permit = match self.admission.admit().await {
                    Ok(p) => p,
                    Err(e) => {
                        log.finish(None, Default::default(), Some(error_of(&e)));
                        return Err(e);
                    }
                };
                log.admitted(waiting.elapsed());
                let stream = match session.execute(Arc::clone(&plan)) {
                    Ok(s) => s,
                    Err(e) => {
                        log.finish(None, session.stats(), Some(error_of(&e)));
                        return Err(e);
                    }
                };
                let (token, guard) = self.tickets.start(id, session, plan, permit, log)?;
                info!(user = %user, ticket = %id, sql = %sql, "query started");
                let target = schema.clone();
                let limit = self.max_message_bytes;
                let mut rows = 0u64;
                let batches = stream
                    .map(move |r| {
                        let fitted = r.map_err(Error::from).and_then(|b| Ok(conform(b, &target)?)).and_then(|b| {
                            let first = rows;
                            rows += b.num_rows() as u64;
                            fit(b, limit, first)
                        });
                        match fitted {
                            Ok(parts) => parts.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(flight_error(e))],
                        }
                    })
                    .flat_map(futures::stream::iter);
                let guarded = Cancellable::new(batches, token, guard);
                let encoder = FlightDataEncoderBuilder::new()
                    .with_schema(schema)
                    .with_max_flight_data_size(ENCODER_MESSAGE_BYTES.min(limit / 2));
                Ok(Box::pin(encoder.build(guarded).map_err(flight_status)))
            }
        }
    }

    /// Schema of what a statement would return, without running anything.
    pub(crate) async fn statement_schema(&self, sql: &str) -> Result<SchemaRef> {
        let session = self.engine.session();
        let planned = self.engine.plan_sql(&session, sql).await?;
        Ok(match planned {
            Planned::Query(plan) => client_schema(&session.physical_plan(plan).await?.schema()),
            _ => count_schema_for(planned.kind()),
        })
    }
}

/// The size arrow-flight's encoder aims for per message (its default), when the limit allows.
const ENCODER_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// The protocol name system.queries shows for statements that came over Flight SQL.
pub(crate) const PROTOCOL: &str = "flight_sql";

/// A statement kind as system.queries and the metrics name it.
pub(crate) fn kind_name(kind: StatementKind) -> &'static str {
    kind.as_str()
}

/// The gRPC code name (as in the protocol, `INVALID_ARGUMENT`) and message a client got for `e`.
pub(crate) fn error_of(e: &Error) -> (&'static str, String) {
    (super::status::code_name(super::status::code(e.kind())), e.user_message())
}

/// A one-batch DoGet answer.
pub(crate) fn batch_stream(batch: RecordBatch) -> DoGetStream {
    let schema = batch.schema();
    let stream = futures::stream::iter([Ok(batch)]);
    Box::pin(FlightDataEncoderBuilder::new().with_schema(schema).build(stream).map_err(flight_status))
}

/// Readers may run queries and session statements only; anything that writes, even wrapped in
/// `EXPLAIN ANALYZE`, and anything that fetches from the network (a `JSON_API` table, also
/// through a view) needs an admin.
pub(crate) fn authorize(principal: &Principal, planned: &Planned) -> Result<()> {
    match planned.kind() {
        StatementKind::Ddl => principal.require_admin("change the catalog (CREATE, DROP)"),
        StatementKind::Task if planned.writes() => principal.require_admin("create, change or run tasks"),
        _ if planned.writes() => principal.require_admin("change data (INSERT, COPY, MERGE)"),
        _ if planned.reads_network() => principal.require_admin("read HTTP sources (JSON_API tables)"),
        _ => Ok(()),
    }
}

/// Tickets and prepared statements belong to the user who made them.
pub(crate) fn check_owner(principal: &Principal, owner: &str) -> Result<()> {
    if principal.user == owner {
        Ok(())
    } else {
        Err(Error::PermissionDenied("this ticket belongs to another user".into()))
    }
}

/// The schema a statement of `kind` answers with when it is not a query.
pub(crate) fn count_schema_for(kind: StatementKind) -> SchemaRef {
    match kind {
        StatementKind::Dml => count_schema(),
        _ => Arc::new(Schema::empty()),
    }
}

/// The answer of a statement that ran: `count` for DML, no columns for DDL/SET.
fn count_batch(count: Option<u64>) -> Result<RecordBatch> {
    match count {
        Some(n) => Ok(RecordBatch::try_new(count_schema(), vec![Arc::new(UInt64Array::from(vec![n]))])?),
        None => Ok(RecordBatch::new_empty(Arc::new(Schema::empty()))),
    }
}

fn param_values(row: Vec<ScalarValue>) -> ParamValues {
    ParamValues::List(row.into_iter().map(ScalarAndMetadata::from).collect())
}

/// Bind at most one parameter row to a query.
fn bind_single(plan: LogicalPlan, params: Option<Vec<Vec<ScalarValue>>>) -> Result<LogicalPlan> {
    match params {
        None => Ok(plan),
        Some(rows) if rows.is_empty() => Ok(plan),
        Some(mut rows) if rows.len() == 1 => Ok(plan.with_param_values(param_values(rows.remove(0)))?),
        Some(rows) => Err(Error::invalid(format!("a query takes one row of parameters, {} were bound", rows.len()))),
    }
}

/// Bind every parameter row to a DML statement and union the inputs into one statement.
fn bind_many_dml(plan: LogicalPlan, rows: Vec<Vec<ScalarValue>>) -> Result<LogicalPlan> {
    let mut dml: Option<DmlStatement> = None;
    let mut inputs = Vec::with_capacity(rows.len());
    for row in rows {
        match plan.clone().with_param_values(param_values(row))? {
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
        builder = builder.union(input)?;
    }
    dml.input = Arc::new(builder.build()?);
    Ok(LogicalPlan::Dml(dml))
}

/// Decode parameter batches into rows of scalars (`None`: no parameters were sent).
pub(crate) async fn read_param_rows(stream: PeekableFlightDataStream) -> Result<Option<Vec<Vec<ScalarValue>>>> {
    // A descriptor-only message (empty IPC header) carries no parameters: some clients send
    // exactly that to execute with the parameters bound earlier.
    let flight =
        stream.try_filter(|data| futures::future::ready(!data.data_header.is_empty())).map_err(FlightError::from);
    let mut batches = FlightRecordBatchStream::new_from_flight_data(flight);
    let mut rows = Vec::new();
    let mut saw_batch = false;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Error::invalid(format!("bad parameter data: {e}")))?;
        saw_batch = true;
        for r in 0..batch.num_rows() {
            let row =
                batch.columns().iter().map(|c| ScalarValue::try_from_array(c, r)).collect::<Result<Vec<_>, _>>()?;
            rows.push(row);
        }
    }
    Ok(saw_batch.then_some(rows))
}

/// `$1, $2, ...` in numeric order with their inferred types.
pub(crate) fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef> {
    let types = plan.get_parameter_types()?;
    let mut params: Vec<(usize, String, Option<DataType>)> = types
        .into_iter()
        .map(|(name, t)| {
            let index = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
            (index, name, t)
        })
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(Arc::new(Schema::new(
        params.into_iter().map(|(_, name, t)| Field::new(name, t.unwrap_or(DataType::Null), true)).collect::<Vec<_>>(),
    )))
}
