//! The one script runner: every statement of a script in one session, in order, stopping at
//! the first failure and saying which statement it was. The CLI (`sql -e/-f`, `serve --demo`),
//! the Flight SQL service (for DDL, DML and SET) and the scheduler all run SQL through here.

use std::fmt;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use super::plan::{Parsed, Planned, StatementKind};
use crate::error::{Error, Result};
use crate::session::{Engine, QueryStats, Session};
use crate::system::QueryHandle;

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

/// The rows a `COPY INTO` answer says were loaded (its `rows_loaded` column summed).
fn rows_loaded(batch: &arrow::array::RecordBatch) -> u64 {
    batch
        .column_by_name("rows_loaded")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
        .map_or(batch.num_rows() as u64, |c| c.iter().flatten().map(|v| v.max(0) as u64).sum())
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
            Planned::Task(task) => {
                Ok(self.run_task_statement(session, *task).await?.map(|runs| runs.num_rows() as u64))
            }
            Planned::Ingest(statement, sql) => {
                Ok(self.run_ingest_statement(session, &sql, *statement).await?.map(|b| rows_loaded(&b)))
            }
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
            let origin = session.origin();
            let log = self.query_log().start(&origin.user, origin.protocol, &text);
            if let Some((task, run_id)) = &origin.run {
                log.in_run(task, run_id);
            }
            let fail = |source: Error| ScriptError { index, sql: text.clone(), source };
            let result = self.run_statement(session, &text, statement, keep_rows, &log).await;
            let stats = session.stats();
            let (kind, output) = match result {
                Ok(done) => done,
                Err(e) => {
                    log.finish(None, stats, Some((e.kind().code_name(), e.user_message())));
                    return Err(fail(e));
                }
            };
            let rows = match &output {
                StatementOutput::Rows(b) => Some(b.iter().map(|b| b.num_rows() as u64).sum()),
                StatementOutput::RowsCounted(n) | StatementOutput::Changed(n) => Some(*n),
                StatementOutput::Done => None,
            };
            log.finish(rows, stats, None);
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

    /// Plan and run one statement of a script.
    async fn run_statement(
        &self,
        session: &Session,
        text: &str,
        statement: Parsed,
        keep_rows: bool,
        log: &QueryHandle,
    ) -> Result<(StatementKind, StatementOutput)> {
        let planned = self.plan(session, text, statement).await?;
        let kind = planned.kind();
        log.planned(kind.as_str());
        log.admitted(Duration::ZERO);
        let output = match planned {
            Planned::Query(plan) => {
                let physical = session.physical_plan(plan).await?;
                let mut stream = session.execute(physical)?;
                let (mut kept, mut counted) = (Vec::new(), 0u64);
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    counted += batch.num_rows() as u64;
                    if keep_rows {
                        kept.push(batch);
                    }
                }
                drop(stream);
                if keep_rows { StatementOutput::Rows(kept) } else { StatementOutput::RowsCounted(counted) }
            }
            Planned::Task(task) => match self.run_task_statement(session, *task).await? {
                Some(runs) if keep_rows => StatementOutput::Rows(vec![runs]),
                Some(runs) => StatementOutput::Changed(runs.num_rows() as u64),
                None => StatementOutput::Done,
            },
            Planned::Ingest(statement, sql) => match self.run_ingest_statement(session, &sql, *statement).await? {
                Some(files) if keep_rows => StatementOutput::Rows(vec![files]),
                Some(files) => StatementOutput::Changed(rows_loaded(&files)),
                None => StatementOutput::Done,
            },
            other => match self.run_command(session, other).await? {
                Some(rows) => StatementOutput::Changed(rows),
                None => StatementOutput::Done,
            },
        };
        Ok((kind, output))
    }
}
