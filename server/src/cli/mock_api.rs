//! `streampulse mock-api`: the song metadata API of pipeline C, for tests and benchmarks
//! (see `streampulse_bench::mock_api` for its endpoints and faults).

use std::path::PathBuf;

use streampulse_bench::mock_api::{Fault, MockConfig};

use super::CliError;
use crate::config::ByteSize;

#[derive(Debug, clap::Args)]
pub struct MockApiArgs {
    /// A `streampulse datagen` folder: its songs.parquet or songs.csv is the catalogue
    #[arg(long)]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed at start)
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: String,
    /// Songs per page unless a request asks for page_size
    #[arg(long, default_value_t = 1000)]
    page_size: usize,
    /// Delay before every answer
    #[arg(long, default_value = "0ms")]
    latency: humantime::Duration,
    /// Up to this much more delay, drawn per request
    #[arg(long, default_value = "0ms")]
    jitter: humantime::Duration,
    /// Bytes per second per response, e.g. "1MiB" [default: unlimited]
    #[arg(long)]
    bandwidth: Option<ByteSize>,
    /// Requests served at once; more get 429 with Retry-After [default: unlimited]
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// A fault as KIND:RATE[:MAX] (repeatable): 429, 500, 503, reset, timeout, truncate,
    /// malformed, wrong_type, extra_field, drift
    #[arg(long = "fault")]
    faults: Vec<Fault>,
    /// Seed of the fault draws: the same seed gives the same faults
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Environment variable holding a bearer token that requests must carry [default: none needed]
    #[arg(long)]
    token_env: Option<String>,
    /// Base URL that /moved/<path> redirects to
    #[arg(long)]
    redirect_to: Option<String>,
}

pub async fn run(args: MockApiArgs) -> Result<(), CliError> {
    if args.page_size == 0 {
        return Err(CliError::usage("--page-size must be at least 1".to_string()));
    }
    let token = match &args.token_env {
        Some(name) => {
            Some(std::env::var(name).map_err(|_| CliError::usage(format!("--token-env: {name} is not set")))?)
        }
        None => None,
    };
    let config = MockConfig {
        data: args.data,
        page_size: args.page_size,
        latency: args.latency.into(),
        jitter: args.jitter.into(),
        bandwidth: args.bandwidth.map(|b| b.0),
        max_concurrency: args.max_concurrency,
        faults: args.faults,
        seed: args.seed,
        token,
        redirect_to: args.redirect_to,
    };
    streampulse_bench::mock_api::serve(config, &args.listen, |addr| {
        println!("mock-api listening on http://{addr}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })
    .await
    .map_err(CliError::failed)
}
