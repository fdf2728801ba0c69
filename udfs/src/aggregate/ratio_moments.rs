//! `ratio_moments(numerator, denominator [, pre_numerator, pre_denominator])`: what the delta
//! method and CUPED need of one group of units (users), in one pass: the count, the means and
//! the sample covariances of the four per-unit values. `ratio_test` compares two of them.
//!
//! Accumulated with Welford's update and merged with Chan's pairwise formula (co-moments about
//! the mean, never raw sums of squares, so ms-played sums of 1e9 per user lose no precision).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature, Volatility};
use datafusion_macros::user_doc;

use crate::util::{as_f64, coerce_float};

/// The per-unit values: numerator, denominator, and their pre-period counterparts.
const VALUES: usize = 4;
/// The pairs (j, k), j <= k, of the co-moment matrix, in storage order.
const PAIRS: [(usize, usize); 10] = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)];
/// Names of the four values as they appear in the result's field names.
const NAMES: [&str; VALUES] = ["num", "den", "pre_num", "pre_den"];

/// Index of the pair (j, k) in [`PAIRS`].
fn pair(j: usize, k: usize) -> usize {
    let (j, k) = if j <= k { (j, k) } else { (k, j) };
    PAIRS.iter().position(|p| *p == (j, k)).unwrap_or(0)
}

/// Field name of the sample covariance of values j and k (`num_var`, `num_den_cov`, ...).
fn cov_name(j: usize, k: usize) -> String {
    if j == k { format!("{}_var", NAMES[j]) } else { format!("{}_{}_cov", NAMES[j], NAMES[k]) }
}

/// The fields of `ratio_moments`'s result, in order: `n`, the four means, the ten covariances.
pub fn moments_fields() -> Fields {
    let mut names = vec!["n".to_string()];
    names.extend(NAMES.iter().map(|n| format!("{n}_mean")));
    names.extend(PAIRS.iter().map(|(j, k)| cov_name(*j, *k)));
    Fields::from(names.into_iter().map(|n| Field::new(n, DataType::Float64, true)).collect::<Vec<_>>())
}

/// Count, means and co-moments (sums of products of deviations from the mean) of the four values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: [f64; VALUES],
    /// Σ (v_j − mean_j)(v_k − mean_k) for each pair of [`PAIRS`].
    pub comoment: [f64; 10],
}

impl Moments {
    /// Adds one unit (Welford).
    pub fn push(&mut self, v: [f64; VALUES]) {
        self.n += 1.0;
        let before: [f64; VALUES] = std::array::from_fn(|j| v[j] - self.mean[j]);
        for (mean, d) in self.mean.iter_mut().zip(before) {
            *mean += d / self.n;
        }
        for (p, (j, k)) in PAIRS.iter().enumerate() {
            self.comoment[p] += before[*j] * (v[*k] - self.mean[*k]);
        }
    }

    /// Adds another group's moments (Chan et al.).
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta: [f64; VALUES] = std::array::from_fn(|j| other.mean[j] - self.mean[j]);
        for (p, (j, k)) in PAIRS.iter().enumerate() {
            self.comoment[p] += other.comoment[p] + delta[*j] * delta[*k] * self.n * other.n / n;
        }
        for (mean, d) in self.mean.iter_mut().zip(delta) {
            *mean += d * other.n / n;
        }
        self.n = n;
    }

    /// Sample covariance (ddof 1) of values j and k.
    pub fn cov(&self, j: usize, k: usize) -> f64 {
        self.comoment[pair(j, k)] / (self.n - 1.0)
    }

    /// Rebuilds moments from a row of `ratio_moments`'s result; `None` when the row is NULL or
    /// has fewer than two units (no covariances). Pre-period fields that are NULL count as 0.
    pub fn from_struct(function: &str, s: &StructArray, row: usize) -> Result<Option<Moments>> {
        if s.is_null(row) {
            return Ok(None);
        }
        let field = |name: &str| -> Result<Option<f64>> {
            let Some(column) = s.column_by_name(name) else {
                return exec_err!("{function}: argument is not a ratio_moments(...) result (no field {name})");
            };
            let column = as_f64(function, column)?;
            Ok((!column.is_null(row)).then(|| column.value(row)))
        };
        let Some(n) = field("n")? else { return Ok(None) };
        if n < 2.0 {
            return Ok(None);
        }
        let mut m = Moments { n, ..Moments::default() };
        for (j, name) in NAMES.iter().enumerate() {
            match field(&format!("{name}_mean"))? {
                Some(v) => m.mean[j] = v,
                None if j < 2 => return Ok(None),
                None => {}
            }
        }
        for (p, (j, k)) in PAIRS.iter().enumerate() {
            match field(&cov_name(*j, *k))? {
                Some(v) => m.comoment[p] = v * (n - 1.0),
                None if *k < 2 => return Ok(None),
                None => {}
            }
        }
        Ok(Some(m))
    }
}

/// Checks that `t` is the struct `ratio_moments` returns.
pub fn check_moments_type(function: &str, position: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Struct(fields) if moments_fields().iter().all(|f| fields.find(f.name()).is_some()) => Ok(t.clone()),
        DataType::Null => Ok(DataType::Struct(moments_fields())),
        other => plan_err!("{function}: {position} must be the result of ratio_moments(...), got {other}"),
    }
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Aggregate: what the delta method and CUPED need of a group of units (one row per user), for \
`ratio_test`. Returns a struct {n, num_mean, den_mean, pre_num_mean, pre_den_mean, and the sample covariances \
(ddof 1) num_var, num_den_cov, …, pre_den_var}. The metric is the ratio of sums, sum(numerator) / \
sum(denominator) (skip rate: skips / plays per user); a per-user mean has denominator 1. The optional \
pre-period values are the same sums before the experiment (0 for a user with no history), used by CUPED; \
without them the pre-period fields are NULL. Rows with a NULL argument are skipped.",
    syntax_example = "ratio_moments(numerator, denominator [, pre_numerator, pre_denominator])",
    sql_example = r#"```sql
> SELECT variant, ratio_moments(skips, plays, pre_skips, pre_plays) FROM per_user GROUP BY variant;
```"#,
    argument(name = "numerator", description = "Per-unit numerator, e.g. the user's skips."),
    argument(name = "denominator", description = "Per-unit denominator, e.g. the user's plays; 1 for a mean."),
    argument(name = "pre_numerator", description = "The numerator over the pre-experiment period."),
    argument(name = "pre_denominator", description = "The denominator over the pre-experiment period.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RatioMoments {
    signature: Signature,
}

impl Default for RatioMoments {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for RatioMoments {
    fn name(&self) -> &str {
        "ratio_moments"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 && arg_types.len() != 4 {
            return plan_err!(
                "ratio_moments takes (numerator, denominator) or (numerator, denominator, pre_numerator, \
                 pre_denominator), got {} arguments",
                arg_types.len()
            );
        }
        arg_types.iter().zip(NAMES).map(|(t, name)| coerce_float(self.name(), name, t)).collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(moments_fields()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MomentsAccumulator { moments: Moments::default(), with_pre: args.exprs.len() == 4 }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let mut names = vec!["n".to_string()];
        names.extend(NAMES.iter().map(|n| format!("{n}_mean")));
        names.extend(PAIRS.iter().map(|(j, k)| format!("{}_{}_comoment", NAMES[*j], NAMES[*k])));
        Ok(names
            .into_iter()
            .map(|n| Arc::new(Field::new(format!("{}[{n}]", args.name), DataType::Float64, true)))
            .collect())
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

#[derive(Debug)]
struct MomentsAccumulator {
    moments: Moments,
    with_pre: bool,
}

impl Accumulator for MomentsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let columns: Vec<&Float64Array> = values.iter().map(|a| as_f64("ratio_moments", a)).collect::<Result<_>>()?;
        let rows = columns.first().map_or(0, |c| c.len());
        for row in 0..rows {
            if columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            let mut v = [0.0; VALUES];
            for (slot, c) in v.iter_mut().zip(&columns) {
                *slot = c.value(row);
            }
            if v.iter().any(|x| !x.is_finite()) {
                return exec_err!("ratio_moments: values must be finite, got {v:?}");
            }
            self.moments.push(v);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        if states.len() != 1 + VALUES + PAIRS.len() {
            return exec_err!(
                "ratio_moments: expected {} state columns, got {}",
                1 + VALUES + PAIRS.len(),
                states.len()
            );
        }
        let columns: Vec<&Float64Array> = states.iter().map(|a| as_f64("ratio_moments", a)).collect::<Result<_>>()?;
        for row in 0..columns[0].len() {
            if columns[0].is_null(row) {
                continue;
            }
            let other = Moments {
                n: columns[0].value(row),
                mean: std::array::from_fn(|j| columns[1 + j].value(row)),
                comoment: std::array::from_fn(|p| columns[1 + VALUES + p].value(row)),
            };
            self.moments.merge(&other);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let m = &self.moments;
        let mut out = vec![ScalarValue::Float64(Some(m.n))];
        out.extend(m.mean.iter().map(|v| ScalarValue::Float64(Some(*v))));
        out.extend(m.comoment.iter().map(|v| ScalarValue::Float64(Some(*v))));
        Ok(out)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let m = &self.moments;
        let known = |j: usize| j < 2 || self.with_pre;
        let mut values: Vec<Option<f64>> = vec![Some(m.n)];
        values.extend((0..VALUES).map(|j| (m.n > 0.0 && known(j)).then_some(m.mean[j])));
        values.extend(PAIRS.iter().map(|(j, k)| (m.n > 1.0 && known(*j) && known(*k)).then(|| m.cov(*j, *k))));
        let arrays: Vec<ArrayRef> =
            values.into_iter().map(|v| Arc::new(Float64Array::from(vec![v])) as ArrayRef).collect();
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(moments_fields(), arrays, None)?)))
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> [f64; VALUES] {
        let x = ((i * 7919) % 101) as f64;
        [x * 3.0 + 1e6, x + (i % 5) as f64, ((i * 31) % 17) as f64, (i % 3) as f64]
    }

    #[test]
    fn merge_equals_one_pass_and_two_pass() {
        let rows: Vec<_> = (0..1000).map(sample).collect();
        let mut whole = Moments::default();
        rows.iter().for_each(|v| whole.push(*v));
        let (mut a, mut b) = (Moments::default(), Moments::default());
        rows[..313].iter().for_each(|v| a.push(*v));
        rows[313..].iter().for_each(|v| b.push(*v));
        a.merge(&b);
        // two-pass reference
        let n = rows.len() as f64;
        let mean: [f64; VALUES] = std::array::from_fn(|j| rows.iter().map(|v| v[j]).sum::<f64>() / n);
        for (j, k) in PAIRS {
            let c = rows.iter().map(|v| (v[j] - mean[j]) * (v[k] - mean[k])).sum::<f64>() / (n - 1.0);
            for m in [&whole, &a] {
                assert!((m.cov(j, k) - c).abs() <= 1e-10 * c.abs().max(1.0), "({j},{k}) {} vs {c}", m.cov(j, k));
            }
        }
        for ((w, m), expected) in whole.mean.iter().zip(&a.mean).zip(mean) {
            assert!((w - expected).abs() <= 1e-12 * expected.abs().max(1.0));
            assert!((m - expected).abs() <= 1e-12 * expected.abs().max(1.0));
        }
        let mut empty = Moments::default();
        empty.merge(&whole);
        assert_eq!(empty, whole);
    }
}
