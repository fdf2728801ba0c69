//! `CREATE SCHEMA` and `DROP SCHEMA [CASCADE]`.

use datafusion::common::SchemaReference;
use tracing::info;

use super::check_catalog;
use crate::error::{Error, Result};
use crate::session::Engine;

impl Engine {
    pub(crate) async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<()> {
        let name = bare_schema_name(name)?;
        if name == crate::system::SYSTEM_SCHEMA {
            return Err(Error::invalid("schema 'system' is reserved for the warehouse's own tables (system.queries)"));
        }
        self.store
            .commit(|s| {
                if s.schemas.contains_key(&name) {
                    return if if_not_exists {
                        Ok(())
                    } else {
                        Err(Error::AlreadyExists { kind: "schema", name: name.clone() })
                    };
                }
                s.schemas.insert(name.clone(), Default::default());
                Ok(())
            })
            .await?;
        info!(schema = %name, "schema created");
        Ok(())
    }

    pub(crate) async fn drop_schema(&self, name: &SchemaReference, if_exists: bool, cascade: bool) -> Result<()> {
        let name = match name {
            SchemaReference::Bare { schema } => schema.to_string(),
            SchemaReference::Full { schema, catalog } => {
                check_catalog(catalog)?;
                schema.to_string()
            }
        };
        let before = self.store.refresh().await?;
        self.store
            .commit(|s| match s.schemas.get(&name) {
                None if if_exists => Ok(()),
                None => Err(Error::NotFound { kind: "schema", name: name.clone() }),
                Some(entry) if !entry.tables.is_empty() && !cascade => Err(Error::invalid(format!(
                    "schema '{name}' is not empty: drop its tables first or use DROP SCHEMA ... CASCADE"
                ))),
                Some(_) => {
                    s.schemas.remove(&name);
                    Ok(())
                }
            })
            .await?;
        if let Some(entry) = before.schemas.get(&name) {
            for t in entry.tables.values() {
                self.delete_managed_data(t).await;
            }
        }
        info!(schema = %name, "schema dropped");
        Ok(())
    }
}

/// `schema` or `streampulse.schema` → `schema`.
fn bare_schema_name(name: &str) -> Result<String> {
    match name.split_once('.') {
        Some((catalog, schema)) => {
            check_catalog(catalog)?;
            Ok(schema.to_string())
        }
        None => Ok(name.to_string()),
    }
}
