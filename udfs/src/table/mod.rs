//! Table functions, one per file; this module only lists them (and `clusters`, the pruning
//! `top_k_nearest` uses).

pub mod clusters;
pub mod top_k_nearest;
