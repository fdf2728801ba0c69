//! The codecs every role shares: managed tables travel as their file lists and `top_k_nearest`
//! as its two planned queries, everything else as Ballista's codecs write it.
//!
//! deltalake's scan nodes cannot be serialised (its logical codec's extension methods are
//! `todo!()`, its scan plans have no physical codec). A managed table read as plain Parquet is
//! instead encoded as the version's data files with their partition values and statistics
//! ([`ManagedTable::file_list`]); the scheduler decodes a [`FileListTable`], whose scan is a
//! plain Parquet `DataSourceExec` that DataFusion serialises to executors natively. Listing
//! tables are handled by DataFusion's own serialisation, their file formats by Ballista's codec.
//!
//! `top_k_nearest` plans its SQL against the catalog when scanned, which the scheduler does not
//! have. The server plans both queries ([`TopKNearestTable::plan`]) and the codec sends the
//! plans, encoded with this codec (so their managed tables become file lists too); the
//! scheduler's scan makes them the children of a `TopKNearestExec`, which the physical codec
//! ([`ClusterPhysicalCodec`]) sends to the executors.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{TableReference, internal_datafusion_err, not_impl_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::{AsLogicalPlan, LogicalExtensionCodec};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::LogicalPlanNode;
use prost::Message;
use streampulse_engine::{FileListTable, ManagedTable};
use streampulse_udfs::table::top_k_nearest::{Metric, TopKNearestExec, TopKNearestPlanned};

/// The first byte of an encoded table provider or plan node: whose encoding follows.
const BALLISTA: u8 = 0;
const FILE_LIST: u8 = 1;
const TOP_K_NEAREST: u8 = 2;

/// `top_k_nearest` with its queries planned ([`TopKNearestPlanned`]).
#[derive(Clone, PartialEq, prost::Message)]
struct TopKNearestMessage {
    #[prost(uint64, tag = "1")]
    k: u64,
    #[prost(string, tag = "2")]
    metric: String,
    /// A `LogicalPlanNode` each.
    #[prost(bytes = "vec", tag = "3")]
    users: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    items: Vec<u8>,
}

/// A `TopKNearestExec`: its children travel as the node's inputs.
#[derive(Clone, PartialEq, prost::Message)]
struct TopKNearestExecMessage {
    #[prost(uint64, tag = "1")]
    k: u64,
    #[prost(string, tag = "2")]
    metric: String,
    #[prost(bool, tag = "3")]
    projected: bool,
    #[prost(uint32, repeated, tag = "4")]
    projection: Vec<u32>,
}

fn metric(name: &str) -> Result<Metric> {
    Metric::from_name(name).ok_or_else(|| internal_datafusion_err!("top_k_nearest: unknown metric {name} on the wire"))
}

fn decode_error(what: &str, e: prost::DecodeError) -> DataFusionError {
    internal_datafusion_err!("{what} does not decode: {e}")
}

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
            Some((&TOP_K_NEAREST, rest)) => {
                let message = TopKNearestMessage::decode(rest).map_err(|e| decode_error("top_k_nearest", e))?;
                let plan = |bytes: &[u8]| LogicalPlanNode::try_decode(bytes)?.try_into_logical_plan(ctx, self);
                Ok(Arc::new(TopKNearestPlanned {
                    users: plan(&message.users)?,
                    items: plan(&message.items)?,
                    k: message.k as usize,
                    metric: metric(&message.metric)?,
                }))
            }
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
        } else if let Some(top_k) = node.downcast_ref::<TopKNearestPlanned>() {
            let plan = |plan| -> Result<Vec<u8>> {
                let mut bytes = Vec::new();
                LogicalPlanNode::try_from_logical_plan(plan, self)?.try_encode(&mut bytes)?;
                Ok(bytes)
            };
            let message = TopKNearestMessage {
                k: top_k.k as u64,
                metric: top_k.metric.to_string(),
                users: plan(&top_k.users)?,
                items: plan(&top_k.items)?,
            };
            buf.push(TOP_K_NEAREST);
            buf.extend_from_slice(&message.encode_to_vec());
            return Ok(());
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

/// Ballista's physical codec, with `TopKNearestExec`.
#[derive(Debug, Default)]
pub struct ClusterPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for ClusterPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.split_first() {
            Some((&TOP_K_NEAREST, rest)) => {
                let message = TopKNearestExecMessage::decode(rest).map_err(|e| decode_error("TopKNearestExec", e))?;
                let [users, items] = inputs else {
                    return Err(internal_datafusion_err!("TopKNearestExec has two inputs, got {}", inputs.len()));
                };
                let projection =
                    message.projected.then(|| message.projection.iter().map(|&i| i as usize).collect::<Vec<_>>());
                Ok(Arc::new(TopKNearestExec::try_new(
                    Arc::clone(users),
                    Arc::clone(items),
                    message.k as usize,
                    metric(&message.metric)?,
                    projection,
                )?))
            }
            Some((&BALLISTA, rest)) => self.inner.try_decode(rest, inputs, ctx, converter),
            _ => not_impl_err!("a plan node was encoded by another codec"),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(top_k) = node.downcast_ref::<TopKNearestExec>() {
            let message = TopKNearestExecMessage {
                k: top_k.k() as u64,
                metric: top_k.metric().to_string(),
                projected: top_k.projection().is_some(),
                projection: top_k.projection().unwrap_or_default().iter().map(|&i| i as u32).collect(),
            };
            buf.push(TOP_K_NEAREST);
            buf.extend_from_slice(&message.encode_to_vec());
            return Ok(());
        }
        buf.push(BALLISTA);
        self.inner.try_encode(node, buf, converter)
    }
}
