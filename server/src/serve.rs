//! `serve`: composes what the server runs on one engine: the operators' HTTP listener
//! ([`crate::http`], up first so `/readyz` can say "not yet"), the engine, the first admin of a
//! fresh warehouse, the optional demo data ([`crate::demo`]) and the Flight SQL service
//! ([`crate::flight`]) on its listener, and the task scheduler
//! (`streampulse_engine::schedule::scheduler`, unless `--no-scheduler`) and the pipe service
//! (`streampulse_engine::ingest::pipes`, unless `--no-pipes`); background services
//! are each started and stopped in this one place.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arrow_flight::flight_service_server::FlightServiceServer;
use streampulse_engine::Engine;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use streampulse_engine::ingest::pipes::{self, PipeServiceConfig};
use streampulse_engine::schedule::scheduler::{self, SchedulerConfig};

use crate::admission::Admission;
use crate::auth::{self, Authenticator};
use crate::cli::{CliError, open_engine};
use crate::config::{ServerArgs, WarehouseArgs};
use crate::flight::wrapper::Service;
use crate::flight::{MAX_DECODING_BYTES, StreamPulseFlightSql};
use crate::http::{HttpState, Metrics};

/// The range `--max-message-size` accepts: a result message must hold a batch and its framing,
/// and gRPC frames messages with a 32-bit length.
const MIN_MESSAGE_BYTES: u64 = 1 << 20;
const MAX_MESSAGE_BYTES: u64 = 2047 << 20;

/// Run the server until SIGINT or SIGTERM.
pub async fn run(warehouse: &WarehouseArgs, args: ServerArgs) -> Result<(), CliError> {
    let max_message = args.max_message_size.0;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&max_message) {
        return Err(CliError::usage(format!(
            "--max-message-size {} is out of range: give 1MiB to 2047MiB (gRPC frames a message with a 31-bit length)",
            crate::config::size::format_bytes(max_message)
        )));
    }
    let metrics = Metrics::new(warehouse.cluster.is_some());
    let http = Arc::new(HttpState { metrics: metrics.clone(), engine: OnceLock::new() });
    let stop_http = CancellationToken::new();
    let _stop_http_on_return = stop_http.clone().drop_guard();
    let http_bound = crate::http::start(&args.http_listen, http.clone(), stop_http.clone()).await?;
    println!("StreamPulse HTTP (metrics, health) on http://{http_bound}");

    let engine: Engine = open_engine(warehouse).await?;
    {
        let metrics = metrics.clone();
        engine.query_log().set_listener(move |r| metrics.record(r));
        let metrics_runs = http.metrics.clone();
        engine.tasks().set_listener(move |e| metrics_runs.record_run(e));
        let metrics_loads = http.metrics.clone();
        engine.ingest().set_listener(move |e| metrics_loads.record_load(e));
    }
    if let Some(generated) = auth::bootstrap_admin(engine.catalog(), &args.admin_user, args.admin_password).await? {
        println!(
            "Created user '{}' with generated password: {generated}\n\
             (shown only now; set STREAMPULSE_ADMIN_PASSWORD on first start to choose it)",
            args.admin_user
        );
    }
    let mut _live_feed = None;
    if args.demo {
        crate::demo::load(&engine, args.demo_scale).await?;
        _live_feed = Some(crate::demo::start_live(&engine, args.demo_scale).await?);
    }
    let listen = &args.listen;
    let addr: SocketAddr = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| CliError::usage(format!("cannot resolve listen address {listen}: {e}")))?
        .next()
        .ok_or_else(|| CliError::usage(format!("listen address {listen} resolves to nothing")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(CliError::failed)?;

    let auth = Arc::new(Authenticator::new(args.token_ttl.into()));
    let admission = Admission::new(
        args.max_concurrent_queries.get(),
        args.queue_timeout.into(),
        metrics.admission_rejected.clone(),
    );
    let max_message = max_message as usize;
    let flight_sql = Arc::new(StreamPulseFlightSql::new(engine.clone(), auth, admission, max_message)?);
    let service = FlightServiceServer::new(Service::new(flight_sql))
        .max_decoding_message_size(MAX_DECODING_BYTES)
        .max_encoding_message_size(max_message);
    info!(
        address = %bound,
        warehouse = %engine.warehouse().root(),
        memory_limit = engine.memory_limit(),
        "Flight SQL server listening"
    );
    let stop_scheduler = CancellationToken::new();
    let scheduler = (!args.no_scheduler).then(|| {
        let config = SchedulerConfig { retention: args.run_history_retention.into() };
        engine.tasks().scheduler_starting();
        tokio::spawn(scheduler::run(engine.clone(), config, stop_scheduler.clone()))
    });
    let stop_pipes = CancellationToken::new();
    let pipes = (!args.no_pipes).then(|| {
        let every: std::time::Duration = args.ingest_maintenance_interval.into();
        let vacuum: std::time::Duration = args.ingest_vacuum_interval.into();
        let config = PipeServiceConfig {
            max_files: args.pipe_max_files.get(),
            max_bytes: args.pipe_max_bytes.0,
            maintenance_interval: (!every.is_zero()).then_some(every),
            vacuum_interval: (!vacuum.is_zero()).then_some(vacuum),
        };
        tokio::spawn(pipes::run(engine.clone(), config, stop_pipes.clone()))
    });
    let _ = http.engine.set(engine.clone());
    println!("StreamPulse Flight SQL listening on grpc://{bound}");
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(no_delay(listener), shutdown_signal())
        .await
        .map_err(|e| CliError::failed(format!("server failed: {e}")));
    // Runs in flight are cancelled and recorded as failed, to be retried by the next server.
    // A pipe's batch in flight finishes (or, if the process dies, is redone by the next one).
    stop_scheduler.cancel();
    stop_pipes.cancel();
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    if let Some(p) = pipes {
        let _ = p.await;
    }
    served?;
    info!("server stopped");
    Ok(())
}

/// The listener's connections with Nagle's algorithm off. tonic sets `TCP_NODELAY` only on
/// sockets it accepts itself; handed a listener stream, it leaves them as they come, and a
/// small answer then waits for the client's delayed ACK: ~40 ms on every Flight SQL call
/// (`SELECT 1` over ADBC took 52 ms at p50 in a debug build, issue 15).
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(error = %e, "cannot turn off Nagle's algorithm on a connection");
        }
        accepted
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutting down");
}
