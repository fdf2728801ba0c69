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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DatagenFormat {
    Csv,
    Parquet,
}

pub fn run(args: DatagenArgs) -> Result<(), CliError> {
    use streampulse_bench::datagen::{Config, Format, generate};
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
