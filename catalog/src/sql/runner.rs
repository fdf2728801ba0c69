//! The one script runner: every statement of a script in one session, in order, stopping at
//! the first failure and saying which statement it was. The CLI (`sql -e/-f`, `serve --demo`),
//! the Flight SQL service (for DDL, DML and SET) and the scheduler all run SQL through here.

use std::fmt;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use super::plan::{Planned, StatementKind};
use crate::error::{Error, Result};
use crate::session::{Engine, QueryStats, Session};

/// What a statement produced.
#[derive(Debug)]
pub enum StatementOutput {
    /// A query's rows, kept because the caller asked for them.
    Rows(Vec<RecordBatch>),
    /// A query's rows, counted and dropped as they streamed.
    RowsCounted(u64),
    /// DML: the rows it changed.
    Changed(u64),
    /// DDL or SET: done.
    Done,
}

/// One finished statement of a script.
#[derive(Debug)]
pub struct StatementReport {
    /// 1-based position in the script.
    pub index: usize,
    /// The statement's text.
    pub sql: String,
    /// What kind of statement it was.
    pub kind: StatementKind,
    /// What it produced.
    pub output: StatementOutput,
    /// Its peak memory and spills.
    pub stats: QueryStats,
    /// Wall time.
    pub elapsed: Duration,
}

/// A script stopped at a failing statement.
#[derive(Debug)]
pub struct ScriptError {
    /// 1-based position of the failing statement (0: the script could not be split).
    pub index: usize,
    /// Its text.
    pub sql: String,
    /// Why it failed.
    pub source: Error,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            return write!(f, "{}", self.source.user_message());
        }
        write!(f, "statement {} failed: {}\n  in: {}", self.index, self.source.user_message(), abbreviate(&self.sql))
    }
}

impl std::error::Error for ScriptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A statement on one line, cut at 200 characters.
pub fn abbreviate(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}...", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

impl Engine {
    /// Run a planned statement whose answer is not a row stream (DDL, DML, SET).
    /// Returns the affected row count for DML, `None` otherwise.
    pub async fn run_command(&self, session: &Session, planned: Planned) -> Result<Option<u64>> {
        match planned {
            Planned::Ddl(ddl) => {
                self.run_ddl(session, *ddl).await?;
                Ok(None)
            }
            Planned::Dml(plan) => Ok(Some(self.run_dml(session, plan).await?)),
            Planned::Session(plan) | Planned::Query(plan) => {
                let physical = session.physical_plan(plan).await?;
                let mut stream = session.execute(physical)?;
                while let Some(batch) = stream.next().await {
                    batch?;
                }
                Ok(None)
            }
        }
    }

    /// Run every statement of `script` in `session`, handing each finished one to `each`.
    /// Query rows are kept when `keep_rows` is set, else counted as they stream. Stops at the
    /// first failing statement (or the first error `each` returns).
    pub async fn run_script<F>(
        &self,
        session: &Session,
        script: &str,
        keep_rows: bool,
        mut each: F,
    ) -> Result<(), ScriptError>
    where
        F: FnMut(StatementReport) -> Result<()>,
    {
        let statements =
            self.parse(script).map_err(|source| ScriptError { index: 0, sql: script.to_string(), source })?;
        for (i, (text, statement)) in statements.into_iter().enumerate() {
            let index = i + 1;
            let started = Instant::now();
            session.reset_stats();
            let fail = |source: Error| ScriptError { index, sql: text.clone(), source };
            let planned = self.plan(session, &text, statement).await.map_err(fail)?;
            let kind = planned.kind();
            let output = match planned {
                Planned::Query(plan) => {
                    let physical = session.physical_plan(plan).await.map_err(fail)?;
                    let mut stream = session.execute(physical).map_err(fail)?;
                    let (mut kept, mut counted) = (Vec::new(), 0u64);
                    while let Some(batch) = stream.next().await {
                        let batch = batch.map_err(|e| fail(e.into()))?;
                        counted += batch.num_rows() as u64;
                        if keep_rows {
                            kept.push(batch);
                        }
                    }
                    drop(stream);
                    if keep_rows { StatementOutput::Rows(kept) } else { StatementOutput::RowsCounted(counted) }
                }
                other => match self.run_command(session, other).await.map_err(fail)? {
                    Some(rows) => StatementOutput::Changed(rows),
                    None => StatementOutput::Done,
                },
            };
            let report = StatementReport {
                index,
                sql: text.clone(),
                kind,
                output,
                stats: session.stats(),
                elapsed: started.elapsed(),
            };
            each(report).map_err(fail)?;
        }
        Ok(())
    }
}
