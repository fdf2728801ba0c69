//! Managed tables: `CREATE [OR REPLACE] TABLE [PARTITIONED BY] [AS SELECT]` and
//! `DROP TABLE` / `DROP VIEW` (one path for every entry kind).

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::TableReference;
use datafusion::logical_expr::{CreateMemoryTable, LogicalPlan};
use tracing::info;

use crate::catalog::TableEntry;
use crate::delta::{self, Source};
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

impl Engine {
    pub(crate) async fn create_managed(
        &self,
        session: &Session,
        c: CreateMemoryTable,
        partition_columns: Vec<String>,
    ) -> Result<()> {
        if c.temporary {
            return Err(Error::not_supported("temporary tables are not supported"));
        }
        let (schema, table) = self.resolve(session, &c.name)?;
        let snapshot = self.store.refresh().await?;
        if !snapshot.schemas.contains_key(&schema) {
            return Err(Error::NotFound { kind: "schema", name: schema });
        }
        if snapshot.table(&schema, &table).is_some() && !c.or_replace {
            if c.if_not_exists {
                return Ok(());
            }
            return Err(Error::AlreadyExists { kind: "table", name: format!("{schema}.{table}") });
        }
        let arrow_schema: Schema = c.input.schema().as_arrow().clone();
        for p in &partition_columns {
            if arrow_schema.field_with_name(p).is_err() {
                return Err(Error::invalid(format!("PARTITIONED BY column '{p}' is not a column of {schema}.{table}")));
            }
        }
        if !partition_columns.is_empty() && partition_columns.len() == arrow_schema.fields().len() {
            return Err(Error::invalid(format!(
                "{schema}.{table} must have at least one column that is not a partition column"
            )));
        }
        let source = if matches!(c.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row) {
            Source::Empty(Arc::new(arrow_schema))
        } else {
            Source::Plan(delta::delta_compatible_plan((*c.input).clone())?, Box::new(session.clone()))
        };
        let location = delta::create_table(self.warehouse(), &schema, &table, source, &partition_columns).await?;
        let entry = TableEntry::Managed { location: location.clone(), partition_columns };
        if let Err(e) = self.put_entry(&schema, &table, entry, c.if_not_exists, c.or_replace, "table").await {
            delta::delete_location(self.warehouse(), &location).await;
            return Err(e);
        }
        info!(schema = %schema, table = %table, location = %location, "managed table created");
        Ok(())
    }

    /// `DROP TABLE` (`view` false) or `DROP VIEW` (`view` true): removes the entry, then a
    /// managed table's files.
    pub(crate) async fn drop_entry(
        &self,
        session: &Session,
        name: &TableReference,
        if_exists: bool,
        view: bool,
    ) -> Result<()> {
        let (schema, table) = self.resolve(session, name)?;
        let kind = if view { "view" } else { "table" };
        let before = self.store.refresh().await?.table(&schema, &table).cloned();
        self.store
            .commit(|s| {
                let Some(tables) = s.schemas.get_mut(&schema).map(|e| &mut e.tables) else {
                    return if if_exists {
                        Ok(())
                    } else {
                        Err(Error::NotFound { kind: "schema", name: schema.clone() })
                    };
                };
                match tables.get(&table) {
                    None if if_exists => Ok(()),
                    None => Err(Error::NotFound { kind, name: format!("{schema}.{table}") }),
                    Some(TableEntry::View { .. }) if !view => {
                        Err(Error::invalid(format!("{schema}.{table} is a view: use DROP VIEW")))
                    }
                    Some(TableEntry::Managed { .. } | TableEntry::External { .. }) if view => {
                        Err(Error::invalid(format!("{schema}.{table} is a table: use DROP TABLE")))
                    }
                    Some(_) => {
                        tables.remove(&table);
                        Ok(())
                    }
                }
            })
            .await?;
        if let Some(entry) = before {
            self.delete_managed_data(&entry).await;
        }
        info!(schema = %schema, name = %table, kind, "dropped");
        Ok(())
    }
}
