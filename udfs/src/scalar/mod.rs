//! Scalar functions, one per file; this module only lists them.

pub mod ab_bucket;
pub mod array_cosine_similarity;
pub mod hypothesis;
pub mod ratio_test;
pub mod srm_p_value;
pub mod two_proportion_z_test;
pub mod welch_t_test;

use datafusion::logical_expr::ScalarUDF;

/// Every StreamPulse scalar function.
pub fn functions() -> Vec<ScalarUDF> {
    let inner_product = datafusion::functions_nested::inner_product::inner_product_udf()
        .as_ref()
        .clone()
        .with_aliases(["array_inner_product"]);
    vec![
        ScalarUDF::from(array_cosine_similarity::ArrayCosineSimilarity::default()),
        inner_product,
        ScalarUDF::from(ab_bucket::AbBucket::default()),
        ScalarUDF::from(two_proportion_z_test::TwoProportionZTest::default()),
        ScalarUDF::from(welch_t_test::WelchTTest::default()),
        ScalarUDF::from(ratio_test::RatioTest::default()),
        ScalarUDF::from(srm_p_value::SrmPValue::default()),
    ]
}
