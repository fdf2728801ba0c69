//! Statement classification and planning: what kind of statement a text is, and its plan.
//!
//! DataFusion plans every statement; what it cannot carry (`PARTITIONED BY` of a managed
//! table, the statement's source text) is lifted off first, and settings a session may not
//! change are refused here, before anything runs.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, HiveDistributionStyle, ObjectName, Statement as SqlStatement,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::split::split_statements;
use crate::catalog::CATALOG_NAME;
use crate::ddl::Ddl;
use crate::error::{Error, Result};
use crate::ingest::pipes::SHOW_PIPES_SQL;
use crate::ingest::{IngestStatement, parse_ingest_statement};
use crate::schedule::statements::SHOW_TASKS_SQL;
use crate::schedule::{TaskStatement, parse_task_statement};
use crate::session::{Engine, Session};

/// What kind of statement was planned: decides how a protocol runs and answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Produces rows.
    Query,
    /// Changes data; answers a row count.
    Dml,
    /// Changes the catalog.
    Ddl,
    /// Changes the session (SET).
    Session,
    /// Creates, changes or runs a task.
    Task,
}

impl StatementKind {
    /// The name `system.queries` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Query => "query",
            StatementKind::Dml => "dml",
            StatementKind::Ddl => "ddl",
            StatementKind::Session => "session",
            StatementKind::Task => "task",
        }
    }
}

/// A statement as parsed: DataFusion's, or a task statement caught before DataFusion's parser.
#[derive(Debug, Clone)]
pub enum Parsed {
    Sql(DFStatement),
    Task(TaskStatement),
    Ingest(IngestStatement),
}

/// A planned statement, not yet run.
#[derive(Debug, Clone)]
pub enum Planned {
    /// SELECT, SHOW, EXPLAIN, ...
    Query(LogicalPlan),
    /// INSERT, COPY, UPDATE, DELETE.
    Dml(LogicalPlan),
    /// CREATE / DROP of schemas, tables, views.
    Ddl(Box<Ddl>),
    /// SET and other session statements.
    Session(LogicalPlan),
    /// CREATE / ALTER / DROP / EXECUTE TASK.
    Task(Box<TaskStatement>),
    /// COPY INTO (DML) and CREATE / ALTER / DROP PIPE (DDL), with the statement's text.
    Ingest(Box<IngestStatement>, String),
}

impl Planned {
    /// The statement's kind.
    pub fn kind(&self) -> StatementKind {
        match self {
            Planned::Query(_) => StatementKind::Query,
            Planned::Dml(_) => StatementKind::Dml,
            Planned::Ddl(_) => StatementKind::Ddl,
            Planned::Session(_) => StatementKind::Session,
            Planned::Task(_) => StatementKind::Task,
            Planned::Ingest(i, _) if matches!(i.as_ref(), IngestStatement::Copy(_)) => StatementKind::Dml,
            Planned::Ingest(..) => StatementKind::Ddl,
        }
    }

    /// Whether running it can change data or the catalog. True for DDL and DML, and for a
    /// query that wraps a write (`EXPLAIN ANALYZE INSERT ...` executes the insert).
    pub fn writes(&self) -> bool {
        match self {
            Planned::Ddl(_) | Planned::Dml(_) => true,
            Planned::Task(t) => t.writes(),
            Planned::Ingest(i, _) => i.writes(),
            Planned::Session(_) => false,
            Planned::Query(plan) => {
                let mut writes = false;
                let _ = plan.apply_with_subqueries(|p| {
                    if matches!(p, LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Ddl(_)) {
                        writes = true;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                writes
            }
        }
    }

    /// Whether running it fetches from an HTTP source (a `JSON_API` table, also through a
    /// view): a privilege, like writing.
    pub fn reads_network(&self) -> bool {
        self.logical_plan().is_some_and(crate::sources::reads_network)
    }

    /// The logical plan, for queries, DML and session statements.
    pub fn logical_plan(&self) -> Option<&LogicalPlan> {
        match self {
            Planned::Query(p) | Planned::Dml(p) | Planned::Session(p) => Some(p),
            Planned::Ddl(_) | Planned::Task(_) | Planned::Ingest(..) => None,
        }
    }
}

/// Schema of the single-row answer to DML: `count UInt64`.
pub fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

impl Engine {
    /// Split a script into statements, each with its own source text.
    pub fn parse(&self, sql: &str) -> Result<Vec<(String, Parsed)>> {
        let mut out = Vec::new();
        for text in split_statements(sql)? {
            if let Some(task) = parse_task_statement(&text)? {
                out.push((text, Parsed::Task(task)));
                continue;
            }
            if let Some(ingest) = parse_ingest_statement(&text)? {
                out.push((text, Parsed::Ingest(ingest)));
                continue;
            }
            let mut parser = DFParserBuilder::new(text.as_str()).with_dialect(&GenericDialect {}).build()?;
            let mut statements = parser.parse_statements()?;
            match (statements.pop_front(), statements.is_empty()) {
                (None, _) => continue,
                (Some(statement), true) => out.push((text, Parsed::Sql(statement))),
                (Some(_), false) => return Err(Error::invalid(format!("cannot split statements in: {text}"))),
            }
        }
        Ok(out)
    }

    /// Plan one statement in `session`; `sql` is its source text.
    pub async fn plan(&self, session: &Session, sql: &str, statement: Parsed) -> Result<Planned> {
        self.store.refresh().await?;
        let statement = match statement {
            Parsed::Task(TaskStatement::Show) => return Box::pin(self.plan_sql(session, SHOW_TASKS_SQL)).await,
            Parsed::Task(task) => return Ok(Planned::Task(Box::new(task))),
            Parsed::Ingest(IngestStatement::ShowPipes) => {
                return Box::pin(self.plan_sql(session, SHOW_PIPES_SQL)).await;
            }
            Parsed::Ingest(ingest) => return Ok(Planned::Ingest(Box::new(ingest), sql.to_string())),
            Parsed::Sql(statement) => statement,
        };
        let sql = sql.to_string();
        let (statement, partition_columns) = take_partition_columns(statement)?;
        reject_runtime_settings(&statement)?;
        reject_distinct_from_precedence(&statement)?;
        let state = session.ctx().state();
        let references = state.resolve_table_references(&statement)?;
        let created = created_name(&statement);
        let plan = match state.statement_to_plan(statement).await {
            Ok(plan) => plan,
            Err(e) => return Err(self.missing_table(&state, &e, &references, created.as_deref()).unwrap_or(e.into())),
        };
        Ok(match plan {
            LogicalPlan::Ddl(statement) => Planned::Ddl(Box::new(Ddl { statement, partition_columns, sql })),
            LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => Planned::Dml(plan),
            LogicalPlan::Statement(_) => Planned::Session(plan),
            other => Planned::Query(other),
        })
    }

    /// Plan a single SQL statement given as text.
    pub async fn plan_sql(&self, session: &Session, sql: &str) -> Result<Planned> {
        let mut statements = self.parse(sql)?;
        if statements.len() != 1 {
            return Err(Error::invalid(format!("expected exactly one SQL statement, found {}", statements.len())));
        }
        let (text, statement) = statements.remove(0);
        self.plan(session, &text, statement).await
    }

    /// When planning failed and a table the statement reads does not exist, that is the
    /// error: NOT FOUND, naming the table as written. DataFusion reports it as a plan error
    /// like any other, so it is recognised here from the catalog, not from its text.
    fn missing_table(
        &self,
        state: &datafusion::execution::context::SessionState,
        error: &DataFusionError,
        references: &[TableReference],
        created: Option<&str>,
    ) -> Option<Error> {
        if !matches!(error.find_root(), DataFusionError::Plan(_)) {
            return None;
        }
        let default_schema = &state.config_options().catalog.default_schema;
        let snapshot = self.store.snapshot();
        references.iter().find_map(|r| {
            // The table being created, and table functions (`FROM top_k_nearest(...)`), are not
            // catalog tables.
            if created == Some(r.table()) || (r.schema().is_none() && state.table_functions().contains_key(r.table())) {
                return None;
            }
            let catalog = r.catalog().unwrap_or(CATALOG_NAME);
            let schema = r.schema().unwrap_or(default_schema);
            let exists = catalog == CATALOG_NAME
                && (schema == "information_schema" || snapshot.table(schema, r.table()).is_some());
            (!exists).then(|| Error::NotFound { kind: "table", name: format!("{catalog}.{schema}.{}", r.table()) })
        })
    }
}

/// The name of the object a CREATE statement makes (not yet in the catalog while planning).
fn created_name(statement: &DFStatement) -> Option<String> {
    let last = |name: &ObjectName| {
        name.0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() })
    };
    match statement {
        DFStatement::CreateExternalTable(c) => {
            c.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_lowercase())
        }
        DFStatement::Statement(s) => match s.as_ref() {
            SqlStatement::CreateTable(ct) => last(&ct.name),
            SqlStatement::CreateView(cv) => last(&cv.name),
            _ => None,
        },
        _ => None,
    }
}

/// Lift `PARTITIONED BY (a, b)` off a `CREATE TABLE` (DataFusion rejects it) and return it.
fn take_partition_columns(statement: DFStatement) -> Result<(DFStatement, Vec<String>)> {
    let DFStatement::Statement(mut inner) = statement else {
        return Ok((statement, Vec::new()));
    };
    let mut columns = Vec::new();
    if let SqlStatement::CreateTable(ct) = inner.as_mut()
        && let HiveDistributionStyle::PARTITIONED { columns: defs } = &ct.hive_distribution
    {
        for def in defs {
            if !matches!(def.data_type, SqlDataType::Unspecified) {
                return Err(Error::invalid(format!(
                    "PARTITIONED BY takes column names of the table, not definitions: remove the type after '{}'",
                    def.name
                )));
            }
            let name =
                if def.name.quote_style.is_some() { def.name.value.clone() } else { def.name.value.to_lowercase() };
            columns.push(name);
        }
        ct.hive_distribution = HiveDistributionStyle::NONE;
    }
    Ok((DFStatement::Statement(inner), columns))
}

/// sqlparser 0.62 parses the right side of `IS [NOT] DISTINCT FROM` as a whole expression, so
/// `a IS DISTINCT FROM b OR c` means `a IS DISTINCT FROM (b OR c)` (fixed upstream in
/// datafusion-sqlparser-rs#2436, after 0.62). A result silently different from what every
/// other database gives is refused instead, naming the fix. Written parentheses are kept by
/// the parser, so `a IS DISTINCT FROM (b OR c)`, meant as such, still runs.
fn reject_distinct_from_precedence(statement: &DFStatement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr, visit_expressions};
    let DFStatement::Statement(s) = statement else {
        return Ok(());
    };
    let found = visit_expressions(s.as_ref(), |e| {
        if let SqlExpr::IsDistinctFrom(_, right) | SqlExpr::IsNotDistinctFrom(_, right) = e
            && let SqlExpr::BinaryOp { op: BinaryOperator::And | BinaryOperator::Or | BinaryOperator::Xor, .. } =
                right.as_ref()
        {
            return std::ops::ControlFlow::Break(e.to_string());
        }
        std::ops::ControlFlow::Continue(())
    });
    if let std::ops::ControlFlow::Break(text) = found {
        return Err(Error::invalid(format!(
            "ambiguous IS [NOT] DISTINCT FROM followed by AND/OR: `{text}` would be read as `... IS DISTINCT FROM (... AND/OR ...)` by this SQL parser; put each comparison in parentheses, e.g. `(a IS DISTINCT FROM b) OR (c IS DISTINCT FROM d)`"
        )));
    }
    Ok(())
}

/// A session may not replace the engine's memory pool or spill settings (they would escape
/// the global cap).
fn reject_runtime_settings(statement: &DFStatement) -> Result<()> {
    if let DFStatement::Statement(s) = statement
        && let SqlStatement::Set(_) = s.as_ref()
        && s.to_string().to_lowercase().contains("datafusion.runtime.")
    {
        return Err(Error::not_supported(
            "datafusion.runtime.* settings are fixed by the server configuration (memory limit, spill folder)",
        ));
    }
    Ok(())
}
