//! `streampulse serve`: the server on a warehouse (see [`crate::serve`]).

use super::CliError;
use crate::config::{ServerArgs, WarehouseArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    crate::serve::run(&args.warehouse, args.server).await
}
