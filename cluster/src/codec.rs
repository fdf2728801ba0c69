//! The logical codec every role shares: managed tables travel as their file lists, everything
//! else as Ballista's codec writes it.
//!
//! deltalake's scan nodes cannot be serialised (its logical codec's extension methods are
//! `todo!()`, its scan plans have no physical codec). A managed table read as plain Parquet is
//! instead encoded as the version's data files with their partition values and statistics
//! ([`ManagedTable::file_list`]); the scheduler decodes a [`FileListTable`], whose scan is a
//! plain Parquet `DataSourceExec` that DataFusion serialises to executors natively. Listing
//! tables are handled by DataFusion's own serialisation, their file formats by Ballista's codec.

use std::sync::Arc;

use ballista_core::serde::BallistaLogicalExtensionCodec;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{TableReference, not_impl_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use streampulse_engine::{FileListTable, ManagedTable};

/// The first byte of an encoded table provider: whose encoding follows.
const FILE_LIST: u8 = 1;
const BALLISTA: u8 = 0;

/// Ballista's logical codec, with managed tables encoded as file lists.
#[derive(Debug, Default)]
pub struct ClusterCodec {
    inner: BallistaLogicalExtensionCodec,
}

fn engine_error(e: streampulse_engine::Error) -> DataFusionError {
    e.into_datafusion()
}

impl LogicalExtensionCodec for ClusterCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match buf.split_first() {
            Some((&FILE_LIST, files)) => Ok(Arc::new(FileListTable::from_bytes(files).map_err(engine_error)?)),
            Some((&BALLISTA, rest)) => self.inner.try_decode_table_provider(rest, table_ref, schema, ctx),
            _ => not_impl_err!("table {table_ref} was encoded by another codec"),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let files = if let Some(managed) = node.downcast_ref::<ManagedTable>() {
            match managed.file_list() {
                Some(files) => files.map_err(engine_error)?,
                None => return not_impl_err!("table {table_ref} needs the Delta reader and cannot run on the cluster"),
            }
        } else if let Some(list) = node.downcast_ref::<FileListTable>() {
            list.to_bytes().map_err(engine_error)?
        } else {
            buf.push(BALLISTA);
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        buf.push(FILE_LIST);
        buf.extend_from_slice(&files);
        Ok(())
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}
