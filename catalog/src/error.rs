//! The core's one error type, by kind.
//!
//! Each variant says what went wrong in words a user can act on (which table, which setting);
//! [`Error::kind`] says what *kind* of failure it is, walking wrapped DataFusion, Arrow, Delta
//! and object-store errors down to their root cause. Protocols choose their answer from the kind
//! alone (the Flight SQL service maps it to a gRPC code in one exhaustive `match`; the CLI to an
//! exit code), so no caller ever reads an error's text to decide what it means.

use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;
use deltalake::DeltaTableError;

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the warehouse core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A schema, table, view, user or other named object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// What was looked for: `schema`, `table`, `view`, `user`, ...
        kind: &'static str,
        /// Its name as the user wrote it (qualified where that helps).
        name: String,
    },

    /// A named object already exists.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists {
        /// `schema`, `table`, `view`, ...
        kind: &'static str,
        /// Its qualified name.
        name: String,
    },

    /// The request is wrong: bad SQL, a bad setting, data that does not fit a table.
    #[error("{0}")]
    InvalidInput(String),

    /// Valid, but not something this warehouse does (temporary tables, transactions, ...).
    #[error("{0}")]
    NotSupported(String),

    /// Another writer changed the same thing first; retrying may succeed.
    #[error("conflict: {0}")]
    Conflict(String),

    /// A memory, disk or concurrency limit was reached; the message names the setting.
    #[error("{0}")]
    ResourcesExhausted(String),

    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),

    /// The caller is not known (no or wrong credentials, expired token).
    #[error("{0}")]
    Unauthenticated(String),

    /// The statement was cancelled or timed out.
    #[error("{0}")]
    Cancelled(String),

    /// Storage could not be reached or failed (object store, file system, Delta log I/O).
    #[error("warehouse storage: {0}")]
    Storage(#[source] StorageError),

    /// An outside source (an HTTP API, a cluster's scheduler) could not deliver all of its data.
    #[error("{0}")]
    Source(String),

    /// Stored state could not be decoded: a bug or a hand-edited file.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// What was being read.
        path: String,
        /// What was wrong with it.
        detail: String,
    },

    /// A broken invariant: a bug in the warehouse.
    #[error("internal error: {0}")]
    Internal(String),

    /// An error raised by the engine; its kind is that of its root cause.
    #[error(transparent)]
    Engine(#[from] DataFusionError),
}

/// The storage layers a [`Error::Storage`] comes from.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Object store (local file system or S3).
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    /// A Delta table operation.
    #[error("delta table: {0}")]
    Delta(#[from] DeltaTableError),
    /// The local file system (spill and staging files, the warehouse folder).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What kind of failure an error is: all a protocol needs to choose its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Named object missing.
    NotFound,
    /// Named object already there.
    AlreadyExists,
    /// The caller's mistake.
    InvalidInput,
    /// Not something the warehouse does.
    NotSupported,
    /// Lost a race with another writer.
    Conflict,
    /// A limit was reached.
    ResourcesExhausted,
    /// Known caller, not allowed.
    PermissionDenied,
    /// Unknown caller.
    Unauthenticated,
    /// Cancelled or timed out.
    Cancelled,
    /// Storage failed or is unreachable.
    Storage,
    /// Stored state is damaged.
    Corrupt,
    /// A bug.
    Internal,
}

impl ErrorKind {
    /// The status name a client sees for this kind (gRPC's spelling, `INVALID_ARGUMENT`), for
    /// system tables and logs written without a protocol (embedded, task runs). The server
    /// tests that it agrees with its own code mapping.
    pub fn code_name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::InvalidInput => "INVALID_ARGUMENT",
            ErrorKind::NotSupported => "UNIMPLEMENTED",
            ErrorKind::Conflict => "ABORTED",
            ErrorKind::ResourcesExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Storage => "UNAVAILABLE",
            ErrorKind::Corrupt => "DATA_LOSS",
            ErrorKind::Internal => "INTERNAL",
        }
    }

    /// Every kind, for tests that pin each one's protocol answer.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidInput,
        ErrorKind::NotSupported,
        ErrorKind::Conflict,
        ErrorKind::ResourcesExhausted,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::Cancelled,
        ErrorKind::Storage,
        ErrorKind::Corrupt,
        ErrorKind::Internal,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotSupported => "not supported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ResourcesExhausted => "resources exhausted",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Storage => "storage",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Internal => "internal",
        };
        f.write_str(name)
    }
}

impl Error {
    /// [`Error::InvalidInput`] from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// [`Error::NotSupported`] from anything printable.
    pub fn not_supported(message: impl Into<String>) -> Self {
        Error::NotSupported(message.into())
    }

    /// [`Error::Internal`] from anything printable.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The kind of this error, from its root cause.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::NotSupported(_) => ErrorKind::NotSupported,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::Storage(StorageError::ObjectStore(e)) => object_store_kind(e),
            Error::Storage(StorageError::Delta(e)) => delta_kind(e),
            Error::Storage(StorageError::Io(e)) => io_kind(e),
            Error::Source(_) => ErrorKind::Storage,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Engine(e) => datafusion_kind(e),
        }
    }

    /// The message a user sees: the error's text without DataFusion's backtrace, and for
    /// exhausted resources, which StreamPulse setting to raise.
    pub fn user_message(&self) -> String {
        let text = self.to_string();
        let text = text.split("\n\nbacktrace").next().unwrap_or(&text).trim();
        // DataFusion's wrapper of our own errors adds nothing a user needs.
        let text = text.strip_prefix("External error: ").unwrap_or(text).to_string();
        if self.kind() == ErrorKind::ResourcesExhausted { explain_resources(&text) } else { text }
    }

    /// This error as a `DataFusionError`, to cross DataFusion trait boundaries (it keeps its
    /// kind: [`Error::kind`] finds it again inside `External`).
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            Error::Engine(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Storage(StorageError::ObjectStore(e))
    }
}

impl From<DeltaTableError> for Error {
    fn from(e: DeltaTableError) -> Self {
        Error::Storage(StorageError::Delta(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(StorageError::Io(e))
    }
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Error::Engine(DataFusionError::from(e))
    }
}

impl From<ParquetError> for Error {
    fn from(e: ParquetError) -> Self {
        Error::Engine(DataFusionError::from(e))
    }
}

/// Name StreamPulse's settings in a resources-exhausted message (DataFusion names its own,
/// which sessions cannot change here).
pub fn explain_resources(message: &str) -> String {
    let message = message
        .replace("`datafusion.runtime.max_temp_directory_size`", "--spill-max-size (STREAMPULSE_SPILL_MAX_SIZE)");
    if message.contains("--spill-max-size")
        || message.contains("--max-concurrent-queries")
        || message.contains("--max-message-size")
        || message.contains("Raise --query-memory-limit")
    {
        return message;
    }
    format!(
        "{message}\nThe query needed more memory than it may use even after spilling. Raise --query-memory-limit \
         (STREAMPULSE_QUERY_MEMORY_LIMIT) or --memory-limit (STREAMPULSE_MEMORY_LIMIT), or reduce what the operators \
         above must hold at once (hash join build sides and window partitions do not spill)."
    )
}

/// The kind of a DataFusion error: its own for leaf variants, its cause's for wrappers.
pub fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::ArrowError(e, _) => arrow_kind(e),
        DataFusionError::ParquetError(e) => parquet_kind(e),
        DataFusionError::ObjectStore(e) => object_store_kind(e),
        DataFusionError::IoError(e) => io_kind(e),
        DataFusionError::SQL(..) => ErrorKind::InvalidInput,
        DataFusionError::NotImplemented(_) => ErrorKind::NotSupported,
        DataFusionError::Internal(_) => ErrorKind::Internal,
        DataFusionError::Plan(_) => ErrorKind::InvalidInput,
        DataFusionError::Configuration(_) => ErrorKind::InvalidInput,
        DataFusionError::SchemaError(..) => ErrorKind::InvalidInput,
        // Raised while running: bad values (casts, division), bad files, failed UDF checks.
        DataFusionError::Execution(_) => ErrorKind::InvalidInput,
        // A task panicked or was aborted.
        DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
        DataFusionError::External(inner) => external_kind(inner.as_ref()),
        DataFusionError::Context(_, inner) => datafusion_kind(inner),
        DataFusionError::Substrait(_) => ErrorKind::NotSupported,
        DataFusionError::Diagnostic(_, inner) => datafusion_kind(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(ErrorKind::Internal, datafusion_kind),
        DataFusionError::Shared(inner) => datafusion_kind(inner),
        DataFusionError::Ffi(_) => ErrorKind::Internal,
    }
}

/// The kind of a boxed error from outside DataFusion: the first type we know, else internal.
fn external_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(e) = e.downcast_ref::<Error>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<DataFusionError>() {
        datafusion_kind(e)
    } else if let Some(e) = e.downcast_ref::<DeltaTableError>() {
        delta_kind(e)
    } else if let Some(e) = e.downcast_ref::<ArrowError>() {
        arrow_kind(e)
    } else if let Some(e) = e.downcast_ref::<ParquetError>() {
        parquet_kind(e)
    } else if let Some(e) = e.downcast_ref::<object_store::Error>() {
        object_store_kind(e)
    } else if let Some(e) = e.downcast_ref::<std::io::Error>() {
        io_kind(e)
    } else {
        ErrorKind::Internal
    }
}

fn arrow_kind(e: &ArrowError) -> ErrorKind {
    match e {
        ArrowError::ExternalError(inner) => external_kind(inner.as_ref()),
        ArrowError::IoError(_, e) => io_kind(e),
        ArrowError::MemoryError(_) => ErrorKind::ResourcesExhausted,
        ArrowError::NotYetImplemented(_) => ErrorKind::NotSupported,
        ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::SchemaError(_)
        | ArrowError::ComputeError(_)
        | ArrowError::DivideByZero
        | ArrowError::ArithmeticOverflow(_)
        | ArrowError::CsvError(_)
        | ArrowError::JsonError(_)
        | ArrowError::AvroError(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::DictionaryKeyOverflowError
        | ArrowError::RunEndIndexOverflowError
        | ArrowError::OffsetOverflowError(_) => ErrorKind::InvalidInput,
        // Damaged IPC or Parquet bytes.
        ArrowError::IpcError(_) | ArrowError::ParquetError(_) => ErrorKind::Corrupt,
        ArrowError::CDataInterface(_) => ErrorKind::Internal,
    }
}

fn parquet_kind(e: &ParquetError) -> ErrorKind {
    match e {
        ParquetError::External(inner) => external_kind(inner.as_ref()),
        ParquetError::NYI(_) => ErrorKind::NotSupported,
        // Everything else is about the bytes of a file: truncated, mis-encoded, unreadable.
        // (ParquetError is non-exhaustive, so the rest must be named together.)
        _ => ErrorKind::Corrupt,
    }
}

fn object_store_kind(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as O;
    match e {
        O::NotFound { .. } => ErrorKind::NotFound,
        O::AlreadyExists { .. } | O::Precondition { .. } => ErrorKind::Conflict,
        O::PermissionDenied { .. } | O::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        O::NotSupported { .. } | O::NotImplemented { .. } => ErrorKind::NotSupported,
        O::InvalidPath { .. } | O::UnknownConfigurationKey { .. } => ErrorKind::InvalidInput,
        // object_store's error is non-exhaustive: whatever else it adds is a storage failure.
        _ => ErrorKind::Storage,
    }
}

/// DataFusion's disk manager reports a full spill budget as a plain `io::Error::other`, with
/// no type of its own; this is the one place its text is recognised (pinned by a test).
const SPILL_DISK_LIMIT: &str = "The used disk space during the spilling process has exceeded the allowable limit";

fn io_kind(e: &std::io::Error) -> ErrorKind {
    if e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with(SPILL_DISK_LIMIT) {
        return ErrorKind::ResourcesExhausted;
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => ErrorKind::ResourcesExhausted,
        _ => ErrorKind::Storage,
    }
}

fn delta_kind(e: &DeltaTableError) -> ErrorKind {
    use DeltaTableError as D;
    match e {
        D::ObjectStore { source } => object_store_kind(source),
        D::Parquet { source } => parquet_kind(source),
        D::Arrow { source } => arrow_kind(source),
        D::Io { source } => io_kind(source),
        D::InvalidJsonLog { .. } | D::InvalidStatsJson { .. } | D::NoSchema | D::SerializeLogJson { .. } => {
            ErrorKind::Corrupt
        }
        D::InvalidVersion(_) | D::NotATable(_) | D::NotInitialized | D::NotInitializedWithFiles(_) => {
            ErrorKind::NotFound
        }
        D::VersionDowngrade { .. }
        | D::InvalidDateTimeString { .. }
        | D::InvalidData { .. }
        | D::SchemaMismatch { .. }
        | D::PartitionError { .. }
        | D::InvalidPartitionFilter { .. }
        | D::InvalidTableLocation(_)
        | D::ChangeDataNotRecorded { .. }
        | D::ChangeDataNotEnabled { .. }
        | D::ChangeDataInvalidVersionRange { .. }
        | D::ChangeDataTimestampGreaterThanCommit { .. }
        | D::NoStartingVersionOrTimestamp => ErrorKind::InvalidInput,
        D::CommitValidation { .. } | D::Transaction { .. } | D::VersionAlreadyExists(_) | D::VersionMismatch(..) => {
            ErrorKind::Conflict
        }
        D::MissingFeature { .. } | D::UnsupportedColumnMapping { .. } => ErrorKind::NotSupported,
        // deltalake flattens the DataFusion errors of its own plans into text (Generic), so
        // their kind is lost there; the kernel's errors are about the log's contents.
        D::KernelError(_) | D::Kernel { .. } | D::MetadataError(_) | D::Generic(_) | D::GenericError { .. } => {
            ErrorKind::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_take_their_root_cause_kind() {
        let not_found = Error::NotFound { kind: "table", name: "public.t".into() };
        let wrapped = DataFusionError::Context(
            "planning".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(not_found.into_datafusion()))),
        );
        assert_eq!(Error::Engine(wrapped).kind(), ErrorKind::NotFound);
        let arrow = DataFusionError::ArrowError(
            Box::new(ArrowError::ExternalError(Box::new(DataFusionError::ResourcesExhausted("x".into())))),
            None,
        );
        assert_eq!(datafusion_kind(&arrow), ErrorKind::ResourcesExhausted);
        let unknown = DataFusionError::External("some library's error".into());
        assert_eq!(datafusion_kind(&unknown), ErrorKind::Internal);
    }

    #[test]
    fn the_spill_disk_limit_is_resources_exhausted() {
        // DataFusion's own text (datafusion-execution's disk_manager.rs), as its spill writer raises it.
        let e = std::io::Error::other(format!("{SPILL_DISK_LIMIT} of 16.0 MB. Consider increasing ..."));
        assert_eq!(datafusion_kind(&DataFusionError::IoError(e)), ErrorKind::ResourcesExhausted);
        let other = std::io::Error::other("disk on fire");
        assert_eq!(datafusion_kind(&DataFusionError::IoError(other)), ErrorKind::Storage);
    }

    #[test]
    fn user_message_names_the_settings_for_memory() {
        let e = Error::Engine(DataFusionError::ResourcesExhausted("Failed to allocate 1 MB".into()));
        assert!(e.user_message().contains("--query-memory-limit"), "{}", e.user_message());
        assert_eq!(Error::invalid("bad").user_message(), "bad");
    }
}
