//! The one mapping from errors to gRPC status codes. Every `Status` the service answers is
//! made here, from the core's [`ErrorKind`] (the root cause's kind, see
//! `streampulse_engine::error`), by one exhaustive `match`: a new kind does not compile until
//! its code is chosen.
//!
//! User mistakes are INVALID_ARGUMENT, missing objects NOT_FOUND, limits RESOURCE_EXHAUSTED,
//! storage trouble UNAVAILABLE; INTERNAL is kept for broken invariants, so a client (and an
//! operator reading logs) can trust it means a bug.

use streampulse_engine::{Error, ErrorKind};
use tonic::{Code, Status};

/// The gRPC code for a kind of error.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::NotSupported => Code::Unimplemented,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::ResourcesExhausted => Code::ResourceExhausted,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Storage => Code::Unavailable,
        ErrorKind::Corrupt => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
    }
}

/// A code's name as the gRPC protocol spells it (`INVALID_ARGUMENT`), for logs and system tables.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status a client gets for `e`: its kind's code and its user-facing message.
pub fn status(e: impl Into<Error>) -> Status {
    let e = e.into();
    Status::new(code(e.kind()), e.user_message())
}

/// The status of an error raised inside arrow-flight's encoder or decoder: ours passes through
/// unchanged, anything else is a broken invariant of the stream.
pub fn flight_status(e: arrow_flight::error::FlightError) -> Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => status(Error::internal(format!("Flight stream: {other}"))),
    }
}

/// An error of arrow-flight's builders and codecs as the core's error.
pub fn from_flight(e: arrow_flight::error::FlightError) -> Error {
    match e {
        arrow_flight::error::FlightError::Arrow(e) => Error::from(e),
        other => Error::internal(format!("Flight encoding: {other}")),
    }
}

/// An error as arrow-flight's stream error, carrying its status.
pub fn flight_error(e: impl Into<Error>) -> arrow_flight::error::FlightError {
    arrow_flight::error::FlightError::Tonic(Box::new(status(e)))
}

#[cfg(test)]
mod tests {
    use datafusion::error::DataFusionError;

    use super::*;

    #[test]
    fn every_kind_has_its_code() {
        let expected = [
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::InvalidInput, Code::InvalidArgument),
            (ErrorKind::NotSupported, Code::Unimplemented),
            (ErrorKind::Conflict, Code::Aborted),
            (ErrorKind::ResourcesExhausted, Code::ResourceExhausted),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::Unauthenticated, Code::Unauthenticated),
            (ErrorKind::Cancelled, Code::Cancelled),
            (ErrorKind::Storage, Code::Unavailable),
            (ErrorKind::Corrupt, Code::DataLoss),
            (ErrorKind::Internal, Code::Internal),
        ];
        assert_eq!(expected.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            let want = expected.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c);
            assert_eq!(Some(code(kind)), want, "{kind}");
            assert_eq!(kind.code_name(), code_name(code(kind)), "the core's name for {kind}");
        }
    }

    /// One value of every DataFusion error variant with the code a client must see. The
    /// core's `match` over the variants has no wildcard, so a new variant fails to compile
    /// there; this pins what each existing one means to a client.
    #[test]
    fn every_datafusion_error_variant_is_mapped_deliberately() {
        use datafusion::arrow::error::ArrowError;
        let io = || std::io::Error::other("disk");
        let cases: Vec<(DataFusionError, Code)> = vec![
            (DataFusionError::ArrowError(Box::new(ArrowError::CastError("x".into())), None), Code::InvalidArgument),
            (
                DataFusionError::ParquetError(Box::new(datafusion::parquet::errors::ParquetError::EOF("x".into()))),
                Code::DataLoss,
            ),
            (
                DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
                    path: "p".into(),
                    source: "s".into(),
                })),
                Code::NotFound,
            ),
            (DataFusionError::IoError(io()), Code::Unavailable),
            (
                DataFusionError::SQL(
                    Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError("x".into())),
                    None,
                ),
                Code::InvalidArgument,
            ),
            (DataFusionError::NotImplemented("x".into()), Code::Unimplemented),
            (DataFusionError::Internal("x".into()), Code::Internal),
            (DataFusionError::Plan("x".into()), Code::InvalidArgument),
            (DataFusionError::Configuration("x".into()), Code::InvalidArgument),
            (
                DataFusionError::SchemaError(
                    Box::new(datafusion::common::SchemaError::AmbiguousReference {
                        field: Box::new(datafusion::common::Column::from_name("c")),
                    }),
                    Box::new(None),
                ),
                Code::InvalidArgument,
            ),
            (DataFusionError::Execution("x".into()), Code::InvalidArgument),
            (DataFusionError::ResourcesExhausted("x".into()), Code::ResourceExhausted),
            (
                DataFusionError::External(Box::new(Error::AlreadyExists { kind: "table", name: "t".into() })),
                Code::AlreadyExists,
            ),
            (DataFusionError::External("unknown library error".into()), Code::Internal),
            (
                DataFusionError::Context("c".into(), Box::new(DataFusionError::ResourcesExhausted("x".into()))),
                Code::ResourceExhausted,
            ),
            (DataFusionError::Substrait("x".into()), Code::Unimplemented),
            (DataFusionError::Collection(vec![DataFusionError::Plan("x".into())]), Code::InvalidArgument),
            (
                DataFusionError::Shared(std::sync::Arc::new(DataFusionError::NotImplemented("x".into()))),
                Code::Unimplemented,
            ),
            (DataFusionError::Ffi("x".into()), Code::Internal),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            assert_eq!(status(e).code(), want, "{text}");
        }
        let join = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { tokio::spawn(async { panic!("boom") }).await.unwrap_err() });
        assert_eq!(status(DataFusionError::ExecutionJoin(Box::new(join))).code(), Code::Internal);
    }

    #[test]
    fn messages_are_the_engines_own() {
        let s = status(Error::AlreadyExists { kind: "table", name: "public.t".into() });
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(s.message(), "table 'public.t' already exists");
        let s = status(DataFusionError::ResourcesExhausted("Failed to allocate".into()));
        assert!(s.message().contains("--query-memory-limit"), "{}", s.message());
    }
}
