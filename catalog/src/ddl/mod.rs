//! DDL against the persistent catalog, one object kind per file: [`schema`], [`table`]
//! (managed Delta tables), [`external`] (files the warehouse does not own) and [`view`].
//!
//! Each is an `impl Engine` block; [`Engine::run_ddl`] is the one dispatch from a planned
//! statement. A change is one catalog commit; a managed table's files are written before its
//! entry is committed and removed after its entry is gone, so a crash never shows a table
//! without data or leaves data a table can see.

pub mod external;
pub mod schema;
pub mod table;
pub mod view;

use datafusion::common::TableReference;
use datafusion::logical_expr::DdlStatement;

use crate::catalog::{CATALOG_NAME, TableEntry};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

/// A DDL statement with what DataFusion's plan does not carry.
#[derive(Debug, Clone)]
pub struct Ddl {
    /// The planned statement.
    pub statement: DdlStatement,
    /// `PARTITIONED BY` columns of a `CREATE TABLE`.
    pub partition_columns: Vec<String>,
    /// The statement text, stored for external tables and views.
    pub sql: String,
}

impl Engine {
    /// Carry out a DDL statement against the persistent catalog.
    pub async fn run_ddl(&self, session: &Session, ddl: Ddl) -> Result<()> {
        let Ddl { statement, partition_columns, sql } = ddl;
        match statement {
            DdlStatement::CreateCatalogSchema(c) => self.create_schema(&c.schema_name, c.if_not_exists).await,
            DdlStatement::DropCatalogSchema(d) => self.drop_schema(&d.name, d.if_exists, d.cascade).await,
            DdlStatement::CreateExternalTable(cmd) => self.create_external(session, *cmd, sql).await,
            DdlStatement::CreateView(v) => self.create_view(session, v, sql).await,
            DdlStatement::CreateMemoryTable(c) => self.create_managed(session, c, partition_columns).await,
            DdlStatement::DropTable(d) => self.drop_entry(session, &d.name, d.if_exists, false).await,
            DdlStatement::DropView(d) => self.drop_entry(session, &d.name, d.if_exists, true).await,
            other => Err(Error::not_supported(format!("{} is not supported by this warehouse", other.name()))),
        }
    }

    /// `(schema, table)` for a reference, defaulting the schema and checking the catalog.
    pub(crate) fn resolve(&self, session: &Session, name: &TableReference) -> Result<(String, String)> {
        if let Some(catalog) = name.catalog() {
            check_catalog(catalog)?;
        }
        let schema = match name.schema() {
            Some(s) => s.to_string(),
            None => session.ctx().state().config_options().catalog.default_schema.clone(),
        };
        Ok((schema, name.table().to_string()))
    }

    /// Commit `entry` as `schema.table`; returns what it replaced. A replaced managed table's
    /// files are removed once the commit has landed.
    pub(crate) async fn put_entry(
        &self,
        schema: &str,
        table: &str,
        entry: TableEntry,
        if_not_exists: bool,
        or_replace: bool,
        kind: &'static str,
    ) -> Result<Option<TableEntry>> {
        let replaced = self.store.snapshot().table(schema, table).cloned();
        let committed = self
            .store
            .commit(|s| {
                let tables = &mut s.schema_mut(schema)?.tables;
                if tables.contains_key(table) && !or_replace {
                    return if if_not_exists {
                        Ok(())
                    } else {
                        Err(Error::AlreadyExists { kind, name: format!("{schema}.{table}") })
                    };
                }
                tables.insert(table.to_string(), entry.clone());
                Ok(())
            })
            .await?;
        // Only a replaced managed table's files become garbage.
        if or_replace
            && let Some(old) = &replaced
            && committed.table(schema, table) != Some(old)
        {
            self.delete_managed_data(old).await;
        }
        Ok(replaced)
    }

    /// Remove a managed table's files after its catalog entry is gone (best effort: leftovers
    /// are invisible and only cost space).
    pub(crate) async fn delete_managed_data(&self, entry: &TableEntry) {
        if let TableEntry::Managed { location, .. } = entry {
            crate::delta::delete_location(self.warehouse(), location).await;
        }
    }
}

pub(crate) fn check_catalog(catalog: &str) -> Result<()> {
    if catalog != CATALOG_NAME {
        return Err(Error::NotFound { kind: "catalog", name: catalog.to_string() });
    }
    Ok(())
}
