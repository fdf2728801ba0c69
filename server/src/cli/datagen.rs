//! `streampulse datagen`: the StreamPulse dataset at a scale factor (see `bench/`).

use std::path::PathBuf;

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct DatagenArgs {
    /// Scale factor: 1 = 100 M plays, 5 M users, 500 k songs, 100 k artists over 30 days
    #[arg(long, default_value_t = 0.01)]
    scale: f64,
    /// Output folder
    #[arg(long)]
    out: PathBuf,
    /// Table file format
    #[arg(long, value_enum, default_value = "csv")]
    format: DatagenFormat,
    /// Random seed: the same seed and scale give identical files
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Last days also written as live-event gzip JSONL (0 to 30)
    #[arg(long, default_value_t = 2)]
    event_days: u32,
    /// Share of plays rows written malformed, for bad-input tests (CSV only)
    #[arg(long, default_value_t = 0.0)]
    dirty_fraction: f64,
    /// Threads [default: cores]
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
    /// Live mode: generate nothing else, keep dropping new event files into OUT/events/ (the
    /// last day, and late ones for the days before) until Ctrl-C or --max-files
    #[arg(long)]
    live: bool,
    /// Live mode: files written per minute
    #[arg(long, default_value_t = 60.0, requires = "live")]
    files_per_minute: f64,
    /// Live mode: lines per file (the company's files hold about 6,500)
    #[arg(long, default_value_t = 6500, requires = "live")]
    lines_per_file: usize,
    /// Live mode: share of files for one of the three days before the last (late arrivals)
    #[arg(long, default_value_t = 0.1, requires = "live")]
    late_share: f64,
    /// Live mode: stop after this many files
    #[arg(long, requires = "live")]
    max_files: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DatagenFormat {
    Csv,
    Parquet,
}

pub fn run(args: DatagenArgs) -> Result<(), CliError> {
    use streampulse_bench::datagen::{Config, Format, generate};
    if args.live {
        return run_live(&args);
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().map_err(CliError::failed)?;
    }
    let config = Config {
        scale: args.scale,
        out: args.out.clone(),
        format: match args.format {
            DatagenFormat::Csv => Format::Csv,
            DatagenFormat::Parquet => Format::Parquet,
        },
        seed: args.seed,
        event_days: args.event_days,
        dirty_fraction: args.dirty_fraction,
        progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let started = std::time::Instant::now();
    let manifest = generate(&config).map_err(|e| match e {
        streampulse_bench::datagen::DatagenError::Config(_) => CliError::usage(e),
        other => CliError::failed(other),
    })?;
    let c = manifest.counts;
    println!(
        "generated SF {} into {}: {} plays, {} users, {} songs, {} artists, {} event files in {:.1}s",
        manifest.scale_factor,
        args.out.display(),
        c.plays,
        c.users,
        c.songs,
        c.artists,
        manifest.event_files,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `datagen --live`: event files until Ctrl-C (or `--max-files`), a progress line every 10 s.
fn run_live(args: &DatagenArgs) -> Result<(), CliError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use streampulse_bench::datagen::{DatagenError, LiveConfig, live};
    let config = LiveConfig {
        scale: args.scale,
        seed: args.seed,
        out: args.out.clone(),
        files_per_minute: args.files_per_minute,
        lines_per_file: args.lines_per_file,
        late_share: args.late_share,
        max_files: args.max_files,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Ctrl-C ends the run after the file being written (never half a file).
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    println!(
        "live: dropping {} files/min of {} lines into {} (Ctrl-C stops)",
        args.files_per_minute,
        args.lines_per_file,
        args.out.join("events").display()
    );
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let quiet = args.quiet;
    let done = live(&config, &stop, |path, p| {
        if !quiet && (last.elapsed().as_secs() >= 10 || p.files == 1) {
            last = std::time::Instant::now();
            println!("live: {} files, {} lines, {} bytes; last {}", p.files, p.lines, p.bytes, path.display());
        }
    })
    .map_err(|e| match e {
        DatagenError::Config(_) => CliError::usage(e),
        other => CliError::failed(other),
    })?;
    println!(
        "live: wrote {} files ({} lines, {} bytes) in {:.1}s",
        done.files,
        done.lines,
        done.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
