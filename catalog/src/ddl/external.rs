//! `CREATE EXTERNAL TABLE`: files the warehouse does not own (Parquet, CSV, JSON; Hive
//! partitions; local or `s3://`). The statement is validated by opening it once, then stored
//! as text and re-planned when the table is used; dropping it never deletes the files.

use datafusion::logical_expr::CreateExternalTable;
use tracing::info;

use crate::catalog::TableEntry;
use crate::catalog::provider::external_table_provider;
use crate::error::{Error, Result};
use crate::session::{Engine, Session};

impl Engine {
    pub(crate) async fn create_external(&self, session: &Session, cmd: CreateExternalTable, sql: String) -> Result<()> {
        if cmd.temporary {
            return Err(Error::not_supported("temporary tables are not supported"));
        }
        let (schema, table) = self.resolve(session, &cmd.name)?;
        // Validate now (format, location, schema inference) so a bad definition is never stored.
        external_table_provider(&session.ctx().state(), &cmd).await?;
        let location = cmd.locations.join(",");
        let entry = TableEntry::External { sql, location };
        self.put_entry(&schema, &table, entry, cmd.if_not_exists, cmd.or_replace, "table").await?;
        info!(schema = %schema, table = %table, "external table created");
        Ok(())
    }
}
