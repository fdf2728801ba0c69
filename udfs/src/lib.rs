//! StreamPulse's custom SQL functions.
//!
//! This crate knows nothing of networks or storage: it only defines functions and registers
//! them on a DataFusion context, so the server, the CLI and a Ballista executor link the same
//! code. The pipeline functions (similarity, attribution, experiments) land here with the
//! pipelines issue; [`register_all`] is the one place that registers them.

use datafusion::error::Result;
use datafusion::prelude::SessionContext;

/// Register every StreamPulse function on `ctx`.
pub fn register_all(_ctx: &SessionContext) -> Result<()> {
    Ok(())
}
