//! Data from outside the warehouse that is not files: [`json_api`] (`STORED AS JSON_API`, a
//! paged HTTP JSON API as an external table) under [`http`]'s allow-list and checked client.
//!
//! Reading the network is a privilege: [`reads_network`] finds such tables in a plan (views
//! included) so the server can require an admin for it.

pub mod http;
pub mod json_api;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{ViewTable, source_as_provider};
use datafusion::logical_expr::LogicalPlan;

pub use http::HttpPolicy;
pub use json_api::{JsonApiFactory, JsonApiTable};

/// Whether running `plan` fetches from an HTTP source (directly or through a view).
pub fn reads_network(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p
            && let Ok(provider) = source_as_provider(&scan.source)
            && provider_reads_network(provider.as_ref())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        if let LogicalPlan::Dml(dml) = p
            && let Ok(provider) = source_as_provider(&dml.target)
            && provider_reads_network(provider.as_ref())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn provider_reads_network(provider: &dyn TableProvider) -> bool {
    if provider.is::<JsonApiTable>() {
        return true;
    }
    match provider.downcast_ref::<ViewTable>() {
        Some(view) => reads_network(view.logical_plan()),
        None => false,
    }
}
