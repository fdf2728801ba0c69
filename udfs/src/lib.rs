//! StreamPulse's custom SQL functions.
//!
//! This crate knows nothing of networks or storage: it only defines functions and registers
//! them on a DataFusion context, so the server, the CLI and a Ballista executor link the same
//! code. [`register_all`] is the one place that registers them.
//!
//! One file per function, in folders by kind:
//!
//! | function | file |
//! |---|---|
//! | `array_cosine_similarity(a, b)` | [`scalar::array_cosine_similarity`] |
//! | `array_inner_product(a, b)` (alias of DataFusion's `inner_product`) | [`scalar`] |
//! | `ab_bucket(user_id, salt, buckets)` | [`scalar::ab_bucket`] |
//! | `two_proportion_z_test(x_t, n_t, x_c, n_c [, confidence])` → struct | [`scalar::two_proportion_z_test`] |
//! | `welch_t_test(m_t, v_t, n_t, m_c, v_c, n_c [, confidence])` → struct | [`scalar::welch_t_test`] |
//! | `ratio_test(moments_t, moments_c [, cuped [, confidence]])` → struct | [`scalar::ratio_test`] |
//! | `srm_p_value(units_t, units_c, share_t)` | [`scalar::srm_p_value`] |
//! | `weighted_avg_vector(vector, weight)` | [`aggregate::weighted_avg_vector`] |
//! | `ratio_moments(num, den [, pre_num, pre_den])` → struct | [`aggregate::ratio_moments`] |
//! | `largest_remainder(amount, weight) OVER (...)` | [`window::largest_remainder`] |
//! | `top_k_nearest(users_sql, items_sql, k [, metric])` | [`table::top_k_nearest`] |
//!
//! Euclidean distance is DataFusion's `array_distance` (DuckDB's name already).

pub mod aggregate;
pub mod scalar;
pub mod table;
mod util;
pub mod window;

use datafusion::error::Result;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::prelude::SessionContext;

/// Every StreamPulse scalar function.
pub fn scalar_functions() -> Vec<ScalarUDF> {
    scalar::functions()
}

/// Every StreamPulse aggregate function.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    aggregate::functions()
}

/// Every StreamPulse window function.
pub fn window_functions() -> Vec<WindowUDF> {
    window::functions()
}

/// Register every StreamPulse function on `ctx`.
pub fn register_all(ctx: &SessionContext) -> Result<()> {
    for f in scalar_functions() {
        ctx.register_udf(f);
    }
    for f in aggregate_functions() {
        ctx.register_udaf(f);
    }
    for f in window_functions() {
        ctx.register_udwf(f);
    }
    ctx.register_udtf("top_k_nearest", std::sync::Arc::new(table::top_k_nearest::TopKNearestFunction));
    Ok(())
}

/// The function reference in Markdown, generated from each function's `Documentation`
/// (printed by `streampulse functions` and pasted into the README).
pub fn reference_markdown() -> String {
    let mut docs: Vec<(String, datafusion::logical_expr::Documentation)> = Vec::new();
    for f in scalar_functions() {
        if let Some(d) = f.documentation() {
            let name = match f.aliases() {
                [] => format!("`{}`", f.name()),
                aliases => format!("`{}` (also `{}`)", f.name(), aliases.join("`, `")),
            };
            docs.push((name, d.clone()));
        }
    }
    for f in aggregate_functions() {
        if let Some(d) = f.documentation() {
            docs.push((format!("`{}`", f.name()), d.clone()));
        }
    }
    for f in window_functions() {
        if let Some(d) = f.documentation() {
            docs.push((format!("`{}`", f.name()), d.clone()));
        }
    }
    docs.push(("`top_k_nearest`".to_string(), table::top_k_nearest::TopKNearestFunction::documentation().clone()));
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (name, d) in docs {
        out.push_str(&format!("### {name}\n\n{}\n\n```sql\n{}\n```\n\n", d.description, d.syntax_example));
        if let Some(args) = &d.arguments {
            for (arg, text) in args {
                out.push_str(&format!("- `{arg}`: {text}\n"));
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_function_reference_is_current() {
        // The run-time CARGO_MANIFEST_DIR names this checkout even if the binary was built in another.
        let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&manifest_dir).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            readme.contains(&super::reference_markdown()),
            "README's function reference is out of date: paste the output of `streampulse functions`"
        );
    }
}
