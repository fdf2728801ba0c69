//! `streampulse sql -e/-f`: run a script embedded (through the core's script runner) or, with
//! `--connect`, statement by statement against a server; print the results.

use std::path::PathBuf;

use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use streampulse_engine::sql::{StatementOutput, parse_param, runner::abbreviate, split_statements, substitute_params};
use streampulse_engine::{Engine, Error};

use super::{CliError, open_engine};
use crate::config::WarehouseArgs;
use crate::config::size::format_bytes;

#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// SQL to run (several statements separated by ;)
    #[arg(short = 'e', long = "execute", conflicts_with = "file", required_unless_present = "file")]
    execute: Option<String>,
    /// File of SQL statements to run
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
    /// Script parameter: every `${name}` in the SQL becomes `value` (repeatable); `${...}` inside $$ task bodies $$ is left for the task's own PARAMS
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// After each statement, print to stderr its wall time, peak pool memory and spills (embedded only; a server logs them for every statement)
    #[arg(long)]
    stats: bool,
}

/// Where statements run and how results print: shared by `sql` and `task`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Run against a server instead of embedded, e.g. grpc://127.0.0.1:50051 [default: embedded]
    #[arg(long, global = true, env = "STREAMPULSE_CONNECT")]
    pub connect: Option<String>,
    /// User for --connect
    #[arg(long, global = true, env = "STREAMPULSE_USER", default_value = "admin")]
    pub user: String,
    /// Password for --connect
    #[arg(long, global = true, env = "STREAMPULSE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// How results are printed: an aligned table, CSV with a header, or JSON lines; with csv/json, stdout holds only result rows ("OK"/row counts go to stderr)
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub format: Output,
}

impl ClientArgs {
    /// Run `script` embedded on `warehouse`, or on the server with `--connect`.
    pub async fn run(&self, warehouse: &WarehouseArgs, script: &str, stats: bool) -> Result<(), CliError> {
        match &self.connect {
            Some(url) => {
                let password = self
                    .password
                    .clone()
                    .ok_or_else(|| CliError::usage("--connect needs --password or STREAMPULSE_PASSWORD"))?;
                run_remote(url, &self.user, &password, script, self.format).await
            }
            None => {
                let engine = open_engine(warehouse).await?;
                run_embedded(&engine, script, Some(self.format), stats).await
            }
        }
    }
}

/// How `streampulse sql` prints query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Csv,
    Json,
}

pub async fn run(args: SqlArgs) -> Result<(), CliError> {
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => return Err(CliError::usage("give SQL with -e or a file with -f")),
    };
    let params = args.params.iter().map(|p| parse_param(p)).collect::<Result<Vec<_>, _>>().map_err(CliError::usage)?;
    let script = substitute_params(&script, &params).map_err(CliError::usage)?;
    args.client.run(&args.warehouse, &script, args.stats).await
}

/// Run a script in one session of `engine`, printing results in `print`'s format when given
/// (and each statement's cost with `stats`). Stops at the first failing statement.
pub async fn run_embedded(engine: &Engine, script: &str, print: Option<Output>, stats: bool) -> Result<(), CliError> {
    let session = engine.session();
    engine
        .run_script(&session, script, print.is_some(), |report| {
            if let Some(format) = print {
                match &report.output {
                    StatementOutput::Rows(batches) => print_batches(batches, format)?,
                    StatementOutput::RowsCounted(_) | StatementOutput::Done => print_status(None, format),
                    StatementOutput::Changed(n) => print_status(Some(*n), format),
                }
            }
            if stats {
                let s = report.stats;
                eprintln!(
                    "-- statement {}: {:.2} s, peak memory {}, spilled {} in {} file(s) \
                     [peak_memory={} spilled_bytes={} spill_count={}]",
                    report.index,
                    report.elapsed.as_secs_f64(),
                    format_bytes(s.peak_memory as u64),
                    format_bytes(s.spilled_bytes as u64),
                    s.spill_count,
                    s.peak_memory,
                    s.spilled_bytes,
                    s.spill_count
                );
            }
            Ok(())
        })
        .await?;
    Ok(())
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

fn print_batches(batches: &[RecordBatch], format: Output) -> Result<(), Error> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if batches.first().is_none_or(|b| b.num_columns() == 0) {
        print_status(None, format);
        return Ok(());
    }
    match format {
        Output::Table => {
            println!("{}", pretty_format_batches(batches)?);
            println!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        Output::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(std::io::stdout().lock());
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Output::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
            writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
            writer.finish()?;
        }
    }
    Ok(())
}

/// A statement that failed on the server, with its position in the script.
#[derive(Debug, thiserror::Error)]
#[error("statement {index} failed: {message}\n  in: {sql}")]
struct RemoteStatementError {
    index: usize,
    message: String,
    sql: String,
}

async fn run_remote(url: &str, user: &str, password: &str, script: &str, format: Output) -> Result<(), CliError> {
    let endpoint = url.replacen("grpc://", "http://", 1).replacen("grpc+tcp://", "http://", 1);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| CliError::usage(format!("bad server address {url}: {e}")))?
        .connect()
        .await
        .map_err(|e| CliError::failed(format!("cannot connect to {url}: {e}")))?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(user, password).await.map_err(|e| CliError::failed(format!("login failed: {e}")))?;
    // Split locally with the same splitter the server uses, then send statement by statement.
    let statements = split_statements(script).map_err(CliError::usage)?;
    for (i, text) in statements.into_iter().enumerate() {
        let fail =
            |message: String| CliError::failed(RemoteStatementError { index: i + 1, message, sql: abbreviate(&text) });
        let info = client.execute(text.clone(), None).await.map_err(|e| fail(e.to_string()))?;
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else { continue };
            let stream = client.do_get(ticket).await.map_err(|e| fail(e.to_string()))?;
            let mut part: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| fail(e.to_string()))?;
            batches.append(&mut part);
        }
        print_batches(&batches, format).map_err(CliError::failed)?;
    }
    Ok(())
}
