//! `streampulse`: see `streampulse --help`.

/// jemalloc rather than glibc's malloc: with DataFusion's many threads glibc kept freed memory
/// in per-thread arenas, so the process's real memory stayed hundreds of MiB above what the
/// memory pool accounts (pipeline B under a 512 MiB cap: 699 MiB peak RSS with glibc, 807 with
/// mimalloc, 427 with jemalloc; bench/RESULTS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Plans are trees, and decoding one recurses once per node: Ballista's scheduler decodes every
/// query's plan from protobuf, with no stack guard. With tokio's 2 MiB worker stacks, the
/// scheduler of a debug build overflowed on pipeline D's plan, so workers get 16 MiB (address
/// space, not memory, until used).
const WORKER_STACK: usize = 16 << 20;

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(WORKER_STACK).build();
    match runtime {
        Ok(runtime) => runtime.block_on(streampulse_server::cli::run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
