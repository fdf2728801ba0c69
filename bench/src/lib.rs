//! StreamPulse benchmarks and their data: the deterministic generator behind
//! `streampulse datagen`. Benchmarks against peers (DuckDB, pandas, Polars, Spark) land here too.

pub mod datagen;
mod direct;
