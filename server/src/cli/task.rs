//! `streampulse task list | run | backfill | history`: the task statements and `system.runs`,
//! embedded or with `--connect` (the same SQL either way: `SHOW TASKS`, `EXECUTE TASK`, ...).

use super::CliError;
use super::sql::ClientArgs;
use crate::config::WarehouseArgs;
use streampulse_engine::sql::parse_param;

#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TaskCommand {
    /// Every task with its state, schedule, next run and last success (SHOW TASKS)
    List,
    /// Run a task now and wait for it (EXECUTE TASK); exit code 1 when the run fails
    Run {
        /// The task, `schema.name` (schema `public` when omitted)
        name: String,
        /// Give a parameter instead of evaluating it from the time: NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Run a task once for every slot of its schedule on the dates FROM..TO (in the schedule's time zone), each with the parameters the schedule would have given
    Backfill {
        name: String,
        /// First date, YYYY-MM-DD
        #[arg(long)]
        from: String,
        /// Last date, YYYY-MM-DD (included)
        #[arg(long)]
        to: String,
    },
    /// The task's latest runs from system.runs, newest first
    History {
        name: String,
        /// How many runs
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `schema.name` as system.runs names it.
fn qualified(name: &str) -> String {
    let lower = name.to_lowercase();
    if lower.contains('.') { lower } else { format!("public.{lower}") }
}

pub async fn run(args: TaskArgs) -> Result<(), CliError> {
    let sql = match &args.command {
        TaskCommand::List => "SHOW TASKS".to_string(),
        TaskCommand::Run { name, params } => {
            let mut sql = format!("EXECUTE TASK {name}");
            if !params.is_empty() {
                let pairs = params
                    .iter()
                    .map(|p| parse_param(p).map(|(k, v)| format!("{k} = {}", quote(&v))))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(CliError::usage)?;
                sql.push_str(&format!(" WITH ({})", pairs.join(", ")));
            }
            sql
        }
        TaskCommand::Backfill { name, from, to } => {
            format!("EXECUTE TASK {name} BACKFILL FROM {} TO {}", quote(from), quote(to))
        }
        TaskCommand::History { name, limit } => format!(
            "SELECT run_id, scheduled_time, \"trigger\", attempt, state, params, started_at, duration_ms, \
             statements_done, statements_total, \"rows\", error_message, failed_statement, skip_reason \
             FROM system.runs WHERE task = {} ORDER BY started_at DESC LIMIT {limit}",
            quote(&qualified(name))
        ),
    };
    args.client.run(&args.warehouse, &sql, false).await
}
