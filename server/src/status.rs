//! The one mapping from errors to gRPC status codes.
//!
//! User mistakes (bad SQL, unknown column) are INVALID_ARGUMENT, missing objects NOT_FOUND,
//! memory RESOURCE_EXHAUSTED, storage trouble UNAVAILABLE; INTERNAL is kept for broken
//! invariants, so a client (and an operator reading logs) can trust it means a bug.

use datafusion::error::DataFusionError;
use streampulse_catalog::CatalogError;
use tonic::{Code, Status};

/// Map a catalog/engine error to a status whose message is the engine's own.
pub fn catalog_status(e: CatalogError) -> Status {
    status(catalog_code(&e), &e.to_string())
}

/// Map a DataFusion error to a status.
pub fn datafusion_status(e: DataFusionError) -> Status {
    status(datafusion_code(&e), &e.to_string())
}

/// What DataFusion says when the spill files would pass the disk cap (an I/O error).
const SPILL_DISK_FULL: &str = "exceeded the allowable limit";

fn status(code: Code, message: &str) -> Status {
    let mut message = clean(message);
    let code = if message.contains(SPILL_DISK_FULL) { Code::ResourceExhausted } else { code };
    if code == Code::ResourceExhausted {
        message = explain_resources(&message);
    }
    Status::new(code, message)
}

/// For messages that did not go through a status (the embedded CLI): explain memory and
/// spill-disk exhaustion the same way.
pub fn explain_if_resources(message: &str) -> String {
    if message.contains("Resources exhausted") || message.contains(SPILL_DISK_FULL) {
        explain_resources(&clean(message))
    } else {
        message.to_string()
    }
}

/// Name StreamPulse's settings instead of DataFusion's (which sessions cannot change here).
pub fn explain_resources(message: &str) -> String {
    let message = message.replace("`datafusion.runtime.max_temp_directory_size`", "--spill-max-size (STREAMPULSE_SPILL_MAX_SIZE)");
    if message.contains("--spill-max-size") || message.contains("server busy") || message.contains("Raise --query-memory-limit") {
        return message;
    }
    format!(
        "{message}\nThe query needed more memory than it may use even after spilling. Raise --query-memory-limit \
         (STREAMPULSE_QUERY_MEMORY_LIMIT) or --memory-limit (STREAMPULSE_MEMORY_LIMIT), or reduce what the operators \
         above must hold at once (hash join build sides and window partitions do not spill)."
    )
}

fn clean(message: &str) -> String {
    // DataFusion appends backtraces when built with them; a client wants the first line's sense.
    message.split("\n\nbacktrace").next().unwrap_or(message).trim().to_string()
}

fn catalog_code(e: &CatalogError) -> Code {
    match e {
        CatalogError::DataFusion(e) => datafusion_code(e),
        CatalogError::NotFound { .. } => Code::NotFound,
        CatalogError::AlreadyExists { .. } => Code::AlreadyExists,
        CatalogError::Unsupported(_) | CatalogError::Config(_) => Code::InvalidArgument,
        CatalogError::Conflict(_) => Code::Aborted,
        CatalogError::Corrupt { .. } => Code::DataLoss,
        CatalogError::ObjectStore(e) => object_store_code(e),
        CatalogError::Delta(e) => delta_code(e),
    }
}

fn object_store_code(e: &object_store::Error) -> Code {
    match e {
        object_store::Error::NotFound { .. } => Code::NotFound,
        object_store::Error::AlreadyExists { .. } => Code::AlreadyExists,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            Code::PermissionDenied
        }
        _ => Code::Unavailable,
    }
}

fn delta_code(e: &deltalake::DeltaTableError) -> Code {
    use deltalake::DeltaTableError as D;
    match e {
        D::ObjectStore { source } => object_store_code(source),
        D::NotATable(_) => Code::NotFound,
        D::Io { .. } => Code::Unavailable,
        D::VersionAlreadyExists(_) => Code::Aborted,
        D::Generic(_) | D::GenericError { .. } => Code::Internal,
        _ => Code::InvalidArgument,
    }
}

fn datafusion_code(e: &DataFusionError) -> Code {
    match e {
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            if e.to_string().contains("not found") { Code::NotFound } else { Code::InvalidArgument }
        }
        DataFusionError::NotImplemented(_) | DataFusionError::Configuration(_) => Code::InvalidArgument,
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => Code::InvalidArgument,
        DataFusionError::ObjectStore(e) => object_store_code(e),
        DataFusionError::IoError(_) | DataFusionError::ParquetError(_) => Code::Unavailable,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => datafusion_code(inner),
        DataFusionError::Shared(inner) => datafusion_code(inner),
        DataFusionError::Collection(errors) => errors.first().map(datafusion_code).unwrap_or(Code::Internal),
        DataFusionError::External(inner) => {
            if let Some(c) = inner.downcast_ref::<CatalogError>() {
                catalog_code(c)
            } else if let Some(d) = inner.downcast_ref::<deltalake::DeltaTableError>() {
                delta_code(d)
            } else if let Some(d) = inner.downcast_ref::<DataFusionError>() {
                datafusion_code(d)
            } else if let Some(s) = inner.downcast_ref::<Status>() {
                s.code()
            } else {
                Code::Internal
            }
        }
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mistakes_are_invalid_argument_and_memory_is_exhausted() {
        let s = datafusion_status(DataFusionError::Plan("No field named x".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = datafusion_status(DataFusionError::Plan("table 'streampulse.public.nope' not found".into()));
        assert_eq!(s.code(), Code::NotFound);
        let s = datafusion_status(DataFusionError::ResourcesExhausted("Failed to allocate".into()));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = catalog_status(CatalogError::AlreadyExists { kind: "table", name: "public.t".into() });
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(s.message(), "table 'public.t' already exists");
        let wrapped = DataFusionError::External(Box::new(CatalogError::NotFound { kind: "schema", name: "x".into() }));
        assert_eq!(datafusion_status(wrapped).code(), Code::NotFound);
    }
}
