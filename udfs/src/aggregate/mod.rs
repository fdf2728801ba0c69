//! Aggregate functions, one per file; this module only lists them.

pub mod ratio_moments;
pub mod weighted_avg_vector;

use datafusion::logical_expr::AggregateUDF;

/// Every StreamPulse aggregate function.
pub fn functions() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(weighted_avg_vector::WeightedAvgVector::default()),
        AggregateUDF::from(ratio_moments::RatioMoments::default()),
    ]
}
