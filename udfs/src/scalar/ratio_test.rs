//! `ratio_test(treatment, control [, cuped [, confidence]])`: compares a ratio-of-sums metric
//! (skips / plays, ms / plays, or a per-user mean) between two groups of randomised units, with
//! the unit (the user) as the independent observation: the delta method for the variance of
//! each ratio, optionally CUPED with the pre-period ratio as the covariate, Welch–Satterthwaite
//! degrees of freedom and Student's t.
//!
//! The delta method linearises the ratio R = x̄ / ȳ around the group's means: per unit,
//! L = (x − R·y) / ȳ, and Var(R) ≈ var(L) / n (Deng, Knoblich & Lu, "Applying the delta method
//! in metric analytics", KDD 2018). CUPED (Deng et al., WSDM 2013) subtracts θ times the
//! pre-period ratio's difference, with θ = the pooled within-group regression slope of L on the
//! pre-period's L': the same estimate as least squares of the metric on the variant and the
//! covariate. Both come from the moments `ratio_moments` accumulates.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Float64Builder, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_macros::user_doc;

use super::hypothesis::{TestResult, check_confidence, t_from_variances};
use crate::aggregate::ratio_moments::{Moments, check_moments_type};
use crate::util::{coerce_float, finish, to_arrays};

/// A ratio test's result: the test, and CUPED's slope and variance reduction when applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioResult {
    pub test: TestResult,
    pub theta: Option<f64>,
    pub variance_reduction: Option<f64>,
}

/// One group's ratio linearised: R, var(L), and the pre-period's R', var(L'), cov(L, L').
struct Linearised {
    n: f64,
    ratio: f64,
    var: f64,
    pre: Option<(f64, f64, f64)>,
}

fn linearise(m: &Moments) -> Option<Linearised> {
    let (mx, my) = (m.mean[0], m.mean[1]);
    if my == 0.0 {
        return None;
    }
    let r = mx / my;
    let var = (m.cov(0, 0) - 2.0 * r * m.cov(0, 1) + r * r * m.cov(1, 1)) / (my * my);
    let (px, py) = (m.mean[2], m.mean[3]);
    let pre = (py != 0.0).then(|| {
        let rp = px / py;
        let var_pre = (m.cov(2, 2) - 2.0 * rp * m.cov(2, 3) + rp * rp * m.cov(3, 3)) / (py * py);
        let cov = (m.cov(0, 2) - rp * m.cov(0, 3) - r * m.cov(1, 2) + r * rp * m.cov(1, 3)) / (my * py);
        (rp, var_pre, cov)
    });
    Some(Linearised { n: m.n, ratio: r, var: var.max(0.0), pre })
}

/// The delta-method test of treatment's ratio against control's, CUPED-adjusted when `cuped`
/// and both groups have a pre-period with variance. `None` when undefined (a denominator mean
/// of 0, or no variance).
pub fn ratio_delta_test(t: &Moments, c: &Moments, cuped: bool, confidence: f64) -> Result<Option<RatioResult>> {
    if t.n < 2.0 || c.n < 2.0 {
        return Ok(None);
    }
    let (Some(lt), Some(lc)) = (linearise(t), linearise(c)) else { return Ok(None) };
    let raw = lt.var / lt.n + lc.var / lc.n;
    let theta = match (cuped, lt.pre, lc.pre) {
        (true, Some((_, vt, ct)), Some((_, vc, cc))) => {
            let denominator = (lt.n - 1.0) * vt + (lc.n - 1.0) * vc;
            (denominator > 0.0).then(|| ((lt.n - 1.0) * ct + (lc.n - 1.0) * cc) / denominator)
        }
        _ => None,
    };
    let mut diff = lt.ratio - lc.ratio;
    let (mut var_t, mut var_c) = (lt.var, lc.var);
    if let (Some(theta), Some((rt, vt, ct)), Some((rc, vc, cc))) = (theta, lt.pre, lc.pre) {
        diff -= theta * (rt - rc);
        var_t = (var_t - 2.0 * theta * ct + theta * theta * vt).max(0.0);
        var_c = (var_c - 2.0 * theta * cc + theta * theta * vc).max(0.0);
    }
    let adjusted = var_t / lt.n + var_c / lc.n;
    let Some(test) = t_from_variances(diff, var_t / lt.n, lt.n, var_c / lc.n, lc.n, lc.ratio, confidence)? else {
        return Ok(None);
    };
    let variance_reduction = theta.and_then(|_| (raw > 0.0).then(|| 1.0 - adjusted / raw));
    Ok(Some(RatioResult { test, theta, variance_reduction }))
}

fn result_fields() -> Fields {
    Fields::from(
        ["t", "df", "p_value", "diff", "lift", "ci_low", "ci_high", "theta", "variance_reduction"]
            .into_iter()
            .map(|n| Field::new(n, DataType::Float64, true))
            .collect::<Vec<_>>(),
    )
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Delta-method test of a ratio-of-sums metric between two groups of randomised units (users), \
from two `ratio_moments` results: treatment's ratio sum(num)/sum(den) against control's, with the unit as the \
observation (the variance of each ratio by the delta method, Welch–Satterthwaite degrees of freedom, Student's \
t). With `cuped` true and pre-period moments, applies CUPED: subtracts theta times the difference of the \
pre-period ratios, theta being the pooled within-group slope of the linearised metric on the linearised \
pre-period metric (what least squares of the metric on variant and covariate gives). Returns a struct \
{t, df, p_value (two-sided), diff = R_t - R_c (adjusted under CUPED), lift = diff / R_c, ci_low, ci_high, theta, \
variance_reduction = 1 - adjusted variance / unadjusted variance}; theta and variance_reduction are NULL when \
CUPED was not applied (not asked, or no pre-period variance). NULL when a group has fewer than 2 units, a \
denominator mean of 0, or no variance. For a per-user mean (denominator 1) without CUPED it equals Welch's \
t-test.",
    syntax_example = "ratio_test(treatment, control [, cuped [, confidence]])",
    sql_example = r#"```sql
> SELECT ratio_test(t.m, c.m, true)['p_value'] FROM t_moments t, c_moments c;
```"#,
    argument(name = "treatment", description = "ratio_moments(...) of the treatment group."),
    argument(name = "control", description = "ratio_moments(...) of the control group."),
    argument(name = "cuped", description = "Apply CUPED with the pre-period values; default false."),
    argument(name = "confidence", description = "Confidence level of the interval, default 0.95.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RatioTest {
    signature: Signature,
}

impl Default for RatioTest {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for RatioTest {
    fn name(&self) -> &str {
        "ratio_test"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=4).contains(&arg_types.len()) {
            return plan_err!(
                "ratio_test takes (treatment, control [, cuped [, confidence]]), got {} arguments",
                arg_types.len()
            );
        }
        let mut out = vec![
            check_moments_type(self.name(), "treatment", &arg_types[0])?,
            check_moments_type(self.name(), "control", &arg_types[1])?,
        ];
        if let Some(t) = arg_types.get(2) {
            match t {
                DataType::Boolean | DataType::Null => out.push(DataType::Boolean),
                other => return plan_err!("ratio_test: cuped must be a boolean, got {other}"),
            }
        }
        if let Some(t) = arg_types.get(3) {
            out.push(coerce_float(self.name(), "confidence", t)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let name = self.name();
        // coerce_types turned an untyped NULL into the moments struct, so every argument is one
        let structs = |a: &ArrayRef| -> Result<StructArray> {
            match a.as_any().downcast_ref::<StructArray>() {
                Some(s) => Ok(s.clone()),
                None => exec_err!("{name}: expected a ratio_moments struct, got {}", a.data_type()),
            }
        };
        let (treatment, control) = (structs(&arrays[0])?, structs(&arrays[1])?);
        let cuped = arrays.get(2).map(|a| a.as_any().downcast_ref::<BooleanArray>());
        let confidence = arrays.get(3).map(|a| a.as_any().downcast_ref::<Float64Array>());
        let rows = treatment.len();
        let mut builders: Vec<Float64Builder> = (0..9).map(|_| Float64Builder::with_capacity(rows)).collect();
        for row in 0..rows {
            let cuped = match cuped {
                Some(Some(c)) => !c.is_null(row) && c.value(row),
                Some(None) => return exec_err!("{name}: cuped must be a boolean"),
                None => false,
            };
            let confidence = match confidence {
                Some(Some(c)) if !c.is_null(row) => check_confidence(c.value(row))?,
                Some(None) => return exec_err!("{name}: confidence must be a number"),
                _ => 0.95,
            };
            let result =
                match (Moments::from_struct(name, &treatment, row)?, Moments::from_struct(name, &control, row)?) {
                    (Some(t), Some(c)) => ratio_delta_test(&t, &c, cuped, confidence)?,
                    _ => None,
                };
            match result {
                Some(r) => {
                    let t = r.test;
                    let values = [t.statistic, t.df, t.p_value, t.diff, t.lift, t.ci_low, t.ci_high];
                    for (b, v) in builders.iter_mut().zip(values) {
                        b.append_option(v.is_finite().then_some(v));
                    }
                    builders[7].append_option(r.theta);
                    builders[8].append_option(r.variance_reduction);
                }
                None => builders.iter_mut().for_each(|b| b.append_null()),
            }
        }
        let arrays: Vec<ArrayRef> = builders.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
        finish(Arc::new(StructArray::try_new(result_fields(), arrays, None)?), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::hypothesis::welch_t;

    fn moments(rows: impl Iterator<Item = [f64; 4]>) -> Moments {
        let mut m = Moments::default();
        rows.for_each(|v| m.push(v));
        m
    }

    #[test]
    fn a_mean_without_cuped_is_welch() {
        let a: Vec<f64> = (0..300).map(|i| ((i * 37) % 23) as f64 + 2.0).collect();
        let b: Vec<f64> = (0..250).map(|i| ((i * 11) % 19) as f64).collect();
        let stats = |x: &[f64]| {
            let n = x.len() as f64;
            let m = x.iter().sum::<f64>() / n;
            (m, x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0), n)
        };
        let ((ma, va, na), (mb, vb, nb)) = (stats(&a), stats(&b));
        let welch = welch_t(ma, va, na, mb, vb, nb, 0.95).unwrap().unwrap();
        let r = ratio_delta_test(
            &moments(a.iter().map(|x| [*x, 1.0, 0.0, 0.0])),
            &moments(b.iter().map(|x| [*x, 1.0, 0.0, 0.0])),
            true, // asked, but no pre-period variance: not applied
            0.95,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.theta, None);
        for (x, y) in [(r.test.statistic, welch.statistic), (r.test.p_value, welch.p_value), (r.test.df, welch.df)] {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1e-300), "{x} vs {y}");
        }
    }

    #[test]
    fn cuped_with_a_correlated_covariate_reduces_variance() {
        // metric = pre-period value + small noise: theta near 1, most variance removed
        let unit = |i: usize, shift: f64| {
            let pre = ((i * 7919) % 1000) as f64;
            [pre + ((i * 13) % 7) as f64 * 0.1 + shift, 1.0, pre, 1.0]
        };
        let t = moments((0..500).map(|i| unit(i, 1.0)));
        let c = moments((500..1000).map(|i| unit(i, 0.0)));
        let plain = ratio_delta_test(&t, &c, false, 0.95).unwrap().unwrap();
        let cuped = ratio_delta_test(&t, &c, true, 0.95).unwrap().unwrap();
        assert!(plain.theta.is_none() && plain.variance_reduction.is_none());
        let theta = cuped.theta.unwrap();
        assert!((theta - 1.0).abs() < 0.01, "{theta}");
        assert!(cuped.variance_reduction.unwrap() > 0.99, "{cuped:?}");
        assert!(cuped.test.p_value < 1e-12 && plain.test.p_value > 1e-3, "{plain:?} {cuped:?}");
        assert!((cuped.test.diff - 1.0).abs() < 0.2, "{cuped:?}");
    }

    #[test]
    fn undefined_cases_are_none() {
        let zero_den = moments((0..10).map(|i| [i as f64, 0.0, 0.0, 0.0]));
        let fine = moments((0..10).map(|i| [i as f64, 1.0, 0.0, 0.0]));
        assert!(ratio_delta_test(&zero_den, &fine, false, 0.95).unwrap().is_none());
        let one = moments(std::iter::once([1.0, 1.0, 0.0, 0.0]));
        assert!(ratio_delta_test(&one, &fine, false, 0.95).unwrap().is_none());
        let constant = moments((0..10).map(|_| [1.0, 2.0, 0.0, 0.0]));
        assert!(ratio_delta_test(&constant, &constant, false, 0.95).unwrap().is_none());
    }
}
