//! `streampulse`: see `streampulse --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    streampulse_server::cli::run().await
}
