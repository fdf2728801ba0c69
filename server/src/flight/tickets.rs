//! Tickets: what a `GetFlightInfo` planned, kept until `DoGet` takes it, and the queries being
//! streamed, so `CancelFlightInfo` can stop them from another connection.
//!
//! A query's batches flow through [`Cancellable`], which ends the stream with CANCELLED when
//! its token fires, and [`RunningGuard`], which on drop removes the token, releases the
//! admission permit and logs what the query cost.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::CancelStatus;
use arrow_flight::error::FlightError;
use datafusion::physical_plan::ExecutionPlan;
use futures::Stream;
use streampulse_engine::{Error, QueryHandle, Result, Session};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info};

use super::status::{code_name, flight_error};

/// How long an unfetched ticket or an unused prepared statement is kept.
pub const HANDLE_TTL: Duration = Duration::from_secs(30 * 60);

/// What a ticket stands for until `DoGet` takes it.
pub enum Pending {
    /// A planned query, run when fetched.
    Query {
        /// The session it was planned in (its pool and statistics).
        session: Session,
        /// Its physical plan.
        plan: Arc<dyn ExecutionPlan>,
        /// The schema announced to the client.
        schema: SchemaRef,
        /// Who planned it (only they may fetch it).
        user: String,
        /// Its text, for the log.
        sql: String,
    },
    /// The answer of a statement that already ran (DDL/DML).
    Ready {
        /// The answer.
        batch: RecordBatch,
        /// Who ran it.
        user: String,
    },
}

impl Pending {
    /// The user the ticket belongs to.
    pub fn user(&self) -> &str {
        match self {
            Pending::Query { user, .. } | Pending::Ready { user, .. } => user,
        }
    }
}

/// Cancellation tokens of the queries being streamed, by ticket.
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// Unfetched tickets and running queries.
#[derive(Default)]
pub struct Tickets {
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
    running: Running,
}

impl Tickets {
    /// Keep `pending` under a fresh ticket id (expired ones are dropped on the way).
    pub fn put(&self, pending: Pending) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut map = self.pending.lock().map_err(|_| Error::internal("ticket table poisoned"))?;
        map.retain(|_, (_, at)| at.elapsed() < HANDLE_TTL);
        map.insert(id.clone(), (pending, Instant::now()));
        Ok(id)
    }

    /// Take a ticket (a ticket is fetched once).
    pub fn take(&self, id: &str) -> Result<Pending> {
        self.pending
            .lock()
            .map_err(|_| Error::internal("ticket table poisoned"))?
            .remove(id)
            .map(|(p, _)| p)
            .ok_or_else(|| Error::NotFound {
                kind: "ticket",
                name: format!("{id} (unknown, expired, cancelled or already fetched)"),
            })
    }

    /// Register a query being streamed under `id`; the guard unregisters it.
    pub fn start(
        &self,
        id: &str,
        session: Session,
        plan: Arc<dyn ExecutionPlan>,
        permit: OwnedSemaphorePermit,
        log: QueryHandle,
    ) -> Result<(CancellationToken, RunningGuard)> {
        let token = CancellationToken::new();
        self.running.lock().map_err(|_| Error::internal("query table poisoned"))?.insert(id.to_string(), token.clone());
        let guard = RunningGuard {
            id: id.to_string(),
            running: self.running.clone(),
            rows: 0,
            completed: false,
            error: None,
            log: Some(log),
            session,
            _plan: plan,
            _permit: permit,
        };
        Ok((token, guard))
    }

    /// Cancel a running or not yet fetched query.
    pub fn cancel(&self, id: &str) -> CancelStatus {
        if let Ok(running) = self.running.lock()
            && let Some(token) = running.get(id)
        {
            token.cancel();
            info!(ticket = %id, "query cancelled");
            return CancelStatus::Cancelled;
        }
        if let Ok(mut pending) = self.pending.lock()
            && pending.remove(id).is_some()
        {
            info!(ticket = %id, "query cancelled before it was fetched");
            return CancelStatus::Cancelled;
        }
        CancelStatus::NotCancellable
    }
}

/// Removes a running query's cancellation token when its stream ends or is dropped, and
/// says so when the query was stopped before its end (client gone, cancelled, or failed).
/// Also logs what the query cost (peak pool memory, spills) and releases its admission permit.
pub struct RunningGuard {
    id: String,
    running: Running,
    rows: u64,
    completed: bool,
    /// The error that ended the stream, as the client saw it (code name, message).
    error: Option<(&'static str, String)>,
    log: Option<QueryHandle>,
    session: Session,
    /// Kept until the guard goes so the plan outlives its stream.
    _plan: Arc<dyn ExecutionPlan>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
        let stats = self.session.stats();
        if let Some(log) = self.log.take() {
            let error = match (self.completed, self.error.take()) {
                (true, _) => None,
                (false, Some((code, message))) => Some((code, message)),
                (false, None) => Some(("CANCELLED", "stopped before its end (client went away or cancelled)".into())),
            };
            log.finish(Some(self.rows), stats, error.as_ref().map(|(c, m)| (*c, m.clone())));
        }
        let outcome = if self.completed { "ticket finished" } else { "ticket stopped before its end" };
        debug!(
            ticket = %self.id,
            rows = self.rows,
            peak_memory = stats.peak_memory,
            spill_count = stats.spill_count,
            spilled_bytes = stats.spilled_bytes,
            "{outcome}"
        );
    }
}

/// A batch stream that ends with CANCELLED as soon as its token is cancelled. Fields drop in
/// order: the inner stream (which records its spills) before the guard (which logs them).
pub struct Cancellable<S> {
    inner: Pin<Box<S>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
    guard: RunningGuard,
}

impl<S> Cancellable<S> {
    /// `inner`, stopped by `token`, accounted by `guard`.
    pub fn new(inner: S, token: CancellationToken, guard: RunningGuard) -> Self {
        Self { inner: Box::pin(inner), cancelled: Box::pin(token.cancelled_owned()), done: false, guard }
    }
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
            self.guard.error = Some(("CANCELLED", "query was cancelled".into()));
            return Poll::Ready(Some(Err(flight_error(Error::Cancelled("query was cancelled".into())))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.guard.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let FlightError::Tonic(status) = &e {
                    self.guard.error = Some((code_name(status.code()), status.message().to_string()));
                } else {
                    self.guard.error = Some(("INTERNAL", e.to_string()));
                }
                Poll::Ready(Some(Err(e)))
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
