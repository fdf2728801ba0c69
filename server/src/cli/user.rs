//! `streampulse user add | list | remove`: the users who may connect, stored in the catalog.

use streampulse_engine::{Error, Role};

use super::{CliError, open_engine};
use crate::auth;
use crate::config::WarehouseArgs;

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(subcommand)]
    action: UserAction,
}

#[derive(Debug, clap::Subcommand)]
enum UserAction {
    /// Create a user or change its password and role.
    Add {
        /// User name
        name: String,
        /// admin (everything) or reader (queries and metadata only)
        #[arg(long, default_value = "reader")]
        role: Role,
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

pub async fn run(args: UserArgs) -> Result<(), CliError> {
    let engine = open_engine(&args.warehouse).await?;
    let store = engine.catalog();
    match args.action {
        UserAction::Add { name, role, password } => {
            if password.len() < 8 {
                return Err(CliError::usage("password must have at least 8 characters"));
            }
            auth::put_user(store, &name, &password, role).await?;
            println!("user '{name}' saved with role {role}");
        }
        UserAction::List => {
            for (name, entry) in &store.refresh().await?.users {
                println!("{name}\t{}", entry.role);
            }
        }
        UserAction::Remove { name } => {
            store
                .commit(|s| {
                    s.users
                        .remove(&name)
                        .map(|_| ())
                        .ok_or_else(|| Error::NotFound { kind: "user", name: name.clone() })
                })
                .await?;
            println!("user '{name}' removed");
        }
    }
    Ok(())
}
