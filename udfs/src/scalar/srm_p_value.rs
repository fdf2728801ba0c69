//! `srm_p_value(treatment_units, control_units, treatment_share)`: the sample ratio mismatch
//! check. If assignment works and nothing downstream loses units selectively, the units that
//! reach the analysis split like the configured traffic; a tiny p-value means the split is
//! broken (a crash, a logging bug, a filter on one variant) and no metric of the experiment can
//! be trusted, however significant.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_macros::user_doc;
use statrs::function::erf::erfc;

use super::hypothesis::coerce_all_float;
use crate::util::{as_f64, finish, to_arrays};

/// Pearson's chi-square goodness-of-fit p-value of the observed split against the expected
/// one (1 degree of freedom: the chi-square survival function is erfc(sqrt(x / 2))). `None` when
/// there are no units.
pub fn srm_p(treatment: f64, control: f64, share: f64) -> Result<Option<f64>> {
    if !(share > 0.0 && share < 1.0) {
        return exec_err!("srm_p_value: treatment_share must be in (0, 1), got {share}");
    }
    if treatment < 0.0 || control < 0.0 {
        return exec_err!("srm_p_value: unit counts must be non-negative");
    }
    let n = treatment + control;
    if n == 0.0 {
        return Ok(None);
    }
    let (e_t, e_c) = (n * share, n * (1.0 - share));
    let chi2 = (treatment - e_t).powi(2) / e_t + (control - e_c).powi(2) / e_c;
    Ok(Some(erfc((chi2 / 2.0).sqrt())))
}

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Sample ratio mismatch check: the p-value of Pearson's chi-square test (1 degree of freedom, as \
scipy.stats.chisquare) of the units observed in treatment and control against the configured treatment share. \
A very small value (below 0.001 is the usual alarm) means assignment or data collection is broken and the \
experiment's metrics should not be read. NULL when there are no units or an argument is NULL.",
    syntax_example = "srm_p_value(treatment_units, control_units, treatment_share)",
    sql_example = r#"```sql
> SELECT srm_p_value(5210, 4790, 0.5);
```"#,
    argument(name = "treatment_units", description = "Units (users) observed in treatment."),
    argument(name = "control_units", description = "Units observed in control."),
    argument(name = "treatment_share", description = "The configured share of units in treatment, in (0, 1).")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SrmPValue {
    signature: Signature,
}

impl Default for SrmPValue {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SrmPValue {
    fn name(&self) -> &str {
        "srm_p_value"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 3 {
            return datafusion::common::plan_err!(
                "srm_p_value takes (treatment_units, control_units, treatment_share), got {} arguments",
                arg_types.len()
            );
        }
        coerce_all_float(self.name(), arg_types, 3)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, all_scalar) = to_arrays(&args.args, args.number_rows)?;
        let columns: Vec<&Float64Array> = arrays.iter().map(|a| as_f64(self.name(), a)).collect::<Result<_>>()?;
        let rows = columns[0].len();
        let mut out = Float64Builder::with_capacity(rows);
        for row in 0..rows {
            if columns.iter().any(|c| c.is_null(row)) {
                out.append_null();
            } else {
                out.append_option(srm_p(columns[0].value(row), columns[1].value(row), columns[2].value(row))?);
            }
        }
        finish(Arc::new(out.finish()) as ArrayRef, all_scalar)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_values() {
        // 5,100 vs 4,900 at 50 %: chi2 = 4, p = 0.0455003
        let p = srm_p(5100.0, 4900.0, 0.5).unwrap().unwrap();
        // scipy.stats.chisquare([5100, 4900]).pvalue; statrs' erfc is good to ~1e-10 relative
        assert!((p / 0.045_500_263_896_358_57 - 1.0).abs() < 1e-9, "{p}");
        assert_eq!(srm_p(500.0, 500.0, 0.5).unwrap(), Some(1.0));
        assert_eq!(srm_p(0.0, 0.0, 0.5).unwrap(), None);
        assert!(srm_p(1.0, 1.0, 1.0).is_err() && srm_p(-1.0, 1.0, 0.5).is_err());
    }
}
