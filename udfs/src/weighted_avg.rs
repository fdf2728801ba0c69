//! `weighted_avg_vector(vector, weight)`: the element-wise weighted mean of vectors, e.g. a
//! user's taste vector from the songs they played. Defines `state_fields` and `merge_batch`
//! (weighted sum + total weight), so it runs in partial/final plans and on Ballista.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature, Volatility};
use datafusion_macros::user_doc;

use crate::util::{as_f64, as_list, coerce_float, coerce_vector, float_list, vector};

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Element-wise weighted average of vectors: sum(weight * vector) / sum(weight). \
Rows with a NULL vector or a NULL or zero weight are skipped; NULL when no row has weight. \
Negative weights, vectors of different lengths and vectors with NULL elements are errors.",
    syntax_example = "weighted_avg_vector(vector, weight)",
    sql_example = r#"```sql
> SELECT weighted_avg_vector(v, w) FROM (VALUES ([1.0, 0.0], 1.0), ([0.0, 1.0], 3.0)) AS t(v, w);
[0.25, 0.75]
```"#,
    argument(name = "vector", description = "Array of numbers."),
    argument(name = "weight", description = "Non-negative number.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WeightedAvgVector {
    signature: Signature,
}

impl Default for WeightedAvgVector {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for WeightedAvgVector {
    fn name(&self) -> &str {
        "weighted_avg_vector"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [v, w] = take_function_args(self.name(), arg_types)?;
        Ok(vec![coerce_vector(self.name(), 1, v)?, coerce_float(self.name(), "weight", w)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(float_list())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(WeightedAvgAccumulator::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(format!("{}[weighted_sum]", args.name), float_list(), true)),
            Arc::new(Field::new(format!("{}[weight]", args.name), DataType::Float64, true)),
        ])
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

/// Weighted sum of vectors and the sum of weights.
#[derive(Debug, Default)]
pub struct WeightedAvgAccumulator {
    sum: Option<Vec<f64>>,
    weight: f64,
}

impl WeightedAvgAccumulator {
    fn add(&mut self, v: &[f64], w: f64) -> Result<()> {
        match &mut self.sum {
            None => self.sum = Some(v.iter().map(|x| x * w).collect()),
            Some(sum) if sum.len() != v.len() => {
                return exec_err!(
                    "weighted_avg_vector: vectors of different lengths ({} and {}) in one group",
                    sum.len(),
                    v.len()
                );
            }
            Some(sum) => sum.iter_mut().zip(v).for_each(|(s, x)| *s += x * w),
        }
        self.weight += w;
        Ok(())
    }
}

impl Accumulator for WeightedAvgAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [vectors, weights] = take_function_args("weighted_avg_vector", values)?;
        let (vectors, weights) = (as_list("weighted_avg_vector", vectors)?, as_f64("weighted_avg_vector", weights)?);
        for row in 0..vectors.len() {
            if weights.is_null(row) {
                continue;
            }
            let w = weights.value(row);
            if w < 0.0 || w.is_nan() {
                return exec_err!("weighted_avg_vector: weight must be non-negative, got {w}");
            }
            if w == 0.0 {
                continue;
            }
            if let Some(v) = vector("weighted_avg_vector", vectors, row)? {
                self.add(v, w)?;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [sums, weights] = take_function_args("weighted_avg_vector", states)?;
        let (sums, weights) = (as_list("weighted_avg_vector", sums)?, as_f64("weighted_avg_vector", weights)?);
        for row in 0..sums.len() {
            if let Some(sum) = vector("weighted_avg_vector", sums, row)? {
                let w = if weights.is_null(row) { 0.0 } else { weights.value(row) };
                // `sum` is already weighted: add it as is.
                let weight_before = self.weight;
                self.add(sum, 1.0)?;
                self.weight = weight_before + w;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let sum = match &self.sum {
            Some(s) => ScalarValue::List(ScalarValue::new_list_nullable(
                &s.iter().map(|x| ScalarValue::Float64(Some(*x))).collect::<Vec<_>>(),
                &DataType::Float64,
            )),
            None => ScalarValue::try_from(float_list())?,
        };
        Ok(vec![sum, ScalarValue::Float64(Some(self.weight))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match &self.sum {
            Some(s) if self.weight > 0.0 => Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                &s.iter().map(|x| ScalarValue::Float64(Some(x / self.weight))).collect::<Vec<_>>(),
                &DataType::Float64,
            ))),
            _ => ScalarValue::try_from(float_list()),
        }
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sum.as_ref().map_or(0, |s| s.capacity() * size_of::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_partial_states_equals_one_pass() {
        let mut whole = WeightedAvgAccumulator::default();
        whole.add(&[1.0, 0.0], 1.0).unwrap();
        whole.add(&[0.0, 1.0], 3.0).unwrap();
        let mut a = WeightedAvgAccumulator::default();
        a.add(&[1.0, 0.0], 1.0).unwrap();
        let mut b = WeightedAvgAccumulator::default();
        b.add(&[0.0, 1.0], 3.0).unwrap();
        let state_b: Vec<ArrayRef> = b.state().unwrap().iter().map(|s| s.to_array().unwrap()).collect();
        a.merge_batch(&state_b).unwrap();
        assert_eq!(a.evaluate().unwrap(), whole.evaluate().unwrap());
        assert_eq!(a.weight, 4.0);
        let mut empty = WeightedAvgAccumulator::default();
        assert!(empty.evaluate().unwrap().is_null());
        let err = whole.add(&[1.0], 1.0).unwrap_err().to_string();
        assert!(err.contains("different lengths (2 and 1)"), "{err}");
    }
}
