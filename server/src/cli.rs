//! The `streampulse` command line: `serve`, `sql`, `user`.
//!
//! Each command resolves its configuration (flags, env vars, TOML file, defaults), builds the
//! one engine with [`streampulse_catalog::Engine::open`], and hands it to the protocol or to
//! the script runner, so the server, the CLI and (later) the scheduler run SQL the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use streampulse_catalog::{Engine, Planned};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info};

use crate::auth::{self, Authenticator, Role};
use crate::config::{self, FileConfig, WarehouseArgs};
use crate::flight::wrapper::Service;
use crate::flight::{Admission, MAX_MESSAGE_BYTES, StreamPulseFlightSql};

/// StreamPulse Warehouse: SQL on Parquet/Delta tables, served over Arrow Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "streampulse", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Flight SQL server on a warehouse (a local folder by default).
    Serve(ServeArgs),
    /// Run SQL statements and print the results: embedded (no server needed) or, with
    /// --connect, against a running server.
    Sql(SqlArgs),
    /// Manage the users who may connect (stored in the warehouse catalog).
    User(UserArgs),
    /// Print the reference of StreamPulse's SQL functions (Markdown).
    Functions,
    /// Generate the StreamPulse dataset (plays, users, songs, ...) at a scale factor.
    Datagen(DatagenArgs),
}

#[derive(Debug, clap::Args)]
struct DatagenArgs {
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

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// Address to listen on; port 0 picks a free port (printed at start) [default: 127.0.0.1:50051]
    #[arg(long, env = "STREAMPULSE_LISTEN")]
    listen: Option<String>,
    /// Lifetime of bearer tokens issued at handshake [default: 12h]
    #[arg(long, env = "STREAMPULSE_TOKEN_TTL")]
    token_ttl: Option<String>,
    /// Statements that may run at once; more wait in a queue [default: 8]
    #[arg(long, env = "STREAMPULSE_MAX_CONCURRENT_QUERIES")]
    max_concurrent_queries: Option<usize>,
    /// Longest wait in that queue before RESOURCE_EXHAUSTED [default: 60s]
    #[arg(long, env = "STREAMPULSE_QUEUE_TIMEOUT")]
    queue_timeout: Option<String>,
    /// Name of the admin created on the first start of a fresh warehouse [default: admin]
    #[arg(long, env = "STREAMPULSE_ADMIN_USER")]
    admin_user: Option<String>,
    /// Password of that first admin; generated and printed once when unset
    #[arg(long, env = "STREAMPULSE_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Generate a small StreamPulse dataset and load it (schema `music`) before serving,
    /// unless it is already there; local warehouses only
    #[arg(long, env = "STREAMPULSE_DEMO")]
    demo: bool,
    /// Scale factor of the --demo dataset (1 = 100 M plays)
    #[arg(long, env = "STREAMPULSE_DEMO_SCALE", default_value_t = 0.001)]
    demo_scale: f64,
}

#[derive(Debug, clap::Args)]
struct SqlArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// SQL to run (several statements separated by ;)
    #[arg(short = 'e', long = "execute", conflicts_with = "file", required_unless_present = "file")]
    execute: Option<String>,
    /// File of SQL statements to run
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Run against a server instead of embedded, e.g. grpc://127.0.0.1:50051
    #[arg(long, env = "STREAMPULSE_CONNECT")]
    connect: Option<String>,
    /// User for --connect
    #[arg(long, env = "STREAMPULSE_USER", default_value = "admin")]
    user: String,
    /// Password for --connect
    #[arg(long, env = "STREAMPULSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Script parameter: every `${name}` in the SQL becomes `value` (repeatable)
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// How results are printed: an aligned table, CSV with a header, or JSON lines.
    /// With csv/json, stdout holds only result rows; "OK"/row counts go to stderr.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    format: Output,
    /// After each statement, print to stderr its wall time, peak pool memory and spills
    /// (embedded only; a server logs them for every statement)
    #[arg(long)]
    stats: bool,
}

/// How `streampulse sql` prints query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Csv,
    Json,
}

/// Replace `${name}` with each parameter's value; a `${...}` left over is an error that names it.
fn substitute_params(script: &str, params: &[String]) -> Result<String, String> {
    let mut out = script.to_string();
    for p in params {
        let (name, value) = p.split_once('=').ok_or_else(|| format!("--param {p}: expected NAME=VALUE"))?;
        out = out.replace(&format!("${{{}}}", name.trim()), value);
    }
    if let Some(start) = out.find("${") {
        let name: String = out[start + 2..].chars().take_while(|c| *c != '}').collect();
        return Err(format!("the script uses ${{{name}}}: give it with --param {name}=..."));
    }
    Ok(out)
}

fn datagen(args: DatagenArgs) -> Result<(), String> {
    use streampulse_bench::datagen::{Config, Format, generate};
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().map_err(|e| e.to_string())?;
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
    let manifest = generate(&config).map_err(|e| e.to_string())?;
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

#[derive(Debug, clap::Args)]
struct UserArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(subcommand)]
    action: UserAction,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create a user or change its password and role.
    Add {
        /// User name
        name: String,
        /// admin (everything) or reader (queries and metadata only)
        #[arg(long, default_value = "reader")]
        role: String,
        /// Password
        #[arg(long, env = "STREAMPULSE_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// List users and roles.
    List,
    /// Remove a user.
    Remove {
        /// User name
        name: String,
    },
}

/// Parse the command line and run it.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Sql(args) => sql(args).await,
        Command::User(args) => user(args).await,
        Command::Datagen(args) => datagen(args),
        Command::Functions => {
            print!("{}", streampulse_udfs::reference_markdown());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STREAMPULSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,datafusion=warn,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,delta_kernel=warn,h2=warn,tower=warn,hyper=warn"));
    let json = std::env::var("STREAMPULSE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn open_engine(args: &WarehouseArgs) -> Result<(Engine, FileConfig), String> {
    let file = args.file()?;
    let config = args.engine_config(&file)?;
    let engine = Engine::open(config).await.map_err(|e| e.to_string())?;
    Ok((engine, file))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let (engine, file) = open_engine(&args.warehouse).await?;
    let admin_user = args.admin_user.or(file.admin_user.clone()).unwrap_or_else(|| "admin".into());
    if let Some(generated) = auth::bootstrap_admin(engine.catalog(), &admin_user, args.admin_password)
        .await
        .map_err(|e| e.to_string())?
    {
        println!(
            "Created user '{admin_user}' with generated password: {generated}\n\
             (shown only now; set STREAMPULSE_ADMIN_PASSWORD on first start to choose it)"
        );
    }
    if args.demo {
        load_demo(&engine, args.demo_scale).await?;
    }
    let ttl = config::parse_duration(&args.token_ttl.or(file.token_ttl.clone()).unwrap_or_else(|| config::DEFAULT_TOKEN_TTL.into()))?;
    let listen = args.listen.or(file.listen.clone()).unwrap_or_else(|| config::DEFAULT_LISTEN.into());
    let addr: SocketAddr = tokio::net::lookup_host(&listen)
        .await
        .map_err(|e| format!("cannot resolve listen address {listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen address {listen} resolves to nothing"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;

    let auth = Arc::new(Authenticator::new(ttl));
    let max_concurrent = args
        .max_concurrent_queries
        .or(file.max_concurrent_queries)
        .unwrap_or(config::DEFAULT_MAX_CONCURRENT_QUERIES);
    if max_concurrent == 0 {
        return Err("--max-concurrent-queries must be at least 1".into());
    }
    let queue_timeout = config::parse_duration(
        &args.queue_timeout.or(file.queue_timeout.clone()).unwrap_or_else(|| config::DEFAULT_QUEUE_TIMEOUT.into()),
    )?;
    let admission = Admission::new(max_concurrent, queue_timeout);
    let flight_sql =
        Arc::new(StreamPulseFlightSql::new(engine.clone(), auth, admission).map_err(|e| e.message().to_string())?);
    let service = FlightServiceServer::new(Service::new(flight_sql))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    info!(address = %bound, warehouse = %engine.catalog().warehouse().root(), memory_limit = engine.memory_limit(), "Flight SQL server listening");
    println!("StreamPulse Flight SQL listening on grpc://{bound}");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    info!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutting down");
}

/// The script that loads a generated folder (also usable by hand, see README).
const LOAD_SQL: &str = include_str!("../../sql/load_generated.sql");

/// The pipelines, embedded so that `serve --demo` runs the same scripts as `sql -f`.
const PIPELINE_A: &str = include_str!("../../sql/pipelines/a_daily_play_counts.sql");
const PIPELINE_B: &str = include_str!("../../sql/pipelines/b_recommendations.sql");
const PIPELINE_D: &str = include_str!("../../sql/pipelines/d_royalties.sql");
const PIPELINE_E: &str = include_str!("../../sql/pipelines/e_ab_analytics.sql");

/// Generate (once) and load the demo dataset into a local warehouse, run pipelines A, B, D
/// and E on it (once), and print a short summary of each output.
async fn load_demo(engine: &Engine, scale: f64) -> Result<(), String> {
    let has = |table: &str| engine.catalog().snapshot().table("music", table).is_some();
    if has("plays") {
        info!("demo data already loaded");
    } else {
        let root = engine.catalog().warehouse().root().clone();
        let dir = root
            .to_file_path()
            .map_err(|()| "--demo needs a local warehouse folder".to_string())?
            .join("_landing")
            .join(format!("demo-sf{scale}"));
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
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let script = substitute_params(LOAD_SQL, &[format!("data={}", dir.display()), "format=csv".to_string()])?;
        let started = std::time::Instant::now();
        run_script(engine, &script, None, false).await?;
        println!("Demo data loaded into schema music in {:.1} s:", started.elapsed().as_secs_f64());
        run_script(
            engine,
            "SELECT count(*) AS plays, count(DISTINCT user_id) AS listeners, count(DISTINCT play_date) AS days FROM music.plays",
            Some(Output::Table),
            false,
        )
        .await?;
    }
    let days = query_column(engine, "SELECT DISTINCT CAST(play_date AS VARCHAR) FROM music.plays ORDER BY 1").await?;
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Err("the demo's music.plays is empty".into());
    };
    let month = first[..7].to_string();
    let steps: [(&str, &str, Vec<Vec<String>>, &str); 4] = [
        (
            "daily_play_counts",
            PIPELINE_A,
            days.iter().map(|d| vec![format!("run_date={d}")]).collect(),
            "SELECT song_id, artist_id, sum(plays) AS plays, sum(listeners) AS listener_days, sum(skips) AS skips \
             FROM music.daily_play_counts GROUP BY song_id, artist_id ORDER BY plays DESC, song_id LIMIT 5",
        ),
        (
            "recommendations",
            PIPELINE_B,
            vec![vec![format!("run_date={last}")]],
            "SELECT r.user_id, r.rank, r.song_id, s.genre, round(r.score, 4) AS score, \
                    (SELECT count(DISTINCT user_id) FROM music.recommendations) AS users_with_recommendations \
             FROM music.recommendations r JOIN music.songs s ON s.song_id = r.song_id \
             WHERE r.user_id = (SELECT min(user_id) FROM music.recommendations) AND r.rank <= 5 ORDER BY r.rank",
        ),
        (
            "royalties",
            PIPELINE_D,
            vec![vec![format!("month={month}")]],
            "SELECT month, model, count(artist_id) AS artists, sum(amount_cents) AS total_cents, \
                    sum(CASE WHEN artist_id IS NULL THEN amount_cents ELSE 0 END) AS unallocated_cents, \
                    max(amount_cents) FILTER (WHERE artist_id IS NOT NULL) AS top_artist_cents \
             FROM music.royalties GROUP BY month, model ORDER BY month, model",
        ),
        (
            "experiment_results",
            PIPELINE_E,
            vec![vec![]],
            "SELECT experiment_id, variant, metric, users, round(value, 4) AS value, round(lift, 4) AS lift, \
                    round(p_value, 6) AS p_value FROM music.experiment_results ORDER BY experiment_id, metric, variant",
        ),
    ];
    for (table, script, runs, summary) in steps {
        if !has(table) {
            let started = std::time::Instant::now();
            for params in &runs {
                run_script(engine, &substitute_params(script, params)?, None, false).await?;
            }
            println!(
                "Pipeline -> music.{table}: {} run(s) in {:.1} s",
                runs.len(),
                started.elapsed().as_secs_f64()
            );
        }
        println!("music.{table}:");
        run_script(engine, summary, Some(Output::Table), false).await?;
    }
    Ok(())
}

/// The first column of a query's result, as strings.
async fn query_column(engine: &Engine, sql: &str) -> Result<Vec<String>, String> {
    let ctx = engine.session();
    let batches = ctx.sql(sql).await.map_err(|e| e.to_string())?.collect().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in batches {
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).map_err(|e| e.to_string())?;
        let strings = column.as_any().downcast_ref::<arrow::array::StringArray>().ok_or("expected strings")?;
        out.extend(strings.iter().flatten().map(str::to_string));
    }
    Ok(out)
}

async fn sql(args: SqlArgs) -> Result<(), String> {
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        (None, None) => return Err("give SQL with -e or a file with -f".into()),
    };
    let script = substitute_params(&script, &args.params)?;
    match &args.connect {
        Some(url) => {
            let password = args.password.clone().ok_or("--connect needs --password or STREAMPULSE_PASSWORD")?;
            run_remote(url, &args.user, &password, &script, args.format).await
        }
        None => {
            let (engine, _) = open_engine(&args.warehouse).await?;
            run_script(&engine, &script, Some(args.format), args.stats).await
        }
    }
}

/// Run every statement of a script in one session, printing results in `print`'s format when
/// given. Stops at the first failing statement and says which one it was.
pub async fn run_script(engine: &Engine, script: &str, print: Option<Output>, stats: bool) -> Result<(), String> {
    let ctx = engine.session();
    let statements = engine.parse(script).map_err(|e| e.to_string())?;
    for (i, (text, statement)) in statements.into_iter().enumerate() {
        let fail = |e: String| {
            format!("statement {} failed: {}\n  in: {}", i + 1, crate::status::explain_if_resources(&e), abbreviate(&text))
        };
        let started = std::time::Instant::now();
        Engine::reset_stats(&ctx);
        let planned = engine.plan(&ctx, &text, statement).await.map_err(|e| fail(e.to_string()))?;
        match planned {
            Planned::Query(plan) => {
                let physical = engine.physical_plan(&ctx, plan).await.map_err(|e| fail(e.to_string()))?;
                let stream = engine.execute(&ctx, Arc::clone(&physical)).map_err(|e| fail(e.to_string()))?;
                let batches: Result<Vec<RecordBatch>, _> = stream.try_collect().await;
                Engine::record_spills(&ctx, &physical);
                let batches = batches.map_err(|e| fail(e.to_string()))?;
                if let Some(format) = print {
                    print_batches(&batches, format)?;
                }
            }
            other => {
                let count = engine.run_command(&ctx, other).await.map_err(|e| fail(e.to_string()))?;
                if let Some(format) = print {
                    print_status(count, format);
                }
            }
        }
        if stats {
            let s = Engine::stats(&ctx);
            eprintln!(
                "-- statement {}: {:.2} s, peak memory {}, spilled {} in {} file(s) \
                 [peak_memory={} spilled_bytes={} spill_count={}]",
                i + 1,
                started.elapsed().as_secs_f64(),
                human_bytes(s.peak_memory),
                human_bytes(s.spilled_bytes),
                s.spill_count,
                s.peak_memory,
                s.spilled_bytes,
                s.spill_count
            );
        }
    }
    Ok(())
}

fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn abbreviate(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 { format!("{}...", one_line.chars().take(200).collect::<String>()) } else { one_line }
}

fn print_status(count: Option<u64>, format: Output) {
    let status = match count {
        Some(n) => format!("{n} row(s) affected"),
        None => "OK".to_string(),
    };
    match format {
        Output::Table => println!("{status}"),
        Output::Csv | Output::Json => eprintln!("{status}"),
    }
}

fn print_batches(batches: &[RecordBatch], format: Output) -> Result<(), String> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if batches.first().is_none_or(|b| b.num_columns() == 0) {
        print_status(None, format);
        return Ok(());
    }
    match format {
        Output::Table => {
            println!("{}", pretty_format_batches(batches).map_err(|e| e.to_string())?);
            println!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        Output::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(std::io::stdout().lock());
            for batch in batches {
                writer.write(batch).map_err(|e| e.to_string())?;
            }
        }
        Output::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
            writer.write_batches(&batches.iter().collect::<Vec<_>>()).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn run_remote(url: &str, user: &str, password: &str, script: &str, format: Output) -> Result<(), String> {
    let endpoint = url.replacen("grpc://", "http://", 1).replacen("grpc+tcp://", "http://", 1);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| format!("bad server address {url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(user, password).await.map_err(|e| format!("login failed: {e}"))?;
    // Split locally with the same parser the server uses, then send statement by statement.
    let statements = streampulse_catalog::engine::split_statements(script).map_err(|e| e.to_string())?;
    for (i, text) in statements.into_iter().enumerate() {
        let fail = |e: String| format!("statement {} failed: {e}\n  in: {}", i + 1, abbreviate(&text));
        let info = client.execute(text.clone(), None).await.map_err(|e| fail(e.to_string()))?;
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else { continue };
            let stream = client.do_get(ticket).await.map_err(|e| fail(e.to_string()))?;
            let mut part: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| fail(e.to_string()))?;
            batches.append(&mut part);
        }
        print_batches(&batches, format)?;
    }
    Ok(())
}

async fn user(args: UserArgs) -> Result<(), String> {
    let (engine, _) = open_engine(&args.warehouse).await?;
    let store = engine.catalog();
    match args.action {
        UserAction::Add { name, role, password } => {
            let role = Role::parse(&role)?;
            if password.len() < 8 {
                return Err("password must have at least 8 characters".into());
            }
            auth::put_user(store, &name, &password, role).await.map_err(|e| e.to_string())?;
            println!("user '{name}' saved with role {}", role.as_str());
        }
        UserAction::List => {
            for (name, entry) in &store.refresh().await.map_err(|e| e.to_string())?.users {
                println!("{name}\t{}", entry.role);
            }
        }
        UserAction::Remove { name } => {
            store
                .commit(|s| {
                    s.users.remove(&name).map(|_| ()).ok_or_else(|| streampulse_catalog::CatalogError::NotFound {
                        kind: "user",
                        name: name.clone(),
                    })
                })
                .await
                .map_err(|e| e.to_string())?;
            println!("user '{name}' removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::substitute_params;

    #[test]
    fn params_are_substituted_and_missing_ones_named() {
        let p = vec!["run_date=2026-10-05".to_string(), "data=/tmp/d".to_string()];
        assert_eq!(
            substitute_params("SELECT '${run_date}' FROM '${data}/x'", &p).unwrap(),
            "SELECT '2026-10-05' FROM '/tmp/d/x'"
        );
        assert!(substitute_params("SELECT ${month}", &p).unwrap_err().contains("--param month="));
        assert!(substitute_params("x", &["novalue".to_string()]).is_err());
    }
}
