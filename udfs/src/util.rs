//! Helpers shared by the functions: argument coercion to float vectors and scalar handling.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, ListArray};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::ColumnarValue;

/// `List<Float64>`: the type every vector argument is coerced to.
pub(crate) fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

/// Coerce a vector argument (list, large list or fixed-size list of numbers) to `List<Float64>`.
pub(crate) fn coerce_vector(function: &str, position: usize, t: &DataType) -> Result<DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
            if f.data_type().is_numeric() || f.data_type() == &DataType::Null =>
        {
            Ok(float_list())
        }
        DataType::Null => Ok(float_list()),
        other => plan_err!("{function}: argument {position} must be an array of numbers, got {other}"),
    }
}

/// Coerce a numeric argument to `Float64`.
pub(crate) fn coerce_float(function: &str, name: &str, t: &DataType) -> Result<DataType> {
    if t.is_numeric() || t == &DataType::Null {
        Ok(DataType::Float64)
    } else {
        plan_err!("{function}: {name} must be a number, got {t}")
    }
}

/// Coerce an integer argument to `Int64`.
pub(crate) fn coerce_int(function: &str, name: &str, t: &DataType) -> Result<DataType> {
    if t.is_integer() || t == &DataType::Null {
        Ok(DataType::Int64)
    } else {
        plan_err!("{function}: {name} must be an integer, got {t}")
    }
}

/// All arguments as arrays of `number_rows`, and whether they were all scalars.
pub(crate) fn to_arrays(args: &[ColumnarValue], number_rows: usize) -> Result<(Vec<ArrayRef>, bool)> {
    let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let rows = if all_scalar { 1 } else { number_rows };
    let arrays = args.iter().map(|a| a.to_array(rows)).collect::<Result<Vec<_>>>()?;
    Ok((arrays, all_scalar))
}

/// Return an array result, or its single value when every argument was a scalar.
pub(crate) fn finish(array: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar {
        Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&array, 0)?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

pub(crate) fn as_list<'a>(function: &str, a: &'a ArrayRef) -> Result<&'a ListArray> {
    match a.as_any().downcast_ref::<ListArray>() {
        Some(l) => Ok(l),
        None => exec_err!("{function}: expected a list of floats, got {}", a.data_type()),
    }
}

pub(crate) fn as_f64<'a>(function: &str, a: &'a ArrayRef) -> Result<&'a Float64Array> {
    match a.as_any().downcast_ref::<Float64Array>() {
        Some(f) => Ok(f),
        None => exec_err!("{function}: expected Float64, got {}", a.data_type()),
    }
}

/// The values of row `row` of a `List<Float64>`, or `None` when the row is NULL. A vector with
/// NULL elements is an error that names the row.
pub(crate) fn vector<'a>(function: &str, list: &'a ListArray, row: usize) -> Result<Option<&'a [f64]>> {
    if list.is_null(row) {
        return Ok(None);
    }
    let offsets = list.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let values = list.values();
    let Some(floats) = values.as_any().downcast_ref::<Float64Array>() else {
        return exec_err!("{function}: expected a list of floats, got {}", list.data_type());
    };
    if floats.null_count() > 0 && (start..end).any(|i| floats.is_null(i)) {
        return exec_err!("{function}: vector in row {row} contains NULL elements");
    }
    Ok(Some(&floats.values()[start..end]))
}
