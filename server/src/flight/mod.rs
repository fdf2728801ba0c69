//! The Flight SQL service: arrow-flight's `FlightSqlService` implemented over the engine, plus
//! a thin [`wrapper::Service`] that answers `GetSchema` and `PollFlightInfo` (which the
//! arrow-flight adapter leaves unimplemented).
//!
//! The trait methods here are thin: each authenticates, calls one method of the service written
//! in the core's `Result` ([`statements`], [`tickets`], [`prepared`], [`catalog`], [`ingest`]),
//! and turns an error into a gRPC status in the one place that does it ([`status`]).

pub mod catalog;
mod fit;
pub mod ingest;
pub mod metadata;
pub mod prepared;
pub mod statements;
pub mod status;
pub mod tickets;
pub mod wrapper;

use crate::flight::statements::PROTOCOL;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    ActionEndSavepointRequest, ActionEndTransactionRequest, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, Ticket,
};
use bytes::Bytes;
use futures::Stream;
use prost::Message;
use streampulse_engine::{Engine, Error, Result, StatementKind};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::admission::Admission;
use crate::auth::{Authenticator, Principal};
use metadata::{foreign_keys_schema, primary_keys_schema};
use prepared::PreparedStatements;
use statements::batch_stream;
use status::status;
use tickets::Tickets;

/// Largest gRPC message accepted (bulk ingest sends big batches).
pub const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

type DoGetStream = <StreamPulseFlightSql as FlightService>::DoGetStream;
type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// The Flight SQL service over one engine.
pub struct StreamPulseFlightSql {
    engine: Engine,
    auth: Arc<Authenticator>,
    tickets: Tickets,
    prepared: PreparedStatements,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
    admission: Admission,
    /// Largest message sent: result batches are cut to fit (see fit.rs).
    max_message_bytes: usize,
}

impl StreamPulseFlightSql {
    /// A service over `engine`, authenticating with `auth`, admitting statements by `admission`.
    /// Every message it sends holds at most `max_message_bytes`.
    pub fn new(
        engine: Engine,
        auth: Arc<Authenticator>,
        admission: Admission,
        max_message_bytes: usize,
    ) -> Result<Self> {
        Ok(Self {
            admission,
            max_message_bytes,
            engine,
            auth,
            tickets: Tickets::default(),
            prepared: PreparedStatements::default(),
            sql_info: metadata::sql_info()?,
            xdbc: metadata::xdbc_info()?,
        })
    }

    /// Who is calling, from the request's `authorization` header.
    pub(crate) async fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
        let header = match request.metadata().get("authorization") {
            Some(v) => Some(v.to_str().map_err(|_| Error::Unauthenticated("authorization header is not text".into()))?),
            None => None,
        };
        self.auth.authenticate(self.engine.catalog(), header).await
    }

    /// Authenticate, then answer a metadata command's FlightInfo from its result schema.
    async fn metadata_info<T>(
        &self,
        request: Request<FlightDescriptor>,
        cmd: T,
        schema: &Schema,
    ) -> Result<Response<FlightInfo>, Status>
    where
        T: ProstMessageExt,
    {
        self.principal(&request).await.map_err(status)?;
        self.command_info(cmd, schema, request.into_inner()).map(Response::new).map_err(status)
    }

    /// Authenticate, then answer a metadata command's rows.
    async fn metadata_rows<T, F>(&self, request: &Request<T>, rows: F) -> Result<Response<DoGetStream>, Status>
    where
        F: std::future::Future<Output = Result<RecordBatch>>,
    {
        self.principal(request).await.map_err(status)?;
        rows.await.map(|batch| Response::new(batch_stream(batch))).map_err(status)
    }

    /// Schema of what `cmd` would return, without running anything (`GetSchema`).
    pub(crate) async fn schema_for(
        &self,
        principal: &Principal,
        cmd: arrow_flight::sql::Command,
    ) -> Result<Option<SchemaRef>> {
        use arrow_flight::sql::Command;
        Ok(Some(match cmd {
            Command::CommandStatementQuery(q) => self.statement_schema(&q.query).await?,
            Command::CommandPreparedStatementQuery(q) => {
                self.prepared.with(principal, &q.prepared_statement_handle, |p| Ok(p.dataset_schema.clone()))?
            }
            _ => return Ok(None),
        }))
    }

    async fn handshake(&self, request: Request<Streaming<HandshakeRequest>>) -> Result<Response<HandshakeStream>> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let principal = match header.as_deref() {
            Some(h) => self.auth.check(self.engine.catalog(), &crate::auth::header::parse(h)?).await?,
            None => {
                let mut stream = request.into_inner();
                let no_credentials =
                    || Error::Unauthenticated("no credentials: send authorization: Basic user:password".into());
                let first = stream.message().await.map_err(|_| no_credentials())?.ok_or_else(no_credentials)?;
                let basic = arrow_flight::BasicAuth::decode(first.payload)
                    .map_err(|_| Error::Unauthenticated("handshake payload is not BasicAuth".into()))?;
                self.auth.check_password(self.engine.catalog(), &basic.username, &basic.password).await?
            }
        };
        info!(user = %principal.user, role = %principal.role, "authenticated");
        let token = self.auth.issue(principal);
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::internal("token is not a valid header"))?;
        let response = HandshakeResponse { protocol_version: 0, payload: Bytes::from(token) };
        let stream: HandshakeStream = Box::pin(futures::stream::iter([Ok(response)]));
        let mut response = Response::new(stream);
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    fn cancel_info(&self, info: &FlightInfo) -> CancelStatus {
        let mut outcome = CancelStatus::NotCancellable;
        for endpoint in &info.endpoint {
            if let Some(id) = endpoint.ticket.as_ref().and_then(decode_ticket_id)
                && self.tickets.cancel(&id) == CancelStatus::Cancelled
            {
                outcome = CancelStatus::Cancelled;
            }
        }
        outcome
    }
}

fn decode_ticket_id(ticket: &Ticket) -> Option<String> {
    let any = Any::decode(ticket.ticket.clone()).ok()?;
    let t: TicketStatementQuery = any.unpack().ok()??;
    String::from_utf8(t.statement_handle.to_vec()).ok()
}

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(status(Error::not_supported(what)))
}

#[tonic::async_trait]
impl FlightSqlService for StreamPulseFlightSql {
    type FlightService = StreamPulseFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        self.handshake(request).await.map_err(status)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        let info = self.statement_info(&principal, &query.query, None, request.into_inner()).await.map_err(status)?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        let info = async {
            let (sql, params) = self
                .prepared
                .with(&principal, &cmd.prepared_statement_handle, |p| Ok((p.sql.clone(), p.params.clone())))?;
            self.statement_info(&principal, &sql, params, request.into_inner()).await
        }
        .await
        .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, query, &primary_keys_schema()).await
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, query, &foreign_keys_schema()).await
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, query, &foreign_keys_schema()).await
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, query, &foreign_keys_schema()).await
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc).schema();
        self.metadata_info(request, query, &schema).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        let stream = async {
            let id = String::from_utf8(ticket.statement_handle.to_vec())
                .map_err(|_| Error::invalid("ticket is not a StreamPulse ticket"))?;
            self.stream_ticket(&principal, &id).await
        }
        .await
        .map_err(status)?;
        Ok(Response::new(stream))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { self.list_catalogs(query) }).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, self.list_schemas(query)).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, self.list_tables(query)).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { self.list_table_types(query) }).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { query.into_builder(&self.sql_info).build().map_err(status::from_flight) })
            .await
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { Ok(RecordBatch::new_empty(primary_keys_schema())) }).await
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { Ok(RecordBatch::new_empty(foreign_keys_schema())) }).await
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { Ok(RecordBatch::new_empty(foreign_keys_schema())) }).await
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { Ok(RecordBatch::new_empty(foreign_keys_schema())) }).await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.metadata_rows(&request, async { query.into_builder(&self.xdbc).build().map_err(status::from_flight) })
            .await
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        async {
            let session = self.engine.session().for_user(&principal.user, PROTOCOL);
            let planned = self.plan_authorized(&principal, &session, &cmd.query).await?;
            if planned.kind() == StatementKind::Query {
                return Err(Error::invalid("this statement returns rows: execute it as a query"));
            }
            let count = self.execute_command(&principal, &session, &cmd.query, planned, None).await?;
            Ok(count.map_or(0, |c| c as i64))
        }
        .await
        .map_err(status)
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        self.ingest(&principal, cmd, request.into_inner()).await.map_err(status)
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        self.bind_prepared(&principal, &cmd.prepared_statement_handle, request.into_inner()).await.map_err(status)?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(cmd.prepared_statement_handle) })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        self.update_prepared(&principal, &cmd.prepared_statement_handle, request.into_inner()).await.map_err(status)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.principal(&request).await.map_err(status)?;
        self.create_prepared(principal, query).await.map_err(status)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.principal(&request).await.map_err(status)?;
        self.prepared.close(&query.prepared_statement_handle);
        Ok(())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        unsupported("transactions are not supported: each statement commits on its own")
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        unsupported("transactions are not supported: each statement commits on its own")
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        unsupported("savepoints are not supported")
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        unsupported("savepoints are not supported")
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        self.principal(&request).await.map_err(status)?;
        let info =
            FlightInfo::decode(query.info).map_err(|e| status(Error::invalid(format!("bad FlightInfo: {e}"))))?;
        // CancelResult: 1 cancelled, 2 cancelling, 3 not cancellable.
        let result = match self.cancel_info(&info) {
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
        if request.get_ref().r#type != "CancelFlightInfo" {
            return Err(status(Error::invalid(format!("unknown action '{}'", request.get_ref().r#type))));
        }
        self.principal(&request).await.map_err(status)?;
        let body = request.into_inner().body;
        let cancel = CancelFlightInfoRequest::decode(body)
            .map_err(|e| status(Error::invalid(format!("bad CancelFlightInfoRequest: {e}"))))?;
        let info = cancel.info.ok_or_else(|| status(Error::invalid("CancelFlightInfoRequest has no FlightInfo")))?;
        let result = CancelFlightInfoResult::new(self.cancel_info(&info));
        let out = arrow_flight::Result { body: result.encode_to_vec().into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(out)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        Some(vec![Ok(arrow_flight::ActionType {
            r#type: "CancelFlightInfo".into(),
            description: "Cancel a query: body CancelFlightInfoRequest, result CancelFlightInfoResult".into(),
        })])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
