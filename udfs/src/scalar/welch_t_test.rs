//! `welch_t_test(mean_t, var_t, n_t, mean_c, var_c, n_c [, confidence])`: Welch's t-test of
//! two means with unequal variances.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_macros::user_doc;

use super::hypothesis::*;

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
