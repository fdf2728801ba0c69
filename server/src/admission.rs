//! Admission control: at most `max` statements run at once; the others wait in a FIFO queue
//! (tokio's semaphore is fair) for at most `timeout`, then fail with RESOURCE_EXHAUSTED naming
//! the settings to raise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use streampulse_engine::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

/// The server's statement queue.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
    rejected: Counter,
}

impl Admission {
    /// Let `max` statements run at once, queueing the rest for up to `timeout`.
    /// Refusals are counted in `rejected`.
    pub fn new(max: usize, timeout: Duration, rejected: Counter) -> Self {
        let max = max.max(1);
        Self { permits: Arc::new(Semaphore::new(max)), max, timeout, rejected }
    }

    /// Wait for a turn; the permit is the right to run until it is dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit> {
        let waiting = Instant::now();
        let permit = tokio::time::timeout(self.timeout, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| {
                self.rejected.inc();
                Error::ResourcesExhausted(format!(
                    "server busy: {} statements running and this one waited {} in the queue; retry later, \
                     or raise --max-concurrent-queries / --queue-timeout",
                    self.max,
                    humantime::format_duration(self.timeout)
                ))
            })?
            .map_err(|_| Error::Cancelled("server shutting down".into()))?;
        let waited = waiting.elapsed();
        if waited > Duration::from_millis(100) {
            info!(waited_ms = waited.as_millis() as u64, "statement admitted after queueing");
        }
        Ok(permit)
    }
}
