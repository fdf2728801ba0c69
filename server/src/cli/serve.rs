//! `streampulse serve`: the server on a warehouse (see [`crate::serve`]).

use super::{CliError, open_engine};
use crate::config::{ServerArgs, WarehouseArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let engine = open_engine(&args.warehouse).await?;
    crate::serve::run(engine, args.server).await
}
