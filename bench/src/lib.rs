//! StreamPulse benchmarks and their data: the deterministic generator behind
//! `streampulse datagen`, and the mock of the song metadata API (`streampulse mock-api`). Benchmarks against peers (DuckDB, pandas, Polars, Spark) land here too.

pub mod datagen;
mod direct;
pub mod mock_api;
