//! The types a Delta table can store, and plans cast onto them.
//!
//! Delta has no unsigned, view, large or nanosecond types: a column of such a type is stored as
//! the closest type that holds every value.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};

use crate::error::Result;

/// The closest type a Delta table can store.
pub fn delta_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Date64 => DataType::Date32,
        DataType::Null => DataType::Utf8,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Dictionary(_, v) => delta_type(v),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            DataType::List(Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type()))))
        }
        DataType::FixedSizeList(f, _) => {
            DataType::List(Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type()))))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())))).collect(),
        ),
        other => other.clone(),
    }
}

/// `schema` with every column nullable and of a Delta-storable type.
pub fn delta_compatible_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())).with_nullable(true)))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Cast a plan's output columns to Delta-compatible types where needed.
pub fn delta_compatible_plan(plan: LogicalPlan) -> Result<LogicalPlan> {
    let target = delta_compatible_schema(&Arc::new(plan.schema().as_arrow().clone()));
    cast_plan_to(plan, &target)
}

/// Project `plan`'s columns, by position, onto `target`'s names and types (values that do not
/// fit fail the write with the cast's message); the plan itself when nothing changes.
pub fn cast_plan_to(plan: LogicalPlan, target: &Schema) -> Result<LogicalPlan> {
    let same = |field: &Field, to: &Field| field.data_type() == to.data_type() && field.name() == to.name();
    if plan.schema().fields().iter().zip(target.fields()).all(|(f, to)| same(f, to)) {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .zip(target.fields())
        .map(|((qualifier, field), to)| {
            let column = Expr::Column(Column::from((qualifier, field)));
            if same(field, to) {
                column
            } else if field.data_type() == to.data_type() {
                column.alias(to.name())
            } else {
                cast(column, to.data_type().clone()).alias(to.name())
            }
        })
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}
