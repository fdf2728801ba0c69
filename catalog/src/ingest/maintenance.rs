//! Keeping a continuously loaded table fast: every batch adds small files and a log entry, so
//! the pipe service periodically compacts them (`OPTIMIZE`, Compact: only bins of several
//! small files are rewritten, with `dataChange = false`, so appends and readers carry on —
//! the pipe's commits never conflict with it), writes a checkpoint, and cleans up expired log
//! entries — work that ingest commits skip (`cleanup_expired_logs = false`: deltalake would
//! otherwise list the whole `_delta_log` on every commit). The same is done for the ledger's
//! `history/` and `errors/` tables. Orphan files of crashed batches are never visible (they
//! are in no commit); `VACUUM` removes them after the table's retention.

use std::time::{Duration, Instant};

use deltalake::operations::optimize::OptimizeType;
use tracing::{info, warn};

use super::ledger::INGEST_ROOT;
use crate::error::Result;
use crate::session::Engine;

/// What one maintenance pass did to one table.
#[derive(Debug, Default, Clone)]
pub struct Maintained {
    pub files_removed: u64,
    pub files_added: u64,
    pub logs_cleaned: usize,
}

impl Engine {
    /// Compact, checkpoint and clean the logs of the table at `location` and of its ledger.
    pub async fn maintain_ingested(&self, location: &str) -> Result<Maintained> {
        let started = Instant::now();
        let mut total = Maintained::default();
        let root = format!("{INGEST_ROOT}/{}", location.trim_matches('/'));
        for (what, at) in [
            ("table", location.to_string()),
            ("history", format!("{root}/history")),
            ("errors", format!("{root}/errors")),
        ] {
            let Some(table) = super::ledger::existing(self.warehouse(), &at).await? else { continue };
            match compact(table).await {
                Ok(m) => {
                    total.files_removed += m.files_removed;
                    total.files_added += m.files_added;
                    total.logs_cleaned += m.logs_cleaned;
                }
                Err(e) => {
                    warn!(location = %at, what, error = %e, "maintenance of an ingested table failed; retried later")
                }
            }
        }
        info!(
            location,
            files_removed = total.files_removed,
            files_added = total.files_added,
            logs_cleaned = total.logs_cleaned,
            seconds = started.elapsed().as_secs_f64(),
            "ingest maintenance done"
        );
        Ok(total)
    }
}

async fn compact(table: deltalake::DeltaTable) -> Result<Maintained> {
    let (table, metrics) = table
        .optimize()
        .with_type(OptimizeType::Compact)
        .with_max_concurrent_tasks(1)
        .with_min_commit_interval(Duration::from_secs(60))
        .await?;
    if metrics.num_files_removed > 0 {
        deltalake::checkpoints::create_checkpoint(&table, None).await?;
    }
    let logs_cleaned = deltalake::checkpoints::cleanup_metadata(&table, None).await?;
    Ok(Maintained { files_removed: metrics.num_files_removed, files_added: metrics.num_files_added, logs_cleaned })
}
