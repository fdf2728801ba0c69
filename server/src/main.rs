//! `streampulse`: see `streampulse --help`.

/// jemalloc rather than glibc's malloc: with DataFusion's many threads glibc kept freed memory
/// in per-thread arenas, so the process's real memory stayed hundreds of MiB above what the
/// memory pool accounts (pipeline B under a 512 MiB cap: 699 MiB peak RSS with glibc, 807 with
/// mimalloc, 427 with jemalloc; bench/RESULTS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    streampulse_server::cli::run().await
}
