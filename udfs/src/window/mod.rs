//! Window functions, one per file; this module only lists them.

pub mod largest_remainder;

use datafusion::logical_expr::WindowUDF;

/// Every StreamPulse window function.
pub fn functions() -> Vec<WindowUDF> {
    vec![WindowUDF::from(largest_remainder::LargestRemainder::default())]
}
