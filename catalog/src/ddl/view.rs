//! `CREATE [OR REPLACE] VIEW`: stored as its statement and re-planned on use. A view that
//! reads itself, directly or through other views, is refused (loading it would never end).

use std::collections::HashSet;

use datafusion::common::TableReference;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::CreateView;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use tracing::info;

use crate::catalog::{CATALOG_NAME, TableEntry};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

impl Engine {
    pub(crate) async fn create_view(&self, session: &Session, v: CreateView, sql: String) -> Result<()> {
        if v.temporary {
            return Err(Error::not_supported("temporary views are not supported"));
        }
        let (schema, table) = self.resolve(session, &v.name)?;
        self.check_view_cycle(session, &schema, &table, &sql)?;
        let entry = TableEntry::View { sql };
        self.put_entry(&schema, &table, entry, false, v.or_replace, "view").await?;
        info!(schema = %schema, view = %table, "view created");
        Ok(())
    }

    /// Follow the stored definitions of every view `sql` references, looking for `schema.table`.
    fn check_view_cycle(&self, session: &Session, schema: &str, table: &str, sql: &str) -> Result<()> {
        let state = session.ctx().state();
        let default_schema = state.config_options().catalog.default_schema.clone();
        let snapshot = self.store.snapshot();
        let mut pending = vec![sql.to_string()];
        let mut seen = HashSet::new();
        while let Some(text) = pending.pop() {
            for r in view_query_references(&state, &text)? {
                if r.catalog().is_some_and(|c| c != CATALOG_NAME) {
                    continue;
                }
                let s = r.schema().unwrap_or(&default_schema).to_string();
                let t = r.table().to_string();
                if s == schema && t == table {
                    return Err(Error::invalid(format!(
                        "view {schema}.{table} would read from itself (directly or through other views)"
                    )));
                }
                if seen.insert((s.clone(), t.clone()))
                    && let Some(TableEntry::View { sql }) = snapshot.table(&s, &t)
                {
                    pending.push(sql.clone());
                }
            }
        }
        Ok(())
    }
}

/// Tables read by the query of a `CREATE VIEW` statement.
fn view_query_references(state: &SessionState, sql: &str) -> Result<Vec<TableReference>> {
    let mut parser = DFParserBuilder::new(sql).with_dialect(&GenericDialect {}).build()?;
    let statement = parser
        .parse_statements()?
        .pop_front()
        .ok_or_else(|| Error::invalid(format!("empty view definition: {sql}")))?;
    let query = match statement {
        DFStatement::Statement(s) => match *s {
            SqlStatement::CreateView(cv) => cv.query,
            other => return Err(Error::invalid(format!("not a CREATE VIEW statement: {other}"))),
        },
        other => return Err(Error::invalid(format!("not a CREATE VIEW statement: {other}"))),
    };
    Ok(state.resolve_table_references(&DFStatement::Statement(Box::new(SqlStatement::Query(query))))?)
}
