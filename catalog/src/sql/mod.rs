//! SQL in, results out: script splitting ([`split`]), `${param}` substitution ([`params`]),
//! statement classification and planning ([`plan`]), and **the one script runner**
//! ([`runner`]) that the CLI, the Flight SQL service and the scheduler all call; [`words`] is
//! what the hand-written task and ingest statement parsers share.

pub mod params;
pub mod plan;
pub mod runner;
pub mod split;
pub mod words;

pub use params::{parse_param, substitute_params};
pub use plan::{Parsed, Planned, StatementKind, count_schema};
pub use runner::{ScriptError, StatementOutput, StatementReport};
pub use split::split_statements;
