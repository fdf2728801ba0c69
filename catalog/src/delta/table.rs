//! Creating a managed table's Delta folder (empty or filled by a query in one commit) and
//! removing one.

use std::sync::Arc;

use arrow::array::{Array, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::warn;

use super::types::delta_compatible_schema;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::storage::Warehouse;

/// Where a new managed table's rows come from.
pub enum Source {
    /// No rows, only a schema.
    Empty(SchemaRef),
    /// A query's result, planned and run in the given session (under its per-query pool).
    Plan(LogicalPlan, Box<Session>),
}

/// Create a Delta table for `schema.table` under a fresh folder and fill it from `source`;
/// returns the folder (relative to the root). On failure the folder is removed, so nothing
/// half-written is ever left behind.
pub async fn create_table(
    warehouse: &Warehouse,
    schema: &str,
    table: &str,
    source: Source,
    partition_columns: &[String],
) -> Result<String> {
    let arrow_schema = match &source {
        Source::Empty(s) => delta_compatible_schema(s),
        Source::Plan(p, _) => Arc::new(p.schema().as_arrow().clone()),
    };
    let delta_schema: StructType = arrow_schema.as_ref().try_into_kernel().map_err(|e| {
        Error::invalid(format!("a column type of {schema}.{table} cannot be stored in a Delta table: {e}"))
    })?;
    let location = format!("{schema}/{table}-{}", uuid::Uuid::new_v4().simple());
    let url = warehouse.url(&location)?;
    let result: Result<()> = async {
        let delta = deltalake::operations::create::CreateBuilder::new()
            .with_location(url.to_string())
            .with_storage_options(warehouse.storage_options())
            .with_table_name(table.to_string())
            .with_columns(delta_schema.fields().cloned())
            .with_partition_columns(partition_columns.to_vec())
            .await?;
        match source {
            Source::Empty(_) => {}
            Source::Plan(plan, session) => {
                // Planned as a whole INSERT, exactly like `INSERT INTO`, so the optimizer
                // gathers every input partition into Delta's sink (which commits once).
                // Through the managed table's own sink, so the files get the warehouse's
                // Parquet settings.
                let provider: Arc<dyn datafusion::datasource::TableProvider> =
                    Arc::new(super::ManagedTable::new(&delta, delta.table_provider().await?)?);
                let dml = DmlStatement::new(
                    TableReference::partial(schema, table),
                    provider_as_source(provider),
                    WriteOp::Insert(InsertOp::Append),
                    Arc::new(plan),
                );
                let physical = session.ctx().state().create_physical_plan(&LogicalPlan::Dml(dml)).await?;
                count_rows(session.execute(physical)?).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        delete_location(warehouse, &location).await;
        return Err(e);
    }
    Ok(location)
}

/// Remove everything under `location` (best effort: leftovers are invisible to queries and only
/// cost space, so failures are logged, not returned).
pub async fn delete_location(warehouse: &Warehouse, location: &str) {
    let prefix = warehouse.path(location);
    let store = warehouse.store().clone();
    let paths: Vec<_> = match store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await {
        Ok(p) => p,
        Err(e) => {
            warn!(location, error = %e, "could not list files of a dropped table");
            return;
        }
    };
    let mut deletes = futures::stream::iter(paths).map(|p| {
        let store = store.clone();
        async move { store.delete(&p).await }
    });
    let mut failed = 0usize;
    while let Some(f) = deletes.next().await {
        if f.await.is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        warn!(location, failed, "some files of a dropped table could not be deleted");
    }
    if let Ok(dir) = warehouse.url(location)
        && let Ok(path) = dir.to_file_path()
    {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Sum the `count` column of a write's answer (DataFusion's sinks answer one `count` row).
pub async fn count_rows(mut stream: SendableRecordBatchStream) -> Result<u64> {
    let mut total = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_columns() == 0 {
            continue;
        }
        if let Some(counts) = batch.column(0).as_any().downcast_ref::<UInt64Array>() {
            total += counts.iter().flatten().sum::<u64>();
        } else {
            total += batch.num_rows() as u64;
        }
    }
    Ok(total)
}
