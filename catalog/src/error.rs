//! Errors of the catalog and engine layer.
//!
//! Every variant names what went wrong and where; the server maps them to gRPC codes in one place.

use datafusion::error::DataFusionError;

/// Result alias for the catalog crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// What can go wrong in the catalog, its storage, or a statement it runs.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The engine rejected or failed a statement (bad SQL, unknown column, memory, ...).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// Reading or writing the warehouse storage failed.
    #[error("warehouse storage: {0}")]
    ObjectStore(#[from] object_store::Error),

    /// A Delta table operation failed.
    #[error("delta table: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    /// A schema, table or view does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },

    /// A schema, table or view already exists.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: &'static str, name: String },

    /// The statement is valid SQL but not something this warehouse accepts.
    #[error("{0}")]
    Unsupported(String),

    /// Configuration is invalid (warehouse URL, S3 settings, sizes).
    #[error("configuration: {0}")]
    Config(String),

    /// Another writer kept committing catalog changes and this one could not get in.
    #[error("catalog commit conflict: {0}")]
    Conflict(String),

    /// The persisted catalog could not be decoded: a bug or a hand-edited file.
    #[error("catalog file {path} is corrupt: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CatalogError {
    /// Turn this error into a `DataFusionError` so it can cross DataFusion trait boundaries.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            CatalogError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
