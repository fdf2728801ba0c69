//! Metadata commands: catalogs, schemas, tables (with their schemas), table types, keys,
//! SqlInfo and XDBC types, answered from the persistent catalog.

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::sql::metadata::GetCatalogsBuilder;
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, ProstMessageExt,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::common::TableReference;
use prost::Message;
use streampulse_engine::system::{SYSTEM_SCHEMA, SYSTEM_TABLES};
use streampulse_engine::{CATALOG_NAME, Result};
use tracing::warn;

use super::StreamPulseFlightSql;
use super::metadata::{annotated_table_schema, like};
use super::status::from_flight;

/// Views DataFusion's `information_schema` offers, listed beside the catalog's tables.
const INFORMATION_SCHEMA_VIEWS: [&str; 7] =
    ["columns", "df_settings", "parameters", "routines", "schemata", "tables", "views"];

impl StreamPulseFlightSql {
    /// The FlightInfo of a metadata command: its schema and one ticket that is the command.
    pub(crate) fn command_info(
        &self,
        cmd: impl ProstMessageExt,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd.as_any().encode_to_vec()));
        Ok(FlightInfo::new().try_with_schema(schema)?.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    pub(crate) fn list_catalogs(&self, query: CommandGetCatalogs) -> Result<RecordBatch> {
        let mut builder: GetCatalogsBuilder = query.into_builder();
        builder.append(CATALOG_NAME);
        builder.build().map_err(from_flight)
    }

    pub(crate) async fn list_schemas(&self, query: CommandGetDbSchemas) -> Result<RecordBatch> {
        let state = self.engine.refresh().await?;
        let mut builder = query.into_builder();
        for schema in state.schemas.keys().map(String::as_str).chain([SYSTEM_SCHEMA, "information_schema"]) {
            builder.append(CATALOG_NAME, schema);
        }
        builder.build().map_err(from_flight)
    }

    pub(crate) fn list_table_types(&self, query: CommandGetTableTypes) -> Result<RecordBatch> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        builder.build().map_err(from_flight)
    }

    /// The tables GetTables reports, optionally with their schemas.
    pub(crate) async fn list_tables(&self, query: CommandGetTables) -> Result<RecordBatch> {
        let state = self.engine.refresh().await?;
        let mut builder = query.clone().into_builder();
        let catalog_ok = query.catalog.as_deref().is_none_or(|c| c.is_empty() || c == CATALOG_NAME);
        if catalog_ok {
            let session = self.engine.session();
            let schema_pattern = query.db_schema_filter_pattern.as_deref();
            let table_pattern = query.table_name_filter_pattern.as_deref();
            let wanted_type = |t: &str| query.table_types.is_empty() || query.table_types.iter().any(|x| x == t);
            let mut rows: Vec<(String, String, String)> = Vec::new();
            for (schema, entry) in &state.schemas {
                for (table, t) in &entry.tables {
                    rows.push((schema.clone(), table.clone(), t.table_type().to_string()));
                }
            }
            for t in SYSTEM_TABLES {
                rows.push((SYSTEM_SCHEMA.into(), t.into(), "TABLE".into()));
            }
            for t in INFORMATION_SCHEMA_VIEWS {
                rows.push(("information_schema".into(), t.into(), "VIEW".into()));
            }
            for (schema, table, table_type) in rows {
                if !like(schema_pattern, &schema) || !like(table_pattern, &table) || !wanted_type(&table_type) {
                    continue;
                }
                let table_schema = if query.include_schema {
                    let reference = TableReference::full(CATALOG_NAME, schema.as_str(), table.as_str());
                    match session.ctx().table_provider(reference).await {
                        Ok(p) => annotated_table_schema(CATALOG_NAME, &schema, &table, &p.schema()),
                        Err(e) => {
                            warn!(schema, table, error = %e, "table listed but cannot be opened");
                            continue;
                        }
                    }
                } else {
                    Schema::empty()
                };
                builder.append(CATALOG_NAME, &schema, &table, &table_type, &table_schema).map_err(from_flight)?;
            }
        }
        builder.build().map_err(from_flight)
    }
}
