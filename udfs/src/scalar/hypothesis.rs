//! What the experiment tests share: their result struct (`z`/`t`, `df`, `p_value`, `diff`,
//! `lift`, `ci_low`, `ci_high`; pick fields with `get_field(...)` or `(...)['p_value']`), the
//! statistics themselves (distributions from `statrs`) and argument handling.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use crate::util::{as_f64, coerce_float, finish, to_arrays};

/// Result of a test, before it becomes a struct row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TestResult {
    pub statistic: f64,
    pub df: f64,
    pub p_value: f64,
    pub diff: f64,
    pub lift: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

pub(crate) fn result_fields(statistic: &str) -> Fields {
    Fields::from(
        [statistic, "df", "p_value", "diff", "lift", "ci_low", "ci_high"]
            .into_iter()
            .map(|n| Field::new(n, DataType::Float64, true))
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn check_confidence(c: f64) -> Result<f64> {
    if c > 0.0 && c < 1.0 { Ok(c) } else { exec_err!("confidence must be in (0, 1), got {c}") }
}

/// Pooled two-proportion z-test of treatment vs control successes, with a Wald interval for
/// the difference. `None` when undefined (no trials, or no variance).
pub fn two_proportion_z(x_t: f64, n_t: f64, x_c: f64, n_c: f64, confidence: f64) -> Result<Option<TestResult>> {
    if n_t <= 0.0 || n_c <= 0.0 {
        return Ok(None);
    }
    if x_t < 0.0 || x_c < 0.0 || x_t > n_t || x_c > n_c {
        return exec_err!("two_proportion_z_test: successes must be between 0 and the number of trials");
    }
    let (p_t, p_c) = (x_t / n_t, x_c / n_c);
    let pooled = (x_t + x_c) / (n_t + n_c);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n_t + 1.0 / n_c)).sqrt();
    if se_pooled == 0.0 {
        return Ok(None);
    }
    let normal = Normal::standard();
    let diff = p_t - p_c;
    let z = diff / se_pooled;
    let p_value = 2.0 * normal.sf(z.abs());
    let se = (p_t * (1.0 - p_t) / n_t + p_c * (1.0 - p_c) / n_c).sqrt();
    let crit = normal.inverse_cdf(0.5 + confidence / 2.0);
    Ok(Some(TestResult {
        statistic: z,
        df: f64::INFINITY,
        p_value,
        diff,
        lift: if p_c == 0.0 { f64::NAN } else { diff / p_c },
        ci_low: diff - crit * se,
        ci_high: diff + crit * se,
    }))
}

/// Welch's unequal-variance t-test from summary statistics (sample variances, ddof = 1).
pub fn welch_t(
    m_t: f64,
    v_t: f64,
    n_t: f64,
    m_c: f64,
    v_c: f64,
    n_c: f64,
    confidence: f64,
) -> Result<Option<TestResult>> {
    if n_t < 2.0 || n_c < 2.0 {
        return Ok(None);
    }
    if v_t < 0.0 || v_c < 0.0 {
        return exec_err!("welch_t_test: variances must be non-negative");
    }
    t_from_variances(m_t - m_c, v_t / n_t, n_t, v_c / n_c, n_c, m_c, confidence)
}

/// Welch-style test of a difference of two independent estimates: `diff` with the variance of
/// each group's estimate (`var_t`, `var_c`, from `n_t` and `n_c` units), the Welch–Satterthwaite
/// degrees of freedom, and Student's t for the p-value and interval. `baseline` is the control's
/// value, for the lift. `None` when the variance is 0.
pub fn t_from_variances(
    diff: f64,
    var_t: f64,
    n_t: f64,
    var_c: f64,
    n_c: f64,
    baseline: f64,
    confidence: f64,
) -> Result<Option<TestResult>> {
    let (a, b) = (var_t, var_c);
    let se = (a + b).sqrt();
    if se == 0.0 || !se.is_finite() {
        return Ok(None);
    }
    let t = diff / se;
    let df = (a + b).powi(2) / (a * a / (n_t - 1.0) + b * b / (n_c - 1.0));
    let dist =
        StudentsT::new(0.0, 1.0, df).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    let p_value = 2.0 * dist.sf(t.abs());
    let crit = dist.inverse_cdf(0.5 + confidence / 2.0);
    Ok(Some(TestResult {
        statistic: t,
        df,
        p_value,
        diff,
        lift: if baseline == 0.0 { f64::NAN } else { diff / baseline },
        ci_low: diff - crit * se,
        ci_high: diff + crit * se,
    }))
}

/// Shared body of the two test functions: `inputs` Float64 columns, optional confidence last.
pub(crate) fn run_test(
    name: &str,
    statistic: &str,
    inputs: usize,
    args: ScalarFunctionArgs,
    test: impl Fn(&[f64], f64) -> Result<Option<TestResult>>,
) -> Result<ColumnarValue> {
    let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
    let columns: Vec<&Float64Array> = arrays.iter().map(|a| as_f64(name, a)).collect::<Result<_>>()?;
    let rows = columns.first().map_or(0, |c| c.len());
    let mut builders: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::with_capacity(rows)).collect();
    let mut row_values = vec![0.0; inputs];
    for row in 0..rows {
        let any_null = columns[..inputs].iter().any(|c| c.is_null(row));
        let confidence = match columns.get(inputs) {
            Some(c) if !c.is_null(row) => check_confidence(c.value(row))?,
            _ => 0.95,
        };
        let result = if any_null {
            None
        } else {
            for (k, c) in columns[..inputs].iter().enumerate() {
                row_values[k] = c.value(row);
            }
            test(&row_values, confidence)?
        };
        match result {
            Some(r) => {
                for (b, v) in
                    builders.iter_mut().zip([r.statistic, r.df, r.p_value, r.diff, r.lift, r.ci_low, r.ci_high])
                {
                    b.append_option(v.is_finite().then_some(v));
                }
            }
            None => builders.iter_mut().for_each(|b| b.append_null()),
        }
    }
    let arrays: Vec<ArrayRef> = builders.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
    let out = StructArray::try_new(result_fields(statistic), arrays, None)?;
    finish(Arc::new(out), all_scalar)
}

pub(crate) fn coerce_all_float(name: &str, arg_types: &[DataType], inputs: usize) -> Result<Vec<DataType>> {
    if arg_types.len() != inputs && arg_types.len() != inputs + 1 {
        return plan_err!("{name} takes {inputs} arguments and an optional confidence level, got {}", arg_types.len());
    }
    arg_types.iter().enumerate().map(|(i, t)| coerce_float(name, &format!("argument {}", i + 1), t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_test_textbook_values() {
        let r = two_proportion_z(120.0, 1000.0, 100.0, 1000.0, 0.95).unwrap().unwrap();
        // pooled p = 0.11, se = sqrt(0.11*0.89*0.002) = 0.013993; z = 0.02 / se
        assert!((r.statistic - 1.429_300_85).abs() < 1e-8, "{r:?}");
        assert!(two_proportion_z(0.0, 10.0, 0.0, 10.0, 0.95).unwrap().is_none());
    }

    #[test]
    fn welch_degenerate_cases() {
        assert!(welch_t(1.0, 0.0, 5.0, 1.0, 0.0, 5.0, 0.95).unwrap().is_none());
        assert!(welch_t(1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 0.95).unwrap().is_none());
        let r = welch_t(10.0, 4.0, 50.0, 9.0, 9.0, 60.0, 0.95).unwrap().unwrap();
        assert!(r.p_value > 0.0 && r.p_value < 1.0 && r.ci_low < r.diff && r.diff < r.ci_high);
    }
}
