//! Table functions, one per file; this module only lists them.

pub mod top_k_nearest;
