//! Task statements, recognised **before** DataFusion's parser: sqlparser has no task DDL, and
//! it silently misreads `EXECUTE TASK x` (as a prepared statement named `TASK`) and
//! `SHOW TASKS` (as a session variable). Their clauses are read with sqlparser's own parser, so
//! names, strings and the `PARAMS` expressions follow the same SQL rules as everything else.
//!
//! ```sql
//! CREATE [OR REPLACE] TASK [IF NOT EXISTS] name option... AS $$ script $$
//! ALTER TASK [IF EXISTS] name RESUME | SUSPEND | SET option... | MODIFY AS $$ script $$
//! DROP TASK [IF EXISTS] name
//! EXECUTE TASK name [WITH (param = 'value', ...)]
//! EXECUTE TASK name BACKFILL FROM 'date' TO 'date'
//! SHOW TASKS
//! ```
//! Options: `SCHEDULE = '...'`, `AFTER a [, b]`, `PARAMS (name = expr, ...)`,
//! `OVERLAP = SKIP | QUEUE`, `CATCHUP = LATEST | ALL | NONE`, `MAX_CATCHUP_RUNS = n`,
//! `RETRIES = n`, `RETRY_DELAY = '5m'`, `TIMEOUT = '2h' | NONE`, `SUSPEND_AFTER_FAILURES = n`,
//! `COMMENT = '...'`.

use chrono::NaiveDate;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Error, Result};
use crate::sql::words::{Words, leading_words};

/// A parsed task statement. Names are as written (resolved against the default schema later).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskStatement {
    Create { name: TaskName, or_replace: bool, if_not_exists: bool, options: Box<TaskOptions> },
    Alter { name: TaskName, if_exists: bool, action: AlterAction },
    Drop { name: TaskName, if_exists: bool },
    Execute { name: TaskName, params: Vec<(String, String)> },
    Backfill { name: TaskName, from: NaiveDate, to: NaiveDate },
    Show,
}

/// `name` or `schema.name`, lower-cased unless quoted.
pub use crate::sql::words::Name as TaskName;

/// What `ALTER TASK` does.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterAction {
    Resume,
    Suspend,
    Set(Box<TaskOptions>),
}

/// The options of `CREATE TASK` / `ALTER TASK ... SET`; `None` where not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    pub schedule: Option<String>,
    pub after: Option<Vec<TaskName>>,
    pub params: Option<Vec<(String, String)>>,
    pub overlap: Option<String>,
    pub catchup: Option<String>,
    pub max_catchup_runs: Option<u32>,
    pub retries: Option<u32>,
    pub retry_delay_secs: Option<u64>,
    /// `Some(None)`: `TIMEOUT = NONE`.
    pub timeout_secs: Option<Option<u64>>,
    pub suspend_after_failures: Option<Option<u32>>,
    pub comment: Option<String>,
    pub body: Option<String>,
}

impl TaskStatement {
    /// Whether it needs an admin (everything but `SHOW TASKS`).
    pub fn writes(&self) -> bool {
        !matches!(self, TaskStatement::Show)
    }
}

/// Whether `sql` is a task statement (then [`parse_task_statement`] parses it or says why not).
pub fn is_task_statement(sql: &str) -> bool {
    let w = leading_words(sql, 4);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["CREATE", "TASK", ..]
            | ["CREATE", "OR", "REPLACE", "TASK"]
            | ["ALTER", "TASK", ..]
            | ["DROP", "TASK", ..]
            | ["EXECUTE", "TASK", ..]
            | ["SHOW", "TASKS", ..]
    )
}

/// Parse a task statement; `Ok(None)` when `sql` is not one.
pub fn parse_task_statement(sql: &str) -> Result<Option<TaskStatement>> {
    if !is_task_statement(sql) {
        return Ok(None);
    }
    let syntax = |e: ParserError| {
        Error::invalid(format!("task statement: {}", e.to_string().trim_start_matches("sql parser error: ")))
    };
    let mut p = TaskParser::new(sql).map_err(syntax)?;
    let statement = p.statement().map_err(syntax)?;
    p.end().map_err(syntax)?;
    Ok(Some(statement))
}

/// The task statements' clauses on the shared statement cursor.
type TaskParser<'a> = Words<'a>;

impl TaskParser<'_> {
    fn statement(&mut self) -> Result<TaskStatement, ParserError> {
        match self.peek_word().as_deref() {
            Some("CREATE") => {
                self.p.next_token();
                let or_replace = self.eat("OR");
                if or_replace {
                    self.expect("REPLACE")?;
                }
                self.expect("TASK")?;
                let if_not_exists = self.if_clause(true)?;
                let name = self.name("task")?;
                let options = self.options(true)?;
                if options.body.is_none() {
                    let found = self.p.peek_token();
                    return self.p.expected("AS $$ script $$", found);
                }
                Ok(TaskStatement::Create { name, or_replace, if_not_exists, options: Box::new(options) })
            }
            Some("ALTER") => {
                self.p.next_token();
                self.expect("TASK")?;
                let if_exists = self.if_clause(false)?;
                let name = self.name("task")?;
                let action = if self.eat("RESUME") {
                    AlterAction::Resume
                } else if self.eat("SUSPEND") {
                    AlterAction::Suspend
                } else if self.eat("SET") {
                    AlterAction::Set(Box::new(self.options(false)?))
                } else if self.eat("MODIFY") {
                    self.expect("AS")?;
                    AlterAction::Set(Box::new(TaskOptions { body: Some(self.body()?), ..Default::default() }))
                } else {
                    let found = self.p.peek_token();
                    return self.p.expected("RESUME, SUSPEND, SET or MODIFY AS", found);
                };
                Ok(TaskStatement::Alter { name, if_exists, action })
            }
            Some("DROP") => {
                self.p.next_token();
                self.expect("TASK")?;
                let if_exists = self.if_clause(false)?;
                Ok(TaskStatement::Drop { name: self.name("task")?, if_exists })
            }
            Some("EXECUTE") => {
                self.p.next_token();
                self.expect("TASK")?;
                let name = self.name("task")?;
                if self.eat("BACKFILL") {
                    self.expect("FROM")?;
                    let from = self.date()?;
                    self.expect("TO")?;
                    let to = self.date()?;
                    return Ok(TaskStatement::Backfill { name, from, to });
                }
                let mut params = Vec::new();
                if self.eat("WITH") {
                    self.p.expect_token(&Token::LParen)?;
                    params = self.p.parse_comma_separated(|p| {
                        let key = p.parse_identifier()?.value.to_lowercase();
                        p.expect_token(&Token::Eq)?;
                        Ok((key, p.parse_literal_string()?))
                    })?;
                    self.p.expect_token(&Token::RParen)?;
                }
                Ok(TaskStatement::Execute { name, params })
            }
            Some("SHOW") => {
                self.p.next_token();
                self.expect("TASKS")?;
                Ok(TaskStatement::Show)
            }
            _ => {
                let found = self.p.peek_token();
                self.p.expected("a task statement", found)
            }
        }
    }

    fn date(&mut self) -> Result<NaiveDate, ParserError> {
        let text = self.p.parse_literal_string()?;
        NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map_err(|e| ParserError::ParserError(format!("'{text}' is not a date (YYYY-MM-DD): {e}")))
    }

    fn body(&mut self) -> Result<String, ParserError> {
        let next = self.p.next_token();
        match next.token {
            Token::DollarQuotedString(s) => Ok(s.value),
            Token::SingleQuotedString(s) => Ok(s),
            _ => self.p.expected("the script as $$ ... $$", next),
        }
    }

    fn number<T: TryFrom<u64>>(&mut self, option: &str) -> Result<T, ParserError> {
        self.equals()?;
        let n = self.p.parse_literal_uint()?;
        T::try_from(n).map_err(|_| ParserError::ParserError(format!("{option} = {n} is too large")))
    }

    fn duration(&mut self, option: &str) -> Result<u64, ParserError> {
        self.equals()?;
        self.duration_value(option)
    }

    fn choice(&mut self, option: &str, allowed: &[&str]) -> Result<String, ParserError> {
        self.equals()?;
        match self.peek_word() {
            Some(w) if allowed.contains(&w.as_str()) => {
                self.p.next_token();
                Ok(w.to_lowercase())
            }
            _ => {
                let found = self.p.peek_token();
                self.p.expected(&format!("{option} = {}", allowed.join(" | ")), found)
            }
        }
    }

    /// Options in any order, each at most once; `AS $$...$$` ends them (CREATE only).
    fn options(&mut self, create: bool) -> Result<TaskOptions, ParserError> {
        let mut o = TaskOptions::default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(word) = self.peek_word() {
            if seen.contains(&word) {
                return Err(ParserError::ParserError(format!("{word} is given twice")));
            }
            if word == "AS" && create {
                self.p.next_token();
                o.body = Some(self.body()?);
                break;
            }
            self.p.next_token();
            match word.as_str() {
                "SCHEDULE" => {
                    self.equals()?;
                    o.schedule = Some(self.p.parse_literal_string()?);
                }
                "AFTER" => {
                    if !create && self.eat("NONE") {
                        o.after = Some(Vec::new());
                    } else {
                        let mut names = vec![self.name("task")?];
                        while self.p.consume_token(&Token::Comma) {
                            names.push(self.name("task")?);
                        }
                        o.after = Some(names);
                    }
                }
                "PARAMS" => {
                    self.p.expect_token(&Token::LParen)?;
                    let params = self.p.parse_comma_separated(|p| {
                        let name = p.parse_identifier()?.value.to_lowercase();
                        p.expect_token(&Token::Eq)?;
                        Ok((name, p.parse_expr()?.to_string()))
                    })?;
                    self.p.expect_token(&Token::RParen)?;
                    o.params = Some(params);
                }
                "OVERLAP" => o.overlap = Some(self.choice("OVERLAP", &["SKIP", "QUEUE"])?),
                "CATCHUP" => o.catchup = Some(self.choice("CATCHUP", &["LATEST", "ALL", "NONE"])?),
                "MAX_CATCHUP_RUNS" => o.max_catchup_runs = Some(self.number("MAX_CATCHUP_RUNS")?),
                "RETRIES" => o.retries = Some(self.number("RETRIES")?),
                "RETRY_DELAY" => o.retry_delay_secs = Some(self.duration("RETRY_DELAY")?),
                "TIMEOUT" => {
                    o.timeout_secs =
                        Some(if self.peek_is_none_after_eq()? { None } else { Some(self.duration_value("TIMEOUT")?) })
                }
                "SUSPEND_AFTER_FAILURES" => {
                    o.suspend_after_failures = Some(if self.peek_is_none_after_eq()? {
                        None
                    } else {
                        let n = self.p.parse_literal_uint()?;
                        Some(
                            u32::try_from(n)
                                .map_err(|_| ParserError::ParserError("SUSPEND_AFTER_FAILURES is too large".into()))?,
                        )
                    })
                }
                "COMMENT" => {
                    self.equals()?;
                    o.comment = Some(self.p.parse_literal_string()?);
                }
                other => {
                    return Err(ParserError::ParserError(format!(
                        "unknown task option {other}: use SCHEDULE, AFTER, PARAMS, OVERLAP, CATCHUP, MAX_CATCHUP_RUNS, \
                         RETRIES, RETRY_DELAY, TIMEOUT, SUSPEND_AFTER_FAILURES, COMMENT{}",
                        if create { " or AS $$ script $$" } else { "" }
                    )));
                }
            }
            seen.push(word);
            // Options may be separated by commas.
            let _ = self.p.consume_token(&Token::Comma);
        }
        Ok(o)
    }

    /// After `=`: whether the value is the word NONE (consumed).
    fn peek_is_none_after_eq(&mut self) -> Result<bool, ParserError> {
        self.equals()?;
        Ok(self.eat("NONE"))
    }

    fn duration_value(&mut self, option: &str) -> Result<u64, ParserError> {
        let text = self.p.parse_literal_string()?;
        humantime::parse_duration(&text).map(|d| d.as_secs()).map_err(|e| {
            ParserError::ParserError(format!("{option} = '{text}': {e} (write e.g. '30s', '5m', '2h', '1h 30m')"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> TaskStatement {
        parse_task_statement(sql).unwrap().unwrap()
    }

    #[test]
    fn create_with_every_option() {
        let s = parse(
            "CREATE OR REPLACE TASK music.daily
               SCHEDULE = 'USING CRON 0 3 * * * Europe/Stockholm'
               PARAMS (run_date = CAST(scheduled_time AT TIME ZONE 'Europe/Stockholm' AS DATE) - INTERVAL '1 day')
               OVERLAP = QUEUE CATCHUP = ALL MAX_CATCHUP_RUNS = 7 RETRIES = 2 RETRY_DELAY = '5m'
               TIMEOUT = '2h' SUSPEND_AFTER_FAILURES = 3 COMMENT = 'nightly'
             AS $$ SELECT 1; SELECT '${run_date}'; $$",
        );
        let TaskStatement::Create { name, or_replace, if_not_exists, options: o } = s else { panic!("{s:?}") };
        assert_eq!(name, TaskName { schema: Some("music".into()), name: "daily".into() });
        assert!(or_replace && !if_not_exists);
        assert_eq!(o.schedule.as_deref(), Some("USING CRON 0 3 * * * Europe/Stockholm"));
        let params = o.params.unwrap();
        assert_eq!(params[0].0, "run_date");
        assert!(params[0].1.contains("AT TIME ZONE 'Europe/Stockholm'"), "{}", params[0].1);
        assert_eq!((o.overlap.as_deref(), o.catchup.as_deref()), (Some("queue"), Some("all")));
        assert_eq!((o.max_catchup_runs, o.retries, o.retry_delay_secs), (Some(7), Some(2), Some(300)));
        assert_eq!((o.timeout_secs, o.suspend_after_failures), (Some(Some(7200)), Some(Some(3))));
        assert_eq!(o.body.as_deref(), Some(" SELECT 1; SELECT '${run_date}'; "));
    }

    #[test]
    fn the_other_statements() {
        assert_eq!(
            parse("alter task t resume"),
            TaskStatement::Alter {
                name: TaskName { schema: None, name: "t".into() },
                if_exists: false,
                action: AlterAction::Resume
            }
        );
        let TaskStatement::Alter { action: AlterAction::Set(o), .. } =
            parse("ALTER TASK s.t SET SCHEDULE = '5 MINUTES', TIMEOUT = NONE AFTER s.a, s.b")
        else {
            panic!()
        };
        assert_eq!(o.timeout_secs, Some(None));
        assert_eq!(o.after.unwrap().len(), 2);
        assert_eq!(
            parse("EXECUTE TASK t WITH (run_date = '2026-10-05')"),
            TaskStatement::Execute {
                name: TaskName { schema: None, name: "t".into() },
                params: vec![("run_date".into(), "2026-10-05".into())]
            }
        );
        assert!(matches!(
            parse("EXECUTE TASK t BACKFILL FROM '2026-10-01' TO '2026-10-07'"),
            TaskStatement::Backfill { .. }
        ));
        assert_eq!(parse("  -- list\n SHOW TASKS;"), TaskStatement::Show);
        assert!(matches!(parse("DROP TASK IF EXISTS t"), TaskStatement::Drop { if_exists: true, .. }));
        assert_eq!(parse_task_statement("SHOW TABLES").unwrap(), None);
        assert_eq!(parse_task_statement("EXECUTE stmt(1)").unwrap(), None);
    }

    #[test]
    fn errors_name_the_problem() {
        for (sql, why) in [
            ("CREATE TASK t SCHEDULE = '5 MINUTES'", "AS $$ script $$"),
            ("CREATE TASK t FREQUENCY = 3 AS $$ SELECT 1 $$", "unknown task option FREQUENCY"),
            ("CREATE TASK t RETRIES = 1 RETRIES = 2 AS $$ SELECT 1 $$", "RETRIES is given twice"),
            ("CREATE TASK t OVERLAP = ALLOW AS $$ SELECT 1 $$", "OVERLAP = SKIP | QUEUE"),
            ("CREATE TASK t RETRY_DELAY = 'soon' AS $$ SELECT 1 $$", "RETRY_DELAY = 'soon'"),
            ("EXECUTE TASK t BACKFILL FROM '2026-13-01' TO '2026-10-02'", "not a date"),
            ("ALTER TASK t START", "RESUME, SUSPEND, SET or MODIFY AS"),
            ("SHOW TASKS now", "end of statement"),
        ] {
            let e = parse_task_statement(sql).unwrap_err().to_string();
            assert!(e.contains(why), "{sql}: {e}");
        }
    }
}
