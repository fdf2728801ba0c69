//! `serve --demo`: generate (once) and load the demo dataset into a local warehouse, run
//! pipelines A, B, D and E on it (once), print a short summary of each output, and declare the
//! pipelines as tasks (`sql/tasks.sql`, suspended so the demo stays quiet) unless they exist, and
//! start a live event feed that the `music.plays_events` pipe (`sql/ingest.sql`) loads into
//! `music.plays` while the server runs. Every SQL text is a file under `sql/`: the same
//! scripts `streampulse sql -f` runs.

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use streampulse_engine::sql::{StatementOutput, substitute_params};
use streampulse_engine::{Engine, Error};
use tracing::info;

use crate::cli::CliError;
use crate::cli::sql::{Output, run_embedded};

/// The script that loads a generated folder (also usable by hand, see README).
const LOAD_SQL: &str = include_str!("../../sql/load_generated.sql");
const PIPELINE_A: &str = include_str!("../../sql/pipelines/a_daily_play_counts.sql");
const PIPELINE_B: &str = include_str!("../../sql/pipelines/b_recommendations.sql");
const PIPELINE_D: &str = include_str!("../../sql/pipelines/d_royalties.sql");
const PIPELINE_E: &str = include_str!("../../sql/pipelines/e_ab_analytics.sql");
const SUMMARY_PLAYS: &str = include_str!("../../sql/demo/plays.sql");
const PLAY_DATES: &str = include_str!("../../sql/demo/play_dates.sql");
const SUMMARY_A: &str = include_str!("../../sql/demo/daily_play_counts.sql");
const SUMMARY_B: &str = include_str!("../../sql/demo/recommendations.sql");
const SUMMARY_D: &str = include_str!("../../sql/demo/royalties.sql");
const SUMMARY_E: &str = include_str!("../../sql/demo/experiment_results.sql");
/// The pipelines as (suspended) tasks.
const TASKS: &str = include_str!("../../sql/tasks.sql");
/// The pipe that loads live events into music.plays.
const INGEST: &str = include_str!("../../sql/ingest.sql");
/// The demo's live event feed: files per minute and lines per file.
const LIVE_FILES_PER_MINUTE: f64 = 6.0;
const LIVE_LINES_PER_FILE: usize = 2_000;

/// One run's `${param}` values.
type Params = Vec<(String, String)>;

fn param(name: &str, value: impl ToString) -> (String, String) {
    (name.to_string(), value.to_string())
}

/// Where the demo's generated files live: `_landing/demo-sf<scale>` in the (local) warehouse.
fn demo_dir(engine: &Engine, scale: f64) -> Result<std::path::PathBuf, CliError> {
    Ok(engine
        .warehouse()
        .root()
        .to_file_path()
        .map_err(|()| CliError::usage("--demo needs a local warehouse folder"))?
        .join("_landing")
        .join(format!("demo-sf{scale}")))
}

/// Generate, load and run the pipelines unless already done; print the summaries.
pub async fn load(engine: &Engine, scale: f64) -> Result<(), CliError> {
    let has = |table: &str| engine.catalog().snapshot().table("music", table).is_some();
    if has("plays") {
        info!("demo data already loaded");
    } else {
        let dir = demo_dir(engine, scale)?;
        if !dir.join("manifest.json").exists() {
            println!("Generating the demo dataset (SF {scale}) into {} ...", dir.display());
            let config = streampulse_bench::datagen::Config {
                scale,
                out: dir.clone(),
                format: streampulse_bench::datagen::Format::Csv,
                seed: 42,
                event_days: 2,
                dirty_fraction: 0.0,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            tokio::task::spawn_blocking(move || streampulse_bench::datagen::generate(&config))
                .await
                .map_err(CliError::failed)?
                .map_err(CliError::failed)?;
        }
        let script = substitute_params(LOAD_SQL, &[param("data", dir.display()), param("format", "csv")])?;
        let started = std::time::Instant::now();
        run_embedded(engine, &script, None, false).await?;
        println!("Demo data loaded into schema music in {:.1} s:", started.elapsed().as_secs_f64());
        run_embedded(engine, SUMMARY_PLAYS, Some(Output::Table), false).await?;
    }
    let days = first_column(engine, PLAY_DATES).await?;
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Err(CliError::failed("the demo's music.plays is empty"));
    };
    let month = first[..7].to_string();
    // (output table, pipeline script, the parameters of each run, summary query)
    let steps: [(&str, &str, Vec<Params>, &str); 4] = [
        ("daily_play_counts", PIPELINE_A, days.iter().map(|d| vec![param("run_date", d)]).collect(), SUMMARY_A),
        ("recommendations", PIPELINE_B, vec![vec![param("run_date", last)]], SUMMARY_B),
        ("royalties", PIPELINE_D, vec![vec![param("month", &month)]], SUMMARY_D),
        ("experiment_results", PIPELINE_E, vec![vec![]], SUMMARY_E),
    ];
    for (table, script, runs, summary) in steps {
        if !has(table) {
            let started = std::time::Instant::now();
            for params in &runs {
                run_embedded(engine, &substitute_params(script, params)?, None, false).await?;
            }
            println!("Pipeline -> music.{table}: {} run(s) in {:.1} s", runs.len(), started.elapsed().as_secs_f64());
        }
        println!("music.{table}:");
        run_embedded(engine, summary, Some(Output::Table), false).await?;
    }
    if !engine.catalog().snapshot().tasks.contains_key("music.daily_play_counts") {
        run_embedded(engine, TASKS, None, false).await?;
        println!(
            "Tasks declared (suspended) from sql/tasks.sql: see SHOW TASKS; start one with \
             ALTER TASK music.daily_play_counts RESUME"
        );
    }
    Ok(())
}

/// The demo's live feed: `datagen --live` in a thread, dropping event files where the
/// `music.plays_events` pipe (sql/ingest.sql, declared here unless it exists) loads them.
/// It stops when the returned guard is dropped (the server stopping).
pub async fn start_live(engine: &Engine, scale: f64) -> Result<LiveFeed, CliError> {
    let dir = demo_dir(engine, scale)?.join("live");
    let events = dir.join("events");
    std::fs::create_dir_all(&events).map_err(CliError::failed)?;
    if !engine.catalog().snapshot().pipes.contains_key("music.plays_events") {
        let script = substitute_params(INGEST, &[param("events", format!("{}/", events.display()))])?;
        run_embedded(engine, &script, None, false).await?;
    }
    println!(
        "Live events: {LIVE_FILES_PER_MINUTE} files/min land in {}; pipe music.plays_events loads them into music.plays (see SHOW PIPES, system.copy_history)",
        events.display()
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = streampulse_bench::datagen::LiveConfig {
        scale,
        seed: 42,
        out: dir,
        files_per_minute: LIVE_FILES_PER_MINUTE,
        lines_per_file: LIVE_LINES_PER_FILE,
        late_share: 0.1,
        max_files: None,
    };
    let flag = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        if let Err(e) = streampulse_bench::datagen::live(&config, &flag, |_, _| {}) {
            tracing::warn!(error = %e, "the demo's live event feed stopped");
        }
    });
    Ok(LiveFeed { stop })
}

/// Stops the demo's live feed when dropped.
pub struct LiveFeed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The first column of a query's result, as strings.
async fn first_column(engine: &Engine, sql: &str) -> Result<Vec<String>, CliError> {
    let session = engine.session();
    let mut out = Vec::new();
    engine
        .run_script(&session, sql, true, |report| {
            if let StatementOutput::Rows(batches) = report.output {
                for batch in batches {
                    let column = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
                    let strings = column
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| Error::internal("a cast to Utf8 gave no strings"))?;
                    out.extend(strings.iter().flatten().map(str::to_string));
                }
            }
            Ok(())
        })
        .await?;
    Ok(out)
}
