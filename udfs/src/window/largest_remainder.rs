//! `largest_remainder(amount, weight) OVER (PARTITION BY pool [ORDER BY ...])`: split an integer
//! amount (cents) over the rows of each partition in proportion to their weights, so that the
//! shares are non-negative integers that sum **exactly** to the amount (Hamilton's method).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, Volatility, WindowUDFImpl};
use datafusion_macros::user_doc;

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Window function: splits `amount` (an integer, e.g. cents; the same on every row of the \
partition) over the partition's rows in proportion to `weight`. Each row gets floor(amount * weight / total); \
the units left over go one each to the rows with the largest remainders, ties to the earlier row in the \
window's ORDER BY (give one for determinism). Shares sum exactly to the amount. NULL weights count as 0; \
if every weight is 0 or NULL the shares are NULL (nothing to split by). Negative weights and differing \
amounts within a partition are errors. A negative amount is split like its absolute value, then negated.",
    syntax_example = "largest_remainder(amount, weight) OVER (PARTITION BY pool ORDER BY key)",
    sql_example = r#"```sql
> SELECT k, largest_remainder(100, w) OVER (ORDER BY k) FROM (VALUES (1, 1), (2, 1), (3, 1)) AS t(k, w);
1 34
2 33
3 33
```"#,
    argument(name = "amount", description = "Integer amount to split; the same on every row of a partition."),
    argument(name = "weight", description = "Non-negative integer or number. Integer weights are split exactly.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LargestRemainder {
    signature: Signature,
}

impl Default for LargestRemainder {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl WindowUDFImpl for LargestRemainder {
    fn name(&self) -> &str {
        "largest_remainder"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [amount, weight] = take_function_args(self.name(), arg_types)?;
        let amount = if amount.is_integer() || amount == &DataType::Null {
            DataType::Int64
        } else {
            return plan_err!("largest_remainder: amount must be an integer (e.g. cents), got {amount}");
        };
        let weight = if weight.is_integer() || weight == &DataType::Null {
            DataType::Int64
        } else if weight.is_numeric() {
            DataType::Float64
        } else {
            return plan_err!("largest_remainder: weight must be a number, got {weight}");
        };
        Ok(vec![amount, weight])
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(LargestRemainderEvaluator::default()))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(field_args.name(), DataType::Int64, true)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

/// Evaluates one window partition. Every share depends on the whole partition, so in bounded
/// (streaming) execution it asks for the whole partition as its range and is called only once
/// the partition is complete; it then splits once and hands out the shares row by row. This
/// lets DataFusion use `BoundedWindowAggExec`, which holds one partition (one pool) at a time,
/// instead of `WindowAggExec`, which buffers its whole input outside the memory pool.
#[derive(Debug, Default)]
struct LargestRemainderEvaluator {
    shares: Option<Int64Array>,
    next: usize,
}

impl PartitionEvaluator for LargestRemainderEvaluator {
    fn supports_bounded_execution(&self) -> bool {
        true
    }

    fn is_causal(&self) -> bool {
        false
    }

    fn get_range(&self, _idx: usize, n_rows: usize) -> Result<std::ops::Range<usize>> {
        Ok(0..n_rows)
    }

    fn evaluate(&mut self, values: &[ArrayRef], range: &std::ops::Range<usize>) -> Result<ScalarValue> {
        if self.shares.as_ref().is_none_or(|s| s.len() != range.end) {
            let sliced: Vec<ArrayRef> = values.iter().map(|v| v.slice(0, range.end)).collect();
            let all = self.evaluate_all(&sliced, range.end)?;
            let Some(shares) = all.as_any().downcast_ref::<Int64Array>() else {
                return exec_err!("largest_remainder: internal error, shares are not Int64");
            };
            self.shares = Some(shares.clone());
            self.next = 0;
        }
        let Some(shares) = self.shares.as_ref() else {
            return exec_err!("largest_remainder: internal error, no shares");
        };
        if self.next >= shares.len() {
            return exec_err!("largest_remainder: asked for row {} of a partition of {}", self.next, shares.len());
        }
        let value = shares.is_valid(self.next).then(|| shares.value(self.next));
        self.next += 1;
        Ok(ScalarValue::Int64(value))
    }

    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let [amounts, weights] = take_function_args("largest_remainder", values)?;
        let Some(amounts) = amounts.as_any().downcast_ref::<Int64Array>() else {
            return exec_err!("largest_remainder: amount must be Int64, got {}", amounts.data_type());
        };
        let mut amount: Option<i64> = None;
        for a in amounts.iter().flatten() {
            match amount {
                Some(prev) if prev != a => {
                    return exec_err!(
                        "largest_remainder: the amount must be the same on every row of a partition (found {prev} and {a})"
                    );
                }
                _ => amount = Some(a),
            }
        }
        let Some(amount) = amount else {
            return Ok(Arc::new(Int64Array::new_null(num_rows)));
        };
        let shares = if let Some(w) = weights.as_any().downcast_ref::<Int64Array>() {
            let w: Vec<i64> = (0..num_rows).map(|i| if w.is_null(i) { 0 } else { w.value(i) }).collect();
            if let Some(bad) = w.iter().find(|x| **x < 0) {
                return exec_err!("largest_remainder: weight must be non-negative, got {bad}");
            }
            split_integer(amount, &w)
        } else if let Some(w) = weights.as_any().downcast_ref::<Float64Array>() {
            let w: Vec<f64> = (0..num_rows).map(|i| if w.is_null(i) { 0.0 } else { w.value(i) }).collect();
            if let Some(bad) = w.iter().find(|x| **x < 0.0 || !x.is_finite()) {
                return exec_err!("largest_remainder: weight must be a non-negative finite number, got {bad}");
            }
            split_float(amount, &w)
        } else {
            return exec_err!("largest_remainder: unsupported weight type {}", weights.data_type());
        };
        Ok(match shares {
            Some(s) => Arc::new(Int64Array::from(s)),
            None => Arc::new(Int64Array::new_null(num_rows)),
        })
    }
}

/// Exact split with integer weights (i128 arithmetic, no rounding anywhere).
pub fn split_integer(amount: i64, weights: &[i64]) -> Option<Vec<i64>> {
    let total: i128 = weights.iter().map(|w| *w as i128).sum();
    if total == 0 {
        return None;
    }
    let (sign, a) = (amount.signum() as i128, (amount as i128).abs());
    let mut shares: Vec<i128> = weights.iter().map(|w| a * *w as i128 / total).collect();
    let remainders: Vec<i128> = weights.iter().map(|w| a * *w as i128 % total).collect();
    let left = a - shares.iter().sum::<i128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&i, &j| remainders[j].cmp(&remainders[i]).then(i.cmp(&j)));
    for &i in order.iter().take(left as usize) {
        shares[i] += 1;
    }
    Some(shares.into_iter().map(|s| (sign * s) as i64).collect())
}

/// Split with real weights: floors of the exact quotas, then the left-over units by largest
/// fractional part. The shares still sum exactly to the amount.
pub fn split_float(amount: i64, weights: &[f64]) -> Option<Vec<i64>> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let (sign, a) = (amount.signum(), amount.unsigned_abs() as i64);
    let quotas: Vec<f64> = weights.iter().map(|w| a as f64 * (w / total)).collect();
    let mut shares: Vec<i64> = quotas.iter().map(|q| q.floor() as i64).collect();
    let fractions: Vec<f64> = quotas.iter().zip(&shares).map(|(q, s)| q - *s as f64).collect();
    let mut left = a - shares.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&i, &j| fractions[j].total_cmp(&fractions[i]).then(i.cmp(&j)));
    // Rounding can leave the floors a unit above or below the amount; fix it deterministically.
    let mut k = 0;
    while left > 0 {
        let i = order[k % order.len()];
        if weights[i] > 0.0 {
            shares[i] += 1;
            left -= 1;
        }
        k += 1;
    }
    let mut k = order.len();
    while left < 0 {
        k = if k == 0 { order.len() } else { k };
        k -= 1;
        let i = order[k];
        if shares[i] > 0 {
            shares[i] -= 1;
            left += 1;
        }
    }
    Some(shares.into_iter().map(|s| sign * s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_split_is_exact_and_deterministic() {
        assert_eq!(split_integer(100, &[1, 1, 1]), Some(vec![34, 33, 33]));
        assert_eq!(split_integer(-100, &[1, 1, 1]), Some(vec![-34, -33, -33]));
        assert_eq!(split_integer(10, &[0, 5, 0]), Some(vec![0, 10, 0]));
        assert_eq!(split_integer(10, &[0, 0]), None);
        assert_eq!(split_integer(7, &[2, 1, 1]), Some(vec![3, 2, 2]));
        let w: Vec<i64> = (1..1000).map(|i| (i * 7919) % 1013).collect();
        for amount in [0, 1, 999, 123_456_789, i64::MAX / 4] {
            let s = split_integer(amount, &w).unwrap();
            assert_eq!(s.iter().map(|x| *x as i128).sum::<i128>(), amount as i128);
            assert!(s.iter().all(|x| *x >= 0));
        }
    }

    #[test]
    fn float_split_sums_exactly() {
        let w: Vec<f64> = (1..500).map(|i| ((i * 37) % 101) as f64 / 7.0).collect();
        for amount in [0, 1, 99, 1_000_003, 5_000_000_000] {
            let s = split_float(amount, &w).unwrap();
            assert_eq!(s.iter().sum::<i64>(), amount);
            assert!(s.iter().all(|x| *x >= 0));
        }
        assert_eq!(split_float(3, &[0.1, 0.1, 0.1]), Some(vec![1, 1, 1]));
        assert_eq!(split_float(5, &[0.0]), None);
    }
}
