//! What the catalog holds at one version: schemas, tables, views, users and tasks. Plain data,
//! serialised as one JSON file per version by [`super::store::CatalogStore`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The schema every fresh warehouse has.
pub const DEFAULT_SCHEMA: &str = "public";

/// The whole catalog at one version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CatalogState {
    /// Monotonic version; the file name carries the same number.
    pub version: u64,
    /// Schemas by name.
    pub schemas: BTreeMap<String, SchemaEntry>,
    /// Users of the service by name (the server interprets the hash and role).
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    /// Scheduled SQL scripts by `schema.name` (the scheduler interprets them).
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskEntry>,
    /// Continuous loads by `schema.name` (the server's pipe service runs them).
    #[serde(default)]
    pub pipes: BTreeMap<String, PipeEntry>,
}

/// A pipe: a `COPY INTO` the server runs again and again, loading new files as they land.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipeEntry {
    /// The `COPY INTO ...` statement as written.
    pub copy_sql: String,
    /// Milliseconds between looks at the location when it has nothing new.
    pub interval_ms: u64,
    /// `running` or `paused`.
    pub state: String,
    /// Who created it; its batches run as this user.
    pub owner: String,
    #[serde(default)]
    pub comment: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    pub updated_at: String,
}

/// A task: a SQL script the scheduler runs on a schedule or after other tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEntry {
    /// `SCHEDULE = '...'` as written; `None` for a task that runs after its upstreams.
    pub schedule: Option<String>,
    /// Upstream tasks (`schema.name`) that must have succeeded for the same scheduled time.
    #[serde(default)]
    pub after: Vec<String>,
    /// `name = expression over scheduled_time`, in order.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    /// `skip` or `queue`.
    pub overlap: String,
    /// `latest`, `all` or `none`.
    pub catchup: String,
    /// Most slots one catch-up runs (`CATCHUP = ALL`).
    pub max_catchup_runs: u32,
    /// Further attempts after a failed run.
    pub retries: u32,
    /// Seconds before the first retry; doubled for each further one.
    pub retry_delay_secs: u64,
    /// Seconds a run may take before it is cancelled.
    pub timeout_secs: Option<u64>,
    /// Consecutive failed runs after which the task suspends itself.
    pub suspend_after_failures: Option<u32>,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
    /// The script, statements separated by `;`, with `${param}`s.
    pub body: String,
    /// Who created (or last replaced) it; runs as this user.
    pub owner: String,
    /// `started` or `suspended`.
    pub state: String,
    /// Why it is suspended when the scheduler suspended it.
    #[serde(default)]
    pub suspended_reason: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    pub updated_at: String,
    /// When it was last resumed: slots before this never run (missed while suspended).
    #[serde(default)]
    pub resumed_at: Option<String>,
}

/// One schema and the objects in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SchemaEntry {
    /// Tables and views by name.
    pub tables: BTreeMap<String, TableEntry>,
}

/// What a name in a schema refers to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TableEntry {
    /// A Delta table owned by the warehouse, stored under `location` (relative to the root).
    Managed {
        /// Folder relative to the warehouse root.
        location: String,
        /// Hive-style partition columns.
        partition_columns: Vec<String>,
    },
    /// Files owned by someone else, described by the `CREATE EXTERNAL TABLE` statement.
    External {
        /// The normalised statement, re-planned when the table is opened.
        sql: String,
        /// Location as given, for listings.
        location: String,
    },
    /// A view, described by its `CREATE VIEW` statement.
    View {
        /// The statement, re-planned when the view is used.
        sql: String,
    },
}

impl TableEntry {
    /// `TABLE` or `VIEW`, as Flight SQL and `information_schema` name them.
    pub fn table_type(&self) -> &'static str {
        match self {
            TableEntry::View { .. } => "VIEW",
            _ => "TABLE",
        }
    }
}

/// A user of the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserEntry {
    /// PHC-format password hash.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
}

/// What a user may do. Stored as `"admin"` / `"reader"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: DDL, DML, ingest, queries.
    Admin,
    /// Queries and metadata only.
    Reader,
}

impl Role {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Ok(Role::Admin),
            "reader" => Ok(Role::Reader),
            other => Err(Error::invalid(format!("unknown role '{other}': use admin or reader"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CatalogState {
    /// Look up an entry.
    pub fn table(&self, schema: &str, table: &str) -> Option<&TableEntry> {
        self.schemas.get(schema)?.tables.get(table)
    }

    /// Whether some managed table is stored at `location`.
    pub fn has_location(&self, location: &str) -> bool {
        self.schemas.values().flat_map(|s| s.tables.values()).any(|t| match t {
            TableEntry::Managed { location: l, .. } => l == location,
            _ => false,
        })
    }

    /// The schema, or a clear error.
    pub fn schema_mut(&mut self, schema: &str) -> Result<&mut SchemaEntry> {
        self.schemas.get_mut(schema).ok_or_else(|| Error::NotFound { kind: "schema", name: schema.to_string() })
    }
}
