//! `COPY INTO` and the pipe statements, recognised **before** DataFusion's parser: DataFusion
//! reads `COPY` as its own `COPY ... TO`, sqlparser's Snowflake `COPY INTO` takes stage syntax
//! (`$1:field`) rather than SQL transformations, and there is no `PIPE` keyword at all. Clauses
//! are read with sqlparser's own parser, so names, strings and the transformation query follow
//! the same SQL rules as everything else.
//!
//! ```sql
//! COPY INTO table FROM 'location' | (SELECT ... FROM 'location')
//!   [FILES = ('a.gz', ...)] [PATTERN = 'regex']
//!   [FILE_FORMAT = (TYPE = JSON | CSV | PARQUET [COMPRESSION = AUTO | GZIP | NONE]
//!                   [SKIP_HEADER = 0 | 1] [FIELD_DELIMITER = ','])]
//!   [ON_ERROR = ABORT_STATEMENT | CONTINUE | SKIP_FILE] [FORCE = TRUE | FALSE]
//!   [VALIDATION_MODE = RETURN_ERRORS | RETURN_ALL_ERRORS]
//! CREATE [OR REPLACE] PIPE [IF NOT EXISTS] name [INTERVAL = '2s'] [COMMENT = '...'] AS COPY INTO ...
//! ALTER PIPE [IF EXISTS] name PAUSE | RESUME
//! DROP PIPE [IF EXISTS] name
//! SHOW PIPES
//! ```

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, Query, visit_relations_mut};
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Error, Result};
use crate::sql::words::{Name as TaskName, Words, leading_words};

/// The name a transformation's `FROM 'location'` is replaced by: the decoded rows of a batch.
pub const SOURCE_RELATION: &str = "__copy_source";

/// A parsed `COPY INTO` or pipe statement. Names are as written (resolved later).
#[derive(Debug, Clone, PartialEq)]
pub enum IngestStatement {
    Copy(Box<CopyInto>),
    CreatePipe {
        name: TaskName,
        or_replace: bool,
        if_not_exists: bool,
        interval: Duration,
        comment: Option<String>,
        /// The `COPY INTO ...` text, kept verbatim in the catalog.
        copy_sql: String,
        copy: Box<CopyInto>,
    },
    AlterPipe {
        name: TaskName,
        if_exists: bool,
        pause: bool,
    },
    DropPipe {
        name: TaskName,
        if_exists: bool,
    },
    ShowPipes,
}

impl IngestStatement {
    /// Whether it needs an admin: all but `SHOW PIPES` and a `VALIDATION_MODE` copy (which
    /// reads files the server can reach, so it needs an admin too: only `SHOW PIPES` is free).
    pub fn writes(&self) -> bool {
        !matches!(self, IngestStatement::ShowPipes)
    }
}

/// What `COPY INTO` loads and how.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyInto {
    pub target: TaskName,
    /// A local folder or an `s3://bucket/prefix`, as written.
    pub location: String,
    /// The transformation query with its `FROM 'location'` replaced by [`SOURCE_RELATION`].
    pub transform: Option<String>,
    /// Target columns the transformation computes (its output aliases): not read from files.
    pub computed: Vec<String>,
    pub files: Option<Vec<String>>,
    pub pattern: Option<String>,
    pub format: FileFormat,
    pub on_error: OnError,
    pub force: bool,
    pub validation: bool,
}

/// `FILE_FORMAT = (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFormat {
    pub kind: FormatKind,
    pub compression: Compression,
    /// CSV: the first line is a header (`SKIP_HEADER = 1`, the default).
    pub header: bool,
    pub delimiter: u8,
}

impl Default for FileFormat {
    fn default() -> Self {
        Self { kind: FormatKind::Json, compression: Compression::Auto, header: true, delimiter: b',' }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    /// One JSON object per line.
    Json,
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip when the file starts with gzip's magic bytes.
    Auto,
    Gzip,
    None,
}

/// `ON_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The statement fails at the first bad line or file and loads nothing.
    Abort,
    /// Good lines load; each bad line goes to `system.load_errors`.
    Continue,
    /// A file with any bad line loads nothing; its bad lines go to `system.load_errors`.
    SkipFile,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Abort => "ABORT_STATEMENT",
            OnError::Continue => "CONTINUE",
            OnError::SkipFile => "SKIP_FILE",
        }
    }
}

/// Whether `sql` is an ingest statement (then [`parse_ingest_statement`] parses it or says why).
pub fn is_ingest_statement(sql: &str) -> bool {
    let w = leading_words(sql, 4);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    matches!(
        w.as_slice(),
        ["COPY", "INTO", ..]
            | ["CREATE", "PIPE", ..]
            | ["CREATE", "OR", "REPLACE", "PIPE"]
            | ["ALTER", "PIPE", ..]
            | ["DROP", "PIPE", ..]
            | ["SHOW", "PIPES", ..]
    )
}

fn syntax(what: &str) -> impl Fn(ParserError) -> Error + '_ {
    move |e: ParserError| Error::invalid(format!("{what}: {}", e.to_string().trim_start_matches("sql parser error: ")))
}

/// Parse an ingest statement; `Ok(None)` when `sql` is not one.
pub fn parse_ingest_statement(sql: &str) -> Result<Option<IngestStatement>> {
    if !is_ingest_statement(sql) {
        return Ok(None);
    }
    let first = leading_words(sql, 1);
    if first.first().map(String::as_str) == Some("COPY") {
        return Ok(Some(IngestStatement::Copy(Box::new(parse_copy(sql)?))));
    }
    if first.first().map(String::as_str) == Some("CREATE") {
        // The header is parsed alone; the body after `AS` is a COPY INTO of its own.
        let re =
            regex::Regex::new(r"(?is)^(.*?)\bAS\s+(COPY\s+INTO\b.*)$").map_err(|e| Error::internal(e.to_string()))?;
        let Some(caps) = re.captures(sql) else {
            return Err(Error::invalid(
                "pipe statement: CREATE PIPE name ... AS COPY INTO ... is missing its AS COPY INTO",
            ));
        };
        let (head, body) = (&caps[1], caps[2].trim().trim_end_matches(';').trim_end());
        let copy = parse_copy(body)?;
        let mut p = Words::new(head).map_err(syntax("pipe statement"))?;
        let statement = p.create_pipe(body, copy).map_err(syntax("pipe statement"))?;
        p.end().map_err(syntax("pipe statement"))?;
        return Ok(Some(statement));
    }
    let mut p = Words::new(sql).map_err(syntax("pipe statement"))?;
    let statement = p.pipe_statement().map_err(syntax("pipe statement"))?;
    p.end().map_err(syntax("pipe statement"))?;
    Ok(Some(statement))
}

/// Parse a `COPY INTO` statement.
pub fn parse_copy(sql: &str) -> Result<CopyInto> {
    let mut p = Words::new(sql).map_err(syntax("COPY INTO"))?;
    let copy = p.copy().map_err(syntax("COPY INTO"))?;
    p.end().map_err(syntax("COPY INTO"))?;
    if let Some(pattern) = &copy.pattern {
        regex::Regex::new(pattern).map_err(|e| Error::invalid(format!("COPY INTO: PATTERN '{pattern}': {e}")))?;
    }
    if copy.format.kind == FormatKind::Parquet && copy.format.compression == Compression::Gzip {
        return Err(Error::invalid("COPY INTO: Parquet files carry their own compression: remove COMPRESSION = GZIP"));
    }
    Ok(copy)
}

impl Words<'_> {
    fn keyword(&mut self, option: &str, allowed: &[&str]) -> Result<String, ParserError> {
        self.equals()?;
        let next = self.p.next_token();
        let word = match &next.token {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            Token::SingleQuotedString(s) => s.to_ascii_uppercase(),
            _ => String::new(),
        };
        if allowed.contains(&word.as_str()) {
            Ok(word)
        } else {
            self.p.expected(&format!("{option} = {}", allowed.join(" | ")), next)
        }
    }

    fn boolean(&mut self, option: &str) -> Result<bool, ParserError> {
        Ok(self.keyword(option, &["TRUE", "FALSE"])? == "TRUE")
    }

    fn copy(&mut self) -> Result<CopyInto, ParserError> {
        self.expect("COPY")?;
        self.expect("INTO")?;
        let target = self.name("table")?;
        if self.p.peek_token_ref().token == Token::LParen {
            return Err(ParserError::ParserError(
                "COPY INTO table (columns) is not supported: columns are matched by name; \
                 use FROM (SELECT ... AS column FROM 'location') to compute or rename them"
                    .into(),
            ));
        }
        self.expect("FROM")?;
        let (location, transform, computed) = if self.p.consume_token(&Token::LParen) {
            let mut query: Query = *self.p.parse_query()?;
            self.p.expect_token(&Token::RParen)?;
            let (location, computed) = transformation(&mut query)?;
            (location, Some(query.to_string()), computed)
        } else {
            (self.p.parse_literal_string()?, None, Vec::new())
        };
        let mut copy = CopyInto {
            target,
            location,
            transform,
            computed,
            files: None,
            pattern: None,
            format: FileFormat::default(),
            on_error: OnError::Abort,
            force: false,
            validation: false,
        };
        let mut seen: Vec<String> = Vec::new();
        loop {
            let _ = self.p.consume_token(&Token::Comma);
            let Some(word) = self.peek_word() else { break };
            if seen.contains(&word) {
                return Err(ParserError::ParserError(format!("{word} is given twice")));
            }
            self.p.next_token();
            match word.as_str() {
                "FILES" => {
                    self.equals()?;
                    self.p.expect_token(&Token::LParen)?;
                    copy.files = Some(self.p.parse_comma_separated(|p| p.parse_literal_string())?);
                    self.p.expect_token(&Token::RParen)?;
                }
                "PATTERN" => {
                    self.equals()?;
                    copy.pattern = Some(self.p.parse_literal_string()?);
                }
                "FILE_FORMAT" => {
                    self.equals()?;
                    copy.format = self.file_format()?;
                }
                "ON_ERROR" => {
                    copy.on_error =
                        match self.keyword("ON_ERROR", &["ABORT_STATEMENT", "ABORT", "CONTINUE", "SKIP_FILE"])?.as_str()
                        {
                            "CONTINUE" => OnError::Continue,
                            "SKIP_FILE" => OnError::SkipFile,
                            _ => OnError::Abort,
                        }
                }
                "FORCE" => copy.force = self.boolean("FORCE")?,
                "VALIDATION_MODE" => {
                    self.keyword("VALIDATION_MODE", &["RETURN_ERRORS", "RETURN_ALL_ERRORS"])?;
                    copy.validation = true;
                }
                other => {
                    return Err(ParserError::ParserError(format!(
                        "unknown COPY INTO option {other}: expected FILES, PATTERN, FILE_FORMAT, ON_ERROR, FORCE \
                         or VALIDATION_MODE"
                    )));
                }
            }
            seen.push(word);
        }
        Ok(copy)
    }

    fn file_format(&mut self) -> Result<FileFormat, ParserError> {
        self.p.expect_token(&Token::LParen)?;
        let mut f = FileFormat::default();
        let mut kind_given = false;
        loop {
            let _ = self.p.consume_token(&Token::Comma);
            if self.p.consume_token(&Token::RParen) {
                break;
            }
            let next = self.p.next_token();
            let Token::Word(w) = &next.token else {
                return self.p.expected("a FILE_FORMAT option or )", next);
            };
            match w.value.to_ascii_uppercase().as_str() {
                "TYPE" => {
                    f.kind = match self.keyword("TYPE", &["JSON", "NDJSON", "CSV", "PARQUET"])?.as_str() {
                        "CSV" => FormatKind::Csv,
                        "PARQUET" => FormatKind::Parquet,
                        _ => FormatKind::Json,
                    };
                    kind_given = true;
                }
                "COMPRESSION" => {
                    f.compression = match self.keyword("COMPRESSION", &["AUTO", "GZIP", "NONE"])?.as_str() {
                        "GZIP" => Compression::Gzip,
                        "NONE" => Compression::None,
                        _ => Compression::Auto,
                    }
                }
                "SKIP_HEADER" => {
                    self.equals()?;
                    f.header = match self.p.parse_literal_uint()? {
                        0 => false,
                        1 => true,
                        n => {
                            return Err(ParserError::ParserError(format!(
                                "SKIP_HEADER = {n}: only 0 or 1 is supported"
                            )));
                        }
                    };
                }
                "FIELD_DELIMITER" => {
                    self.equals()?;
                    let d = self.p.parse_literal_string()?;
                    f.delimiter = match d.as_bytes() {
                        [b] => *b,
                        _ => {
                            return Err(ParserError::ParserError(format!(
                                "FIELD_DELIMITER = '{d}': one single-byte character expected"
                            )));
                        }
                    };
                }
                other => {
                    return Err(ParserError::ParserError(format!(
                        "unknown FILE_FORMAT option {other}: expected TYPE, COMPRESSION, SKIP_HEADER or FIELD_DELIMITER"
                    )));
                }
            }
        }
        if !kind_given {
            return Err(ParserError::ParserError("FILE_FORMAT needs TYPE = JSON | CSV | PARQUET".into()));
        }
        Ok(f)
    }

    fn create_pipe(&mut self, copy_sql: &str, copy: CopyInto) -> Result<IngestStatement, ParserError> {
        self.expect("CREATE")?;
        let or_replace = self.eat("OR");
        if or_replace {
            self.expect("REPLACE")?;
        }
        self.expect("PIPE")?;
        let if_not_exists = self.if_clause(true)?;
        let name = self.name("pipe")?;
        let mut interval = DEFAULT_INTERVAL;
        let mut comment = None;
        while let Some(word) = self.peek_word() {
            self.p.next_token();
            match word.as_str() {
                "INTERVAL" => {
                    let _ = self.p.consume_token(&Token::Eq);
                    let text = self.p.parse_literal_string()?;
                    interval = humantime::parse_duration(&text).map_err(|e| {
                        ParserError::ParserError(format!("INTERVAL '{text}' is not a duration like '2s' or '1m': {e}"))
                    })?;
                    if interval < Duration::from_millis(100) || interval > Duration::from_secs(86_400) {
                        return Err(ParserError::ParserError(format!(
                            "INTERVAL '{text}' must be between 100ms and 24h"
                        )));
                    }
                }
                "COMMENT" => {
                    self.equals()?;
                    comment = Some(self.p.parse_literal_string()?);
                }
                other => {
                    return Err(ParserError::ParserError(format!(
                        "unknown CREATE PIPE option {other}: expected INTERVAL, COMMENT or AS COPY INTO ..."
                    )));
                }
            }
        }
        Ok(IngestStatement::CreatePipe {
            name,
            or_replace,
            if_not_exists,
            interval,
            comment,
            copy_sql: copy_sql.to_string(),
            copy: Box::new(copy),
        })
    }

    fn pipe_statement(&mut self) -> Result<IngestStatement, ParserError> {
        match self.peek_word().as_deref() {
            Some("ALTER") => {
                self.p.next_token();
                self.expect("PIPE")?;
                let if_exists = self.if_clause(false)?;
                let name = self.name("pipe")?;
                // Snowflake spells it `SET PIPE_EXECUTION_PAUSED = TRUE`; both are accepted.
                let pause = if self.eat("PAUSE") {
                    true
                } else if self.eat("RESUME") {
                    false
                } else if self.eat("SET") {
                    self.expect("PIPE_EXECUTION_PAUSED")?;
                    self.boolean("PIPE_EXECUTION_PAUSED")?
                } else {
                    let found = self.p.peek_token();
                    return self.p.expected("PAUSE or RESUME", found);
                };
                Ok(IngestStatement::AlterPipe { name, if_exists, pause })
            }
            Some("DROP") => {
                self.p.next_token();
                self.expect("PIPE")?;
                let if_exists = self.if_clause(false)?;
                Ok(IngestStatement::DropPipe { name: self.name("pipe")?, if_exists })
            }
            Some("SHOW") => {
                self.p.next_token();
                self.expect("PIPES")?;
                Ok(IngestStatement::ShowPipes)
            }
            _ => {
                let found = self.p.peek_token();
                self.p.expected("a pipe statement", found)
            }
        }
    }
}

/// How often a pipe looks for new files unless `INTERVAL` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The transformation's one `FROM 'location'`, replaced by [`SOURCE_RELATION`]; returns the
/// location and the output aliases (the columns it computes).
fn transformation(query: &mut Query) -> Result<(String, Vec<String>), ParserError> {
    let mut locations = Vec::new();
    let _ = visit_relations_mut(query, |name: &mut ObjectName| {
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
            && ident.quote_style == Some('\'')
        {
            locations.push(ident.value.clone());
            *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(SOURCE_RELATION))]);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    let location = match locations.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ParserError::ParserError(
                "the transformation must read FROM 'location' (the folder or s3:// prefix in quotes)".into(),
            ));
        }
        _ => return Err(ParserError::ParserError("the transformation may read one 'location' only".into())),
    };
    let mut computed = Vec::new();
    if let datafusion::sql::sqlparser::ast::SetExpr::Select(select) = query.body.as_ref() {
        for item in &select.projection {
            if let datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { alias, .. } = item {
                computed.push(if alias.quote_style.is_some() {
                    alias.value.clone()
                } else {
                    alias.value.to_lowercase()
                });
            }
        }
    } else {
        return Err(ParserError::ParserError("the transformation must be one SELECT".into()));
    }
    Ok((location, computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses() {
        let sql = "COPY INTO music.plays FROM 's3://landing/events/' PATTERN = '.*[.]gz' \
                   FILE_FORMAT = (TYPE = JSON, COMPRESSION = GZIP) ON_ERROR = CONTINUE";
        let Some(IngestStatement::Copy(c)) = parse_ingest_statement(sql).unwrap() else { panic!() };
        assert_eq!(c.target, TaskName { schema: Some("music".into()), name: "plays".into() });
        assert_eq!(c.location, "s3://landing/events/");
        assert_eq!(c.pattern.as_deref(), Some(".*[.]gz"));
        assert_eq!(c.format.compression, Compression::Gzip);
        assert_eq!(c.on_error, OnError::Continue);
        assert!(!c.force && !c.validation && c.transform.is_none());
    }

    #[test]
    fn transformations_read_one_location() {
        let sql = "COPY INTO music.plays FROM (SELECT *, CAST(played_at AS DATE) AS play_date FROM '/land/events/') \
                   FILE_FORMAT = (TYPE = JSON) FORCE = TRUE";
        let c = parse_copy(sql).unwrap();
        assert_eq!(c.location, "/land/events/");
        assert_eq!(c.computed, vec!["play_date".to_string()]);
        assert!(c.transform.unwrap().contains(SOURCE_RELATION));
        assert!(c.force);
        let err = parse_copy("COPY INTO t FROM (SELECT 1 AS a FROM x)").unwrap_err().to_string();
        assert!(err.contains("FROM 'location'"), "{err}");
    }

    #[test]
    fn bad_forms_say_what_is_expected() {
        for (sql, expected) in [
            ("COPY INTO t FROM '/x' ON_ERROR = MAYBE", "ON_ERROR = ABORT_STATEMENT | ABORT | CONTINUE | SKIP_FILE"),
            ("COPY INTO t FROM '/x' PATTERN = '('", "PATTERN '('"),
            ("COPY INTO t FROM '/x' FILE_FORMAT = (COMPRESSION = GZIP)", "needs TYPE"),
            ("COPY INTO t FROM '/x' COLOR = 'red'", "unknown COPY INTO option COLOR"),
            ("COPY INTO t (a) FROM '/x'", "matched by name"),
            ("COPY INTO t FROM '/x' FORCE = TRUE FORCE = TRUE", "given twice"),
            ("CREATE PIPE p INTERVAL = 'soon' AS COPY INTO t FROM '/x'", "not a duration"),
            ("CREATE PIPE p", "AS COPY INTO"),
            ("ALTER PIPE p STOP", "PAUSE or RESUME"),
        ] {
            let err = parse_ingest_statement(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }

    #[test]
    fn pipe_statements_parse() {
        let sql = "CREATE OR REPLACE PIPE ingest.plays INTERVAL = '5s' COMMENT = 'live' AS \
                   COPY INTO music.plays FROM '/land/' FILE_FORMAT = (TYPE = JSON) ON_ERROR = CONTINUE;";
        let Some(IngestStatement::CreatePipe { name, or_replace, interval, comment, copy_sql, copy, .. }) =
            parse_ingest_statement(sql).unwrap()
        else {
            panic!()
        };
        assert_eq!(name.name, "plays");
        assert!(or_replace);
        assert_eq!(interval, Duration::from_secs(5));
        assert_eq!(comment.as_deref(), Some("live"));
        assert!(copy_sql.starts_with("COPY INTO music.plays") && !copy_sql.ends_with(';'));
        assert_eq!(copy.on_error, OnError::Continue);
        assert_eq!(
            parse_ingest_statement("ALTER PIPE p PAUSE").unwrap(),
            Some(IngestStatement::AlterPipe {
                name: TaskName { schema: None, name: "p".into() },
                if_exists: false,
                pause: true
            })
        );
        assert_eq!(parse_ingest_statement("SHOW PIPES").unwrap(), Some(IngestStatement::ShowPipes));
        assert_eq!(parse_ingest_statement("COPY t TO 'x.parquet'").unwrap(), None);
    }
}
