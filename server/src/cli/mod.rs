//! The `streampulse` command line, one file per subcommand: [`serve`], [`sql`], [`user`],
//! [`task`], [`datagen`], [`mock_api`], plus `functions` and `config-reference` (printed references).
//!
//! Each command resolves its settings ([`crate::config`]: flags, env vars, the TOML file,
//! defaults), builds the one engine, and hands it to the server or to the core's script runner.
//! Exit codes: 0 done, 1 the work failed, 2 the command line or configuration is wrong.

pub mod cluster;
pub mod datagen;
pub mod mock_api;
pub mod serve;
pub mod sql;
pub mod task;
pub mod user;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use streampulse_engine::{Engine, ErrorKind};

use crate::config::WarehouseArgs;

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
    Serve(serve::ServeArgs),
    /// Run SQL statements and print the results: embedded (no server needed) or, with
    /// --connect, against a running server.
    Sql(sql::SqlArgs),
    /// Manage the users who may connect (stored in the warehouse catalog).
    User(user::UserArgs),
    /// List, run, backfill tasks and show their run history: embedded or with --connect.
    Task(task::TaskArgs),
    /// Print the reference of StreamPulse's SQL functions (Markdown).
    Functions,
    /// Print the configuration reference: every setting, its env var, TOML key and default (Markdown).
    ConfigReference,
    /// Generate the StreamPulse dataset (plays, users, songs, ...) at a scale factor.
    Datagen(datagen::DatagenArgs),
    /// Run a cluster scheduler (Apache DataFusion Ballista) with StreamPulse's functions: `serve --cluster` sends queries here.
    Scheduler(cluster::SchedulerArgs),
    /// Run a cluster executor that registers with a scheduler and runs query tasks.
    Executor(cluster::ExecutorArgs),
    /// Serve a mock of the song metadata API (pipeline C) from a datagen folder, with latency and faults.
    MockApi(mock_api::MockApiArgs),
}

/// Why a command failed, which decides its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The command line or configuration is wrong (exit code 2).
    Usage(Box<dyn std::error::Error + Send + Sync>),
    /// The work itself failed (exit code 1).
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl CliError {
    /// A failure of the work.
    pub fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CliError::Failed(e.into())
    }

    /// A wrong command line or configuration.
    pub fn usage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CliError::Usage(e.into())
    }
}

impl From<streampulse_engine::Error> for CliError {
    fn from(e: streampulse_engine::Error) -> Self {
        CliError::Failed(Box::new(e))
    }
}

impl From<streampulse_engine::ScriptError> for CliError {
    fn from(e: streampulse_engine::ScriptError) -> Self {
        CliError::Failed(Box::new(e))
    }
}

/// Parse the command line (with the `--config` file merged in) and run it.
pub async fn run() -> ExitCode {
    let command = Cli::command();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = command.clone().try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
    let given = argv.len();
    let argv = match crate::config::file::merge(&command, &matches, argv) {
        Ok(argv) => argv,
        Err(message) => return report(CliError::usage(message)),
    };
    let cli = match command.try_get_matches_from(&argv).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        // The command line alone parsed: what fails now came from the --config file.
        Err(e) if argv.len() > given => {
            let clap_message = e.render().to_string();
            let detail = clap_message.trim_start_matches("error: ").trim_end();
            return report(CliError::usage(format!("a setting in the --config file is wrong: {detail}")));
        }
        Err(e) => e.exit(),
    };
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Sql(args) => sql::run(args).await,
        Command::User(args) => user::run(args).await,
        Command::Task(args) => task::run(args).await,
        Command::Datagen(args) => datagen::run(args),
        Command::MockApi(args) => mock_api::run(args).await,
        Command::Scheduler(args) => cluster::run_scheduler_role(args).await,
        Command::Executor(args) => cluster::run_executor_role(args).await,
        Command::Functions => {
            print!("{}", streampulse_udfs::reference_markdown());
            Ok(())
        }
        Command::ConfigReference => {
            print!("{}", crate::config::reference::markdown(&Cli::command()));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

/// Print an error with the causes its message does not already say, and pick the exit code.
fn report(error: CliError) -> ExitCode {
    let (code, e) = match &error {
        CliError::Usage(e) => (2, e.as_ref()),
        CliError::Failed(e) => (1, e.as_ref()),
    };
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // DataFusion's wrappers repeat their inner error behind a prefix of their own.
        let bare = ["External error: ", "Execution error: "].iter().fold(text.as_str(), |t, p| t.trim_start_matches(p));
        if !message.contains(bare) {
            message.push_str(&format!("\n  caused by: {text}"));
        }
        source = cause.source();
    }
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STREAMPULSE_LOG").unwrap_or_else(|_| {
        EnvFilter::new(
            "info,datafusion=warn,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,delta_kernel=warn,h2=warn,\
             tower=warn,hyper=warn",
        )
    });
    let json = std::env::var("STREAMPULSE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Build the engine from the warehouse settings. A setting the engine refuses (a bad
/// location, S3 without credentials) is a usage error.
pub async fn open_engine(args: &WarehouseArgs) -> Result<Engine, CliError> {
    let setup = |e: streampulse_engine::Error| {
        if e.kind() == ErrorKind::InvalidInput { CliError::usage(e) } else { CliError::failed(e) }
    };
    let config = args.engine_config().map_err(setup)?;
    Engine::open(config).await.map_err(setup)
}
