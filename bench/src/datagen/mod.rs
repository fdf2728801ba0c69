//! The StreamPulse data generator: deterministic, parallel, streaming.
//!
//! **Scale.** SF 1 is the audit's volume today: 100 M plays, 5 M users, 500 k songs, 100 k
//! artists over 30 days. Plays and users scale linearly with SF; songs and artists with √SF
//! (catalogues grow slower than audiences), with floors so tiny SFs stay meaningful.
//!
//! **Determinism.** Every random stream is a ChaCha8 generator seeded from `(seed, stream id)`:
//! the plays are cut into fixed chunks, each with its own stream, so the output is identical
//! whatever the number of threads or the order they run in.
//!
//! **Shape.** Song and artist popularity are Zipf-distributed (songs are drawn from alias tables
//! built once from the Zipf weights, O(1) per draw, one random number and one memory access); user activity is heavy-tailed
//! (Pareto); plays follow a weekly and hourly rhythm. Each user belongs to one of 20 taste
//! clusters that prefer two genres: 70 % of a user's plays come from their cluster's genres, and
//! songs outside their taste are skipped more often; each user also has their own log-normal
//! skip propensity. The clusters are written to `truth/` so a recommender can be scored against
//! them. Both experiments start on day 15 (the 14 days before are a pre-period for CUPED) and
//! split users 50/50: `shuffle-v2` has a planted effect (treatment skips 20 % less from the start
//! date on); `home-layout` has none (an A/A test).
//!
//! **Output** (`--out DIR`): `plays/part-NNNNN.{csv,parquet}`, `users`, `songs`, `artists`,
//! `subscriptions`, `ad_revenue`, `experiments`, `truth/user_clusters`, `truth/clusters`,
//! live events as gzip JSONL under `events/year=YYYY/month=M/day=D/<unix_ts>_<chunk>_<day>_<seq>.gz`
//! (≈6,500 lines per file, for the last `event_days` days), and `manifest.json`.
//!
//! **Speed.** Users and songs are drawn a batch at a time from alias tables that hold their
//! payloads (one random number and one memory access per draw, misses overlapped); each line is
//! built in a fixed buffer with fixed-size copies (digit pairs, padded names, calendar arithmetic
//! for timestamps) rather than through `format!`/chrono/serde; event lines reach the gzip encoder
//! a batch at a time; the dimension tables are written while the plays are generated; Parquet
//! skips dictionaries for near-unique columns; the plays CSV files are written with `O_DIRECT`
//! by a thread per file (no kernel copy into the page cache: see `direct`). Measurements in
//! bench/RESULTS.md.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, Duration, NaiveDate};
use flate2::Compression;
use flate2::write::GzEncoder;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Pareto, StandardNormal, Zipf};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use streampulse_udfs::scalar::ab_bucket::bucket_of;

use crate::direct::DirectFile;

mod alias;
mod audience;
mod catalog;
mod dimensions;
mod events;
mod live;
mod plays;

use alias::*;
use audience::*;
use catalog::*;
use dimensions::*;
use events::*;
pub use live::{LiveConfig, LiveProgress, live};
use plays::*;

/// Errors of the generator; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatagenError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Arrow { path: PathBuf, source: arrow::error::ArrowError },
    #[error("writing {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
}

type Result<T> = std::result::Result<T, DatagenError>;

/// File format of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub scale: f64,
    pub out: PathBuf,
    pub format: Format,
    pub seed: u64,
    /// Days (counted back from the last) written as live-event JSONL too.
    pub event_days: u32,
    /// Share of plays rows written malformed (CSV only), for bad-input tests.
    pub dirty_fraction: f64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Row counts at a scale factor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub plays: u64,
    pub users: u64,
    pub songs: u64,
    pub artists: u64,
    pub days: u32,
}

impl Scale {
    /// Plays and users linear in SF, songs and artists in √SF, with floors.
    pub fn of(sf: f64) -> Self {
        Scale {
            plays: ((100_000_000.0 * sf).round() as u64).max(1_000),
            users: ((5_000_000.0 * sf).round() as u64).max(100),
            songs: ((500_000.0 * sf.sqrt()).round() as u64).max(500),
            artists: ((100_000.0 * sf.sqrt()).round() as u64).max(50),
            days: DAYS,
        }
    }
}

/// What was written: the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub scale_factor: f64,
    pub seed: u64,
    pub format: Format,
    pub counts: Scale,
    pub first_day: String,
    pub event_days: u32,
    pub dirty_rows: u64,
    pub event_files: u64,
    pub plays_files: u64,
}

const DAYS: u32 = 30;
const CLUSTERS: usize = 20;
/// Plays per chunk: at most 1 M, and small enough that small scales still use every core.
/// A function of the scale only, so the output stays identical whatever the thread count.
fn chunk_rows(plays: u64) -> u64 {
    (plays / 32).clamp(50_000, 1_000_000)
}
const BATCH_ROWS: usize = 65_536;
/// Users per block of the audience, each block with its own random stream.
const USER_BLOCK: usize = 65_536;
/// Random stream ids: 1–3 catalogue, dimensions; 1,000 + chunk for plays; from here, user blocks.
const USER_STREAMS: u64 = 1 << 40;
const EVENTS_PER_FILE: usize = 6_500;
/// Share of a user's plays drawn from their taste cluster's genres.
const IN_TASTE_SHARE: f64 = 0.7;

/// The first day of generated activity (UTC).
pub fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 1).unwrap_or_default()
}

/// [`first_day`] as days since 1970-01-01.
fn first_day_epoch_days() -> i64 {
    first_day().to_epoch_days().into()
}

pub const GENRES: [&str; 12] =
    ["pop", "rock", "hip-hop", "electronic", "jazz", "classical", "country", "r&b", "latin", "metal", "folk", "reggae"];
const COUNTRIES: [(&str, f64); 10] = [
    ("US", 0.30),
    ("GB", 0.10),
    ("DE", 0.10),
    ("FR", 0.08),
    ("BR", 0.12),
    ("SE", 0.04),
    ("MX", 0.08),
    ("JP", 0.06),
    ("IN", 0.08),
    ("ES", 0.04),
];
/// Plan, share of users, monthly price in cents.
const PLANS: [(&str, f64, i64); 4] =
    [("free", 0.55, 0), ("premium", 0.30, 1099), ("family", 0.10, 1799), ("student", 0.05, 599)];
const SOURCES: [&str; 5] = ["playlist", "album", "radio", "search", "recommendation"];
const DEVICES: [&str; 5] = ["mobile", "desktop", "web", "speaker", "tv"];
/// Relative activity by hour of day (UTC): quiet nights, evening peak.
const HOUR_WEIGHTS: [f64; 24] = [
    0.6, 0.4, 0.3, 0.2, 0.2, 0.3, 0.6, 1.0, 1.3, 1.2, 1.1, 1.1, 1.2, 1.2, 1.1, 1.1, 1.3, 1.6, 1.9, 2.1, 2.2, 2.0, 1.6,
    1.0,
];

/// The experiments: id, name, salt, planted effect on treatment's skip probability (from the
/// start day on; the days before are the pre-period CUPED reads).
pub const EXPERIMENTS: [(i64, &str, &str, f64); 2] =
    [(1, "shuffle-v2", "exp-shuffle-v2", 0.8), (2, "home-layout", "exp-home-layout", 1.0)];
/// Both experiments run from this day (0-based, so 2026-10-15) to the last day.
pub const EXPERIMENT_START_DAY: u32 = 14;
/// The configured share of each experiment's users in treatment.
pub const TREATMENT_SHARE: f64 = 0.5;

/// Treatment when `ab_bucket(user_id, salt, 100) >= 50`.
pub fn in_treatment(user_id: u64, salt: &str) -> bool {
    bucket_of(&user_id.to_string(), salt, 100) >= 50
}

/// The genres a taste cluster prefers.
pub fn cluster_genres(cluster: usize) -> [usize; 2] {
    [cluster % GENRES.len(), (cluster * 5 + 3) % GENRES.len()]
}

fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatagenError + '_ {
    move |source| DatagenError::Io { path: path.to_path_buf(), source }
}

/// Generate everything described by `config`.
pub fn generate(config: &Config) -> Result<Manifest> {
    if !(config.scale > 0.0 && config.scale.is_finite()) {
        return Err(DatagenError::Config(format!("scale must be a positive number, got {}", config.scale)));
    }
    if !(0.0..=0.5).contains(&config.dirty_fraction) {
        return Err(DatagenError::Config("dirty fraction must be between 0 and 0.5".into()));
    }
    if config.dirty_fraction > 0.0 && config.format != Format::Csv {
        return Err(DatagenError::Config("dirty rows are only written in CSV".into()));
    }
    if config.event_days > DAYS {
        return Err(DatagenError::Config(format!("event days must be at most {DAYS}")));
    }
    let scale = Scale::of(config.scale);
    for dir in ["plays", "truth", "events"] {
        let p = config.out.join(dir);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let started = std::time::Instant::now();
    let (catalog, audience) = rayon::join(|| build_catalog(config, &scale), || build_audience(config, &scale));
    let audience = audience?;
    tracing::debug!(elapsed = ?started.elapsed(), "datagen: catalogue and audience built");

    let chunks = scale.plays.div_ceil(chunk_rows(scale.plays));
    let bar = if config.progress {
        let b = ProgressBar::new(scale.plays);
        b.set_style(
            ProgressStyle::with_template("plays {bar:40} {human_pos}/{human_len} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let dirty = AtomicU64::new(0);
    let event_files = AtomicU64::new(0);
    // The dimension tables are written by one task while the plays chunks keep the other cores busy.
    let (dimensions, plays) = rayon::join(
        || {
            let r = write_dimensions(config, &scale, &catalog, &audience);
            tracing::debug!(elapsed = ?started.elapsed(), "datagen: dimension tables written");
            r
        },
        || {
            (0..chunks).into_par_iter().try_for_each(|chunk| {
                let (d, e) = write_plays_chunk(config, &scale, &catalog, &audience, chunk, &bar)?;
                dirty.fetch_add(d, Ordering::Relaxed);
                event_files.fetch_add(e, Ordering::Relaxed);
                Ok::<_, DatagenError>(())
            })
        },
    );
    dimensions?;
    plays?;
    bar.finish_and_clear();
    tracing::debug!(elapsed = ?started.elapsed(), "datagen: plays written");

    let manifest = Manifest {
        generator: format!("streampulse datagen {}", env!("CARGO_PKG_VERSION")),
        scale_factor: config.scale,
        seed: config.seed,
        format: config.format,
        counts: scale,
        first_day: first_day().to_string(),
        event_days: config.event_days,
        dirty_rows: dirty.load(Ordering::Relaxed),
        event_files: event_files.load(Ordering::Relaxed),
        plays_files: chunks,
    };
    let path = config.out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| DatagenError::Config(e.to_string()))?;
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, format: Format) -> Config {
        Config {
            scale: 0.0005,
            out: dir.to_path_buf(),
            format,
            seed: 7,
            event_days: 2,
            dirty_fraction: 0.0,
            progress: false,
        }
    }

    fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.strip_prefix(dir).unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(&config(a.path(), Format::Csv)).unwrap();
        generate(&config(b.path(), Format::Csv)).unwrap();
        let mut other = config(c.path(), Format::Csv);
        other.seed = 8;
        generate(&other).unwrap();
        let (ta, tb, tc) = (read_tree(a.path()), read_tree(b.path()), read_tree(c.path()));
        assert_eq!(ta, tb);
        assert_ne!(
            ta.iter().find(|f| f.0 == "plays/part-00000.csv"),
            tc.iter().find(|f| f.0 == "plays/part-00000.csv")
        );
    }

    #[test]
    fn counts_scale_and_popularity_is_skewed() {
        let s = Scale::of(1.0);
        assert_eq!((s.plays, s.users, s.songs, s.artists), (100_000_000, 5_000_000, 500_000, 100_000));
        let s = Scale::of(0.01);
        assert_eq!((s.plays, s.users, s.songs, s.artists), (1_000_000, 50_000, 50_000, 10_000));
        let dir = tempfile::tempdir().unwrap();
        let m = generate(&config(dir.path(), Format::Csv)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("plays/part-00000.csv")).unwrap();
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        let mut rows = 0;
        for line in text.lines().skip(1) {
            *counts.entry(line.split(',').nth(2).unwrap()).or_default() += 1;
            rows += 1;
        }
        assert_eq!(rows as u64, m.counts.plays);
        let mut v: Vec<usize> = counts.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let top_1pct: usize = v.iter().take((m.counts.songs as usize / 100).max(1)).sum();
        assert!(top_1pct as f64 > 0.1 * rows as f64, "top 1% of songs should get >10% of plays, got {top_1pct}/{rows}");
        assert!(m.event_files > 0);
    }

    #[test]
    fn alias_table_draws_in_proportion_to_weights() {
        let weights = [1.0, 2.0, 0.0, 3.0, 4.0, 0.5, 9.5];
        let table = AliasTable::new(&weights, |i| i).unwrap();
        let mut rng = stream(1, 1);
        let draws = 2_000_000;
        let mut counts = [0usize; 7];
        for _ in 0..draws {
            counts[table.pick(rng.next_u64())] += 1;
        }
        let total: f64 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = w / total * draws as f64;
            // Five standard deviations of a binomial count.
            let sd = (expected * (1.0 - w / total)).sqrt();
            assert!(
                (counts[i] as f64 - expected).abs() <= 5.0 * sd,
                "item {i}: {} draws, expected {expected:.0}",
                counts[i]
            );
        }
        assert_eq!(counts[2], 0, "a zero weight is never drawn");
        assert!(AliasTable::new(&[], |i| i).is_none());
        assert!(AliasTable::new(&[0.0, 0.0], |i| i).is_none());
        assert!(AliasTable::new(&[1.0, -1.0, 2.0], |i| i).is_none());
        assert!(AliasTable::new(&[1.0, f64::NAN], |i| i).is_none());
        // One item always draws itself.
        let one = AliasTable::new(&[3.0], |i| i).unwrap();
        assert!((0..1_000).all(|_| one.pick(rng.next_u64()) == 0));
    }

    #[test]
    fn hand_written_integers_and_names_match_std() {
        let mut line = Line::new();
        for v in [0i64, 1, 9, 10, 99, 100, 101, 999, 1_000, 65_536, 123_456_789, 99_999_999_999, i64::MAX] {
            line.clear();
            line.int(v);
            line.lit(b",");
            line.padded(&SOURCE_NAMES[4]);
            line.bool(v % 2 == 0);
            assert_eq!(
                String::from_utf8(line.as_bytes().to_vec()).unwrap(),
                format!("{v},{}{}", SOURCES[4], v % 2 == 0)
            );
        }
    }

    #[test]
    fn hand_written_timestamps_match_chrono() {
        let every_day_1999_2101 = (10_592..48_000).map(|d: i64| d * 86_400_000_000 + 45_296_789_000);
        for micros in
            [0, 1_791_072_000_123_456, 1_793_577_599_999_999, 946_684_800_000_000, -1_000, 253_402_300_799_999_000]
                .into_iter()
                .chain(every_day_1999_2101)
        {
            let mut line = Line::new();
            line.timestamp(micros);
            let out = line.as_bytes().to_vec();
            let expected =
                chrono::DateTime::from_timestamp_micros(micros).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{micros}");
        }
    }

    #[test]
    fn event_lines_are_json_with_every_column() {
        let dir = tempfile::tempdir().unwrap();
        generate(&config(dir.path(), Format::Csv)).unwrap();
        let mut files = vec![dir.path().join("events")];
        let mut lines = 0;
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(File::open(&p).unwrap()), &mut text)
                .unwrap();
            // The folder names the day of every event in it.
            let folder = p.parent().unwrap().to_string_lossy().to_string();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v.as_object().unwrap().len(), 11, "{line}");
                let at = chrono::DateTime::parse_from_rfc3339(v["played_at"].as_str().unwrap()).unwrap();
                assert!(v["played_at"].as_str().unwrap().ends_with('Z'));
                assert!(
                    folder.ends_with(&format!("year={}/month={}/day={}", at.year(), at.month(), at.day())),
                    "{folder}: {line}"
                );
                assert!(v["skipped"].is_boolean() && v["user_id"].is_i64());
                lines += 1;
            }
        }
        assert!(lines > 0);
    }

    #[test]
    fn parquet_and_dirty_rows() {
        let dir = tempfile::tempdir().unwrap();
        generate(&config(dir.path(), Format::Parquet)).unwrap();
        assert!(dir.path().join("plays/part-00000.parquet").exists());
        assert!(dir.path().join("songs.parquet").exists());
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Format::Csv);
        c.dirty_fraction = 0.01;
        let m = generate(&c).unwrap();
        assert!(m.dirty_rows > 0);
        let mut p = config(dir.path(), Format::Parquet);
        p.dirty_fraction = 0.01;
        assert!(generate(&p).unwrap_err().to_string().contains("only written in CSV"));
    }
}
