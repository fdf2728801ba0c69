//! The operators' HTTP listener (`--http-listen`), apart from the Flight SQL port: `/metrics`
//! (Prometheus text), `/healthz` (the process is up) and `/readyz` (the catalog is loaded, the
//! warehouse's store answers, and the scheduler has recovered the runs a crash left behind). It starts before the engine opens, so `/readyz` says 503
//! until the server can take queries.

pub mod metrics;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use streampulse_engine::Engine;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::CliError;
pub use metrics::Metrics;

/// What the handlers read: the metrics, and the engine once it is open and serving.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub engine: OnceLock<Engine>,
}

/// Bind `listen` and serve until `stop` is cancelled; returns the bound address.
pub async fn start(
    listen: &str,
    state: Arc<HttpState>,
    stop: CancellationToken,
) -> Result<std::net::SocketAddr, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen for HTTP on {listen} (--http-listen): {e}")))?;
    let bound = listener.local_addr().map_err(CliError::failed)?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    info!(address = %bound, "HTTP listening (/metrics, /healthz, /readyz)");
    Ok(bound)
}

async fn metrics_handler(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let engine = state.engine.get();
    let executors = match engine.and_then(Engine::cluster) {
        Some(cluster) => Some(cluster.executors().await),
        None => None,
    };
    let body = state.metrics.render(engine, executors);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn ready_handler(State(state): State<Arc<HttpState>>) -> (StatusCode, String) {
    let Some(engine) = state.engine.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: catalog not loaded yet\n".into());
    };
    if !engine.tasks().recovered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: the scheduler is recovering runs\n".into());
    }
    match engine.refresh().await {
        Ok(catalog) => (StatusCode::OK, format!("ready: catalog version {}\n", catalog.version)),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: warehouse store unreachable: {e}\n")),
    }
}
