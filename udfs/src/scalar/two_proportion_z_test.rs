//! `two_proportion_z_test(x_t, n_t, x_c, n_c [, confidence])`: pooled z-test of p_t = p_c, for
//! metrics whose unit is the user (did the user do X).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_macros::user_doc;

use super::hypothesis::*;

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Two-proportion z-test of treatment vs control (pooled standard error for the p-value, \
Wald interval for the difference). Returns a struct {z, df (infinite, so NULL), p_value (two-sided), \
diff = p_t - p_c, lift = diff / p_c, ci_low, ci_high}. NULL fields when undefined (no trials or no variance). \
Only for independent trials, such as users who did or did not convert: for a rate over plays of randomised \
users (skips / plays) use ratio_test, since plays of one user are not independent.",
    syntax_example = "two_proportion_z_test(successes_t, trials_t, successes_c, trials_c [, confidence])",
    sql_example = r#"```sql
> SELECT two_proportion_z_test(120, 1000, 100, 1000)['p_value'];
```"#,
    argument(name = "successes_t", description = "Successes in treatment (e.g. users who converted)."),
    argument(name = "trials_t", description = "Trials in treatment (e.g. users)."),
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
