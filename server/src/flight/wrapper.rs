//! The gRPC service handed to tonic: delegates everything to the Flight SQL service and adds
//! `GetSchema` and `PollFlightInfo`, which arrow-flight's `FlightSqlService` adapter leaves
//! unimplemented.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo, SchemaAsIpc,
    SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use streampulse_engine::Error;

use super::StreamPulseFlightSql;
use super::status::status;

/// The Flight service: [`StreamPulseFlightSql`] plus `GetSchema` and `PollFlightInfo`.
#[derive(Clone)]
pub struct Service {
    inner: Arc<StreamPulseFlightSql>,
}

impl Service {
    /// Wrap the Flight SQL service.
    pub fn new(inner: Arc<StreamPulseFlightSql>) -> Self {
        Self { inner }
    }
}

type Inner = StreamPulseFlightSql;

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = <Inner as FlightService>::HandshakeStream;
    type ListFlightsStream = <Inner as FlightService>::ListFlightsStream;
    type DoGetStream = <Inner as FlightService>::DoGetStream;
    type DoPutStream = <Inner as FlightService>::DoPutStream;
    type DoActionStream = <Inner as FlightService>::DoActionStream;
    type ListActionsStream = <Inner as FlightService>::ListActionsStream;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(self.inner.as_ref(), request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        FlightService::list_flights(self.inner.as_ref(), request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(self.inner.as_ref(), request).await
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        // Statements are planned (and DDL/DML run) inside GetFlightInfo, so the answer is
        // complete at once: progress 1, no further descriptor to poll.
        let info = FlightService::get_flight_info(self.inner.as_ref(), request).await?.into_inner();
        Ok(Response::new(PollInfo {
            info: Some(info),
            flight_descriptor: None,
            progress: Some(1.0),
            expiration_time: None,
        }))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let principal = self.inner.principal(&request).await.map_err(status)?;
        let any = Any::decode(&*request.get_ref().cmd)
            .map_err(|e| status(Error::invalid(format!("descriptor is not a Flight SQL command: {e}"))))?;
        let cmd = Command::try_from(any).map_err(|e| status(Error::invalid(e.to_string())))?;
        let schema = match self.inner.schema_for(&principal, cmd).await.map_err(status)? {
            Some(schema) => schema,
            None => {
                // Metadata commands: their FlightInfo is cheap and has no side effects.
                let info = FlightService::get_flight_info(self.inner.as_ref(), request).await?.into_inner();
                return Ok(Response::new(SchemaResult { schema: info.schema }));
            }
        };
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&schema, &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| status(Error::internal(format!("encoding schema: {e}"))))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(self.inner.as_ref(), request).await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(self.inner.as_ref(), request).await
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(self.inner.as_ref(), request).await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(self.inner.as_ref(), request).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(status(Error::not_supported("DoExchange is not part of Flight SQL and is not supported")))
    }
}
