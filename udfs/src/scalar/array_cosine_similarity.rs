//! Vector similarity: `array_cosine_similarity` (DuckDB's name), plus `array_inner_product` as
//! an alias of DataFusion's own `inner_product`. Euclidean distance is DataFusion's
//! `array_distance`, already the DuckDB name.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_macros::user_doc;

use crate::util::{as_list, coerce_vector, finish, to_arrays, vector};

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Cosine similarity of two vectors of equal length: dot(a, b) / (|a| |b|), in [-1, 1]. \
NULL if either vector is NULL or has zero length (norm 0). Vectors of different lengths, or with NULL elements, are an error.",
    syntax_example = "array_cosine_similarity(a, b)",
    sql_example = r#"```sql
> SELECT array_cosine_similarity([1.0, 0.0], [1.0, 1.0]);
0.7071067811865475
```"#,
    argument(name = "a", description = "Array of numbers (list or fixed-size list of float or integer)."),
    argument(name = "b", description = "Array of numbers of the same length.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ArrayCosineSimilarity {
    signature: Signature,
}

impl Default for ArrayCosineSimilarity {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ArrayCosineSimilarity {
    fn name(&self) -> &str {
        "array_cosine_similarity"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [a, b] = take_function_args(self.name(), arg_types)?;
        Ok(vec![coerce_vector(self.name(), 1, a)?, coerce_vector(self.name(), 2, b)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let [a, b] = take_function_args(self.name(), &arrays)?;
        let (a, b) = (as_list(self.name(), a)?, as_list(self.name(), b)?);
        let mut out = Float64Builder::with_capacity(a.len());
        for row in 0..a.len() {
            match (vector(self.name(), a, row)?, vector(self.name(), b, row)?) {
                (Some(x), Some(y)) => out.append_option(cosine(self.name(), row, x, y)?),
                _ => out.append_null(),
            }
        }
        finish(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

/// Cosine similarity of one pair; `None` when a norm is zero.
pub fn cosine(function: &str, row: usize, x: &[f64], y: &[f64]) -> Result<Option<f64>> {
    if x.len() != y.len() {
        return exec_err!("{function}: vectors of different lengths ({} and {}) in row {row}", x.len(), y.len());
    }
    let (mut dot, mut nx, mut ny) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        dot += a * b;
        nx += a * a;
        ny += b * b;
    }
    if nx == 0.0 || ny == 0.0 {
        return Ok(None);
    }
    Ok(Some(dot / (nx.sqrt() * ny.sqrt())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_values_and_errors() {
        assert_eq!(cosine("f", 0, &[1.0, 0.0], &[2.0, 0.0]).unwrap(), Some(1.0));
        assert_eq!(cosine("f", 0, &[1.0, 0.0], &[0.0, 3.0]).unwrap(), Some(0.0));
        assert!(
            (cosine("f", 0, &[1.0, 0.0], &[1.0, 1.0]).unwrap().unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs()
                < 1e-15
        );
        assert_eq!(cosine("f", 0, &[0.0, 0.0], &[1.0, 1.0]).unwrap(), None);
        let err = cosine("f", 4, &[1.0], &[1.0, 2.0]).unwrap_err().to_string();
        assert!(err.contains("different lengths (1 and 2) in row 4"), "{err}");
    }
}
