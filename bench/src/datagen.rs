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
//! songs outside their taste are skipped more often. The clusters are written to `truth/` so a
//! recommender can be scored against them. Experiment `shuffle-v2` has a planted effect
//! (treatment skips 20 % less); `home-layout` has none (an A/A test).
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

use arrow::array::{ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, Duration, NaiveDate};
use flate2::Compression;
use flate2::write::GzEncoder;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Pareto, Zipf};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use streampulse_udfs::experiments::bucket_of;

use crate::direct::DirectFile;

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

pub const GENRES: [&str; 12] = [
    "pop", "rock", "hip-hop", "electronic", "jazz", "classical", "country", "r&b", "latin", "metal", "folk", "reggae",
];
const COUNTRIES: [(&str, f64); 10] = [
    ("US", 0.30), ("GB", 0.10), ("DE", 0.10), ("FR", 0.08), ("BR", 0.12), ("SE", 0.04), ("MX", 0.08), ("JP", 0.06), ("IN", 0.08), ("ES", 0.04),
];
/// Plan, share of users, monthly price in cents.
const PLANS: [(&str, f64, i64); 4] = [("free", 0.55, 0), ("premium", 0.30, 1099), ("family", 0.10, 1799), ("student", 0.05, 599)];
const SOURCES: [&str; 5] = ["playlist", "album", "radio", "search", "recommendation"];
const DEVICES: [&str; 5] = ["mobile", "desktop", "web", "speaker", "tv"];
/// Relative activity by hour of day (UTC): quiet nights, evening peak.
const HOUR_WEIGHTS: [f64; 24] = [
    0.6, 0.4, 0.3, 0.2, 0.2, 0.3, 0.6, 1.0, 1.3, 1.2, 1.1, 1.1, 1.2, 1.2, 1.1, 1.1, 1.3, 1.6, 1.9, 2.1, 2.2, 2.0, 1.6, 1.0,
];

/// The experiments: id, name, salt, planted effect on treatment's skip probability.
pub const EXPERIMENTS: [(i64, &str, &str, f64); 2] = [(1, "shuffle-v2", "exp-shuffle-v2", 0.8), (2, "home-layout", "exp-home-layout", 1.0)];

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

/// Songs: artist, genre, popularity.
struct Catalog {
    song_artist: Vec<u32>,
    song_genre: Vec<u8>,
    song_duration: Vec<i32>,
    /// Zipf(1.05) over all songs by popularity rank.
    popularity: AliasTable<SongHot>,
    /// Per cluster: Zipf(1.0) over the songs of its genres by popularity rank (None if it has none).
    cluster_popularity: Vec<Option<AliasTable<SongHot>>>,
}

/// Walker's alias method (Vose's construction) with the payloads in the table: a draw costs one
/// random `u64` and one memory access. rand_distr's `WeightedAliasIndex` costs two draws and up to
/// three cache misses per play at SF 1 (odds, alias, then the user or song record), which made
/// those draws a third of the generator's time.
///
/// The slot comes from the high 32 bits by multiply-shift (bias below n / 2³², i.e. < 0.2 % for
/// 5 M users — immaterial for synthetic data), the coin from the low 32 bits.
struct AliasTable<T> {
    entries: Vec<AliasEntry<T>>,
}

#[derive(Clone, Copy)]
struct AliasEntry<T> {
    /// Keep `own` when the coin is below this; otherwise `alias`.
    threshold: u32,
    own: T,
    alias: T,
}

impl<T: Copy> AliasTable<T> {
    /// `None` for no weights or weights that are not all finite, non-negative with a positive sum.
    fn new(weights: &[f64], payload: impl Fn(usize) -> T) -> Option<Self> {
        let n = weights.len();
        let sum: f64 = weights.iter().sum();
        if n == 0 || n > u32::MAX as usize || !(sum > 0.0 && sum.is_finite()) || weights.iter().any(|w| w.is_nan() || *w < 0.0) {
            return None;
        }
        let mut p: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| p[*i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            alias[s] = l;
            p[l] -= 1.0 - p[s];
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left holds probability 1 up to rounding: it keeps itself.
        for i in small.into_iter().chain(large) {
            p[i] = 1.0;
            alias[i] = i;
        }
        let entries = (0..n)
            .map(|i| AliasEntry {
                threshold: (p[i] * 4_294_967_296.0).min(u32::MAX as f64) as u32,
                own: payload(i),
                // A slot that always keeps itself has itself as alias, so the threshold's rounding
                // at 1.0 cannot matter.
                alias: payload(alias[i]),
            })
            .collect();
        Some(Self { entries })
    }

    #[inline]
    fn slot(&self, r: u64) -> usize {
        (((r >> 32) * self.entries.len() as u64) >> 32) as usize
    }

    #[inline]
    fn pick(&self, r: u64) -> T {
        let e = &self.entries[self.slot(r)];
        if (r as u32) < e.threshold { e.own } else { e.alias }
    }
}

/// What the plays loop needs of a song, in one place: one cache miss per draw, not four.
#[derive(Clone, Copy)]
struct SongHot {
    id: u32,
    artist: u32,
    duration: i32,
    genre: u8,
}

/// What the plays loop needs of a user, in 8 bytes.
#[derive(Clone, Copy)]
struct UserHot {
    /// 0-based user index.
    index: u32,
    cluster: u8,
    device: u8,
    country: u8,
    /// Bit k: in the treatment of experiment k.
    treatment: u8,
}

/// Alias table drawing `items[r]` with probability ∝ (r + 1)^-s: Zipf's law over ranks.
fn zipf_alias<T: Copy>(items: &[T], s: f64) -> Option<AliasTable<T>> {
    let weights: Vec<f64> = (1..=items.len()).map(|k| (k as f64).powf(-s)).collect();
    AliasTable::new(&weights, |r| items[r])
}

/// Users: who they are and how they listen.
struct Audience {
    country: Vec<u8>,
    plan: Vec<u8>,
    cluster: Vec<u8>,
    device: Vec<u8>,
    signup: Vec<i32>,
    birth_year: Vec<i32>,
    /// Heavy-tailed activity over users, drawing what the plays loop reads of the user.
    activity: AliasTable<UserHot>,
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

fn genre_centroid(genre: usize) -> [f64; 7] {
    // Deterministic, distinct centroids per genre for the audio features.
    let g = genre as f64;
    [
        0.3 + 0.05 * ((g * 1.7) % 10.0),
        0.2 + 0.06 * ((g * 3.1) % 10.0),
        0.25 + 0.05 * ((g * 2.3) % 10.0),
        0.2 + 0.06 * ((g * 4.7) % 10.0),
        0.1 + 0.07 * ((g * 5.3) % 10.0),
        0.05 + 0.08 * ((g * 6.1) % 10.0),
        0.05 + 0.03 * ((g * 7.9) % 10.0),
    ]
}

fn build_catalog(config: &Config, scale: &Scale) -> Catalog {
    let mut rng = stream(config.seed, 1);
    let artist_genre: Vec<u8> = (0..scale.artists).map(|_| rng.random_range(0..GENRES.len()) as u8).collect();
    // Prolific artists: artist of a song is Zipf over artist ids.
    let artist_zipf = Zipf::new(scale.artists as f64, 0.8).ok();
    let mut song_artist = Vec::with_capacity(scale.songs as usize);
    let mut song_genre = Vec::with_capacity(scale.songs as usize);
    let mut song_duration = Vec::with_capacity(scale.songs as usize);
    for _ in 0..scale.songs {
        let a = artist_zipf.map_or(1.0, |z| z.sample(&mut rng)) as u32 - 1;
        let genre = if rng.random_bool(0.9) { artist_genre[a as usize] } else { rng.random_range(0..GENRES.len()) as u8 };
        song_artist.push(a);
        song_genre.push(genre);
        song_duration.push(rng.random_range(120_000..420_000));
    }
    let mut by_popularity: Vec<u32> = (0..scale.songs as u32).collect();
    // Fisher–Yates with our stream, so popularity is not tied to ids.
    for i in (1..by_popularity.len()).rev() {
        let j = rng.random_range(0..=i);
        by_popularity.swap(i, j);
    }
    let hot = |s: u32| SongHot { id: s, artist: song_artist[s as usize], duration: song_duration[s as usize], genre: song_genre[s as usize] };
    let cluster_popularity = (0..CLUSTERS)
        .into_par_iter()
        .map(|c| {
            let genres = cluster_genres(c);
            let pool: Vec<SongHot> =
                by_popularity.iter().copied().filter(|s| genres.contains(&(song_genre[*s as usize] as usize))).map(hot).collect();
            zipf_alias(&pool, 1.0)
        })
        .collect();
    let by_popularity: Vec<SongHot> = by_popularity.into_iter().map(hot).collect();
    let popularity = zipf_alias(&by_popularity, 1.05).unwrap_or_else(|| panic!("datagen: the catalogue has at least 500 songs"));
    Catalog { song_artist, song_genre, song_duration, popularity, cluster_popularity }
}

fn weighted_pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

fn build_audience(config: &Config, scale: &Scale) -> Result<Audience> {
    let n = scale.users as usize;
    let country_w: Vec<f64> = COUNTRIES.iter().map(|c| c.1).collect();
    let plan_w: Vec<f64> = PLANS.iter().map(|p| p.1).collect();
    let pareto: Pareto<f64> = Pareto::new(1.0, 1.2).map_err(|e| DatagenError::Config(e.to_string()))?;
    let mut a = Audience {
        country: Vec::with_capacity(n),
        plan: Vec::with_capacity(n),
        cluster: Vec::with_capacity(n),
        device: Vec::with_capacity(n),
        signup: Vec::with_capacity(n),
        birth_year: Vec::with_capacity(n),
        activity: AliasTable { entries: Vec::new() },
    };
    let mut activity = Vec::with_capacity(n);
    let epoch_2015 = NaiveDate::from_ymd_opt(2015, 1, 1).unwrap_or_default().num_days_from_ce();
    let last_signup = first_day().num_days_from_ce() - 1;
    // Users come in fixed blocks, each with its own stream: parallel, and the same whatever the
    // thread count.
    let blocks: Vec<_> = (0..n.div_ceil(USER_BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut rng = stream(config.seed, USER_STREAMS + b as u64);
            let rows = USER_BLOCK.min(n - b * USER_BLOCK);
            (0..rows)
                .map(|_| {
                    (
                        weighted_pick(&mut rng, &country_w) as u8,
                        weighted_pick(&mut rng, &plan_w) as u8,
                        rng.random_range(0..CLUSTERS) as u8,
                        rng.random_range(0..DEVICES.len()) as u8,
                        rng.random_range(epoch_2015..=last_signup) - 719_163,
                        rng.random_range(1950..=2010),
                        pareto.sample(&mut rng).min(1_000.0),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (country, plan, cluster, device, signup, birth_year, weight) in blocks.into_iter().flatten() {
        a.country.push(country);
        a.plan.push(plan);
        a.cluster.push(cluster);
        a.device.push(device);
        a.signup.push(signup);
        a.birth_year.push(birth_year);
        activity.push(weight);
    }
    let hot: Vec<UserHot> = (0..n)
        .into_par_iter()
        .map(|i| {
            let u = i as u64 + 1;
            let treatment = EXPERIMENTS.iter().enumerate().map(|(k, e)| u8::from(in_treatment(u, e.2)) << k).sum();
            UserHot { index: i as u32, cluster: a.cluster[i], device: a.device[i], country: a.country[i], treatment }
        })
        .collect();
    a.activity = AliasTable::new(&activity, |i| hot[i])
        .ok_or_else(|| DatagenError::Config("user activity weights must be positive and finite".into()))?;
    Ok(a)
}

fn utf8(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn write_table(config: &Config, name: &str, batch: RecordBatch) -> Result<()> {
    let path = config.out.join(format!("{name}.{}", config.format.extension()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let file = File::create(&path).map_err(io_err(&path))?;
    match config.format {
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(BufWriter::new(file));
            w.write(&batch).map_err(|source| DatagenError::Arrow { path: path.clone(), source })?;
        }
        Format::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
                .map_err(|source| DatagenError::Parquet { path: path.clone(), source })?;
            w.write(&batch).map_err(|source| DatagenError::Parquet { path: path.clone(), source })?;
            w.close().map_err(|source| DatagenError::Parquet { path: path.clone(), source })?;
        }
    }
    Ok(())
}

fn batch(fields: Vec<(&str, DataType)>, columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = Arc::new(Schema::new(fields.into_iter().map(|(n, t)| Field::new(n, t, true)).collect::<Vec<_>>()));
    // Columns are built to match their fields; a mismatch is a programming error caught by tests.
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("datagen schema bug: {e}"))
}

fn write_dimensions(config: &Config, scale: &Scale, catalog: &Catalog, audience: &Audience) -> Result<()> {
    let mut rng = stream(config.seed, 3);
    // artists
    let n = scale.artists as usize;
    write_table(config, "artists", batch(
        vec![("artist_id", DataType::Int64), ("name", DataType::Utf8), ("country", DataType::Utf8), ("formed_year", DataType::Int32)],
        vec![
            Arc::new(Int64Array::from_iter_values(1..=n as i64)),
            utf8((1..=n).map(|i| format!("Artist {i}")).collect()),
            utf8((0..n).map(|_| COUNTRIES[rng.random_range(0..COUNTRIES.len())].0.to_string()).collect()),
            Arc::new(Int32Array::from_iter_values((0..n).map(|_| rng.random_range(1955..=2025)))),
        ],
    ))?;
    // songs with audio features around their genre's centroid
    let s = scale.songs as usize;
    let mut features: Vec<Vec<f64>> = (0..7).map(|_| Vec::with_capacity(s)).collect();
    let mut tempo = Vec::with_capacity(s);
    let mut release = Vec::with_capacity(s);
    for i in 0..s {
        let c = genre_centroid(catalog.song_genre[i] as usize);
        for (k, f) in features.iter_mut().enumerate() {
            f.push((c[k] + rng.random_range(-0.12..0.12)).clamp(0.0, 1.0));
        }
        tempo.push(60.0 + 140.0 * (c[0] + rng.random_range(-0.1..0.1)).clamp(0.0, 1.0));
        release.push(rng.random_range(-3650..20_400));
    }
    let mut song_cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(1..=s as i64)),
        Arc::new(Int64Array::from_iter_values(catalog.song_artist.iter().map(|a| *a as i64 + 1))),
        utf8((1..=s).map(|i| format!("Song {i}")).collect()),
        utf8(catalog.song_artist.iter().enumerate().map(|(i, a)| format!("Album {}-{}", a + 1, i % 7)).collect()),
        utf8(catalog.song_genre.iter().map(|g| GENRES[*g as usize].to_string()).collect()),
        Arc::new(Date32Array::from(release)),
        Arc::new(Int32Array::from(catalog.song_duration.clone())),
        Arc::new(Float64Array::from(tempo)),
    ];
    for f in features {
        song_cols.push(Arc::new(Float64Array::from(f)));
    }
    write_table(config, "songs", batch(
        vec![
            ("song_id", DataType::Int64), ("artist_id", DataType::Int64), ("title", DataType::Utf8), ("album", DataType::Utf8),
            ("genre", DataType::Utf8), ("release_date", DataType::Date32), ("duration_ms", DataType::Int32), ("tempo", DataType::Float64),
            ("energy", DataType::Float64), ("danceability", DataType::Float64), ("valence", DataType::Float64),
            ("acousticness", DataType::Float64), ("instrumentalness", DataType::Float64), ("speechiness", DataType::Float64),
            ("liveness", DataType::Float64),
        ],
        song_cols,
    ))?;
    // users
    let u = scale.users as usize;
    write_table(config, "users", batch(
        vec![("user_id", DataType::Int64), ("signup_date", DataType::Date32), ("country", DataType::Utf8), ("plan", DataType::Utf8), ("birth_year", DataType::Int32)],
        vec![
            Arc::new(Int64Array::from_iter_values(1..=u as i64)),
            Arc::new(Date32Array::from(audience.signup.clone())),
            utf8(audience.country.iter().map(|c| COUNTRIES[*c as usize].0.to_string()).collect()),
            utf8(audience.plan.iter().map(|p| PLANS[*p as usize].0.to_string()).collect()),
            Arc::new(Int32Array::from(audience.birth_year.clone())),
        ],
    ))?;
    // subscriptions: every paying user pays the month's price
    let month = first_day().num_days_from_ce() - 719_163;
    let paying: Vec<usize> = (0..u).filter(|i| PLANS[audience.plan[*i] as usize].2 > 0).collect();
    write_table(config, "subscriptions", batch(
        vec![("user_id", DataType::Int64), ("month", DataType::Date32), ("plan", DataType::Utf8), ("amount_cents", DataType::Int64), ("country", DataType::Utf8)],
        vec![
            Arc::new(Int64Array::from_iter_values(paying.iter().map(|i| *i as i64 + 1))),
            Arc::new(Date32Array::from(vec![month; paying.len()])),
            utf8(paying.iter().map(|i| PLANS[audience.plan[*i] as usize].0.to_string()).collect()),
            Arc::new(Int64Array::from_iter_values(paying.iter().map(|i| PLANS[audience.plan[*i] as usize].2))),
            utf8(paying.iter().map(|i| COUNTRIES[audience.country[*i] as usize].0.to_string()).collect()),
        ],
    ))?;
    // ad revenue per country and day: ~2 cents per free user per day, with noise
    let mut free_per_country = [0u64; COUNTRIES.len()];
    for i in 0..u {
        if audience.plan[i] == 0 {
            free_per_country[audience.country[i] as usize] += 1;
        }
    }
    let (mut countries, mut days, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
    for (c, free) in free_per_country.iter().enumerate() {
        for d in 0..DAYS as i32 {
            countries.push(COUNTRIES[c].0.to_string());
            days.push(month + d);
            amounts.push(((*free as f64) * 2.0 * rng.random_range(0.8..1.2)).round() as i64);
        }
    }
    write_table(config, "ad_revenue", batch(
        vec![("country", DataType::Utf8), ("day", DataType::Date32), ("amount_cents", DataType::Int64)],
        vec![utf8(countries), Arc::new(Date32Array::from(days)), Arc::new(Int64Array::from(amounts))],
    ))?;
    // experiments
    let end = month + DAYS as i32 - 1;
    write_table(config, "experiments", batch(
        vec![
            ("experiment_id", DataType::Int64), ("name", DataType::Utf8), ("salt", DataType::Utf8), ("variants", DataType::Utf8),
            ("traffic_share", DataType::Float64), ("start_date", DataType::Date32), ("end_date", DataType::Date32), ("assignment", DataType::Utf8),
        ],
        vec![
            Arc::new(Int64Array::from_iter_values(EXPERIMENTS.iter().map(|e| e.0))),
            utf8(EXPERIMENTS.iter().map(|e| e.1.to_string()).collect()),
            utf8(EXPERIMENTS.iter().map(|e| e.2.to_string()).collect()),
            utf8(vec!["control,treatment".into(); EXPERIMENTS.len()]),
            Arc::new(Float64Array::from(vec![1.0; EXPERIMENTS.len()])),
            Arc::new(Date32Array::from(vec![month; EXPERIMENTS.len()])),
            Arc::new(Date32Array::from(vec![end; EXPERIMENTS.len()])),
            utf8(vec!["treatment if ab_bucket(user_id, salt, 100) >= 50".into(); EXPERIMENTS.len()]),
        ],
    ))?;
    // truth
    write_table(config, "truth/user_clusters", batch(
        vec![("user_id", DataType::Int64), ("cluster", DataType::Int32)],
        vec![
            Arc::new(Int64Array::from_iter_values(1..=u as i64)),
            Arc::new(Int32Array::from_iter_values(audience.cluster.iter().map(|c| *c as i32))),
        ],
    ))?;
    write_table(config, "truth/clusters", batch(
        vec![("cluster", DataType::Int32), ("genre_1", DataType::Utf8), ("genre_2", DataType::Utf8)],
        vec![
            Arc::new(Int32Array::from_iter_values(0..CLUSTERS as i32)),
            utf8((0..CLUSTERS).map(|c| GENRES[cluster_genres(c)[0]].to_string()).collect()),
            utf8((0..CLUSTERS).map(|c| GENRES[cluster_genres(c)[1]].to_string()).collect()),
        ],
    ))?;
    Ok(())
}

/// One batch of plays, column by column.
#[derive(Default)]
struct Plays {
    play_id: Vec<i64>,
    user_id: Vec<i64>,
    song_id: Vec<i64>,
    artist_id: Vec<i64>,
    played_at: Vec<i64>,
    ms_played: Vec<i32>,
    skipped: Vec<bool>,
    source: Vec<u8>,
    device: Vec<u8>,
    country: Vec<u8>,
    session_id: Vec<i64>,
    day: Vec<u32>,
}

impl Plays {
    fn len(&self) -> usize {
        self.play_id.len()
    }

    /// Microseconds since the midnight of row `i`'s day, given the first day's midnight.
    #[inline]
    fn micros_of_day(&self, i: usize, day0_micros: i64) -> u64 {
        (self.played_at[i] - day0_micros - self.day[i] as i64 * 86_400_000_000) as u64
    }

    /// Empties the batch, keeping its buffers.
    fn clear(&mut self) {
        self.play_id.clear();
        self.user_id.clear();
        self.song_id.clear();
        self.artist_id.clear();
        self.played_at.clear();
        self.ms_played.clear();
        self.skipped.clear();
        self.source.clear();
        self.device.clear();
        self.country.clear();
        self.session_id.clear();
        self.day.clear();
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("play_id", DataType::Int64, false),
            Field::new("user_id", DataType::Int64, false),
            Field::new("song_id", DataType::Int64, false),
            Field::new("artist_id", DataType::Int64, false),
            Field::new("played_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("ms_played", DataType::Int32, false),
            Field::new("skipped", DataType::Boolean, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("country", DataType::Utf8, false),
            Field::new("session_id", DataType::Int64, false),
        ]))
    }

    fn to_batch(&self) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let pick = |v: &[u8], names: &[&str]| -> ArrayRef { Arc::new(StringArray::from_iter_values(v.iter().map(|i| names[*i as usize]))) };
        let countries: Vec<&str> = COUNTRIES.iter().map(|c| c.0).collect();
        RecordBatch::try_new(Self::schema(), vec![
            Arc::new(Int64Array::from(self.play_id.clone())),
            Arc::new(Int64Array::from(self.user_id.clone())),
            Arc::new(Int64Array::from(self.song_id.clone())),
            Arc::new(Int64Array::from(self.artist_id.clone())),
            Arc::new(TimestampMicrosecondArray::from(self.played_at.clone()).with_timezone("UTC")),
            Arc::new(Int32Array::from(self.ms_played.clone())),
            Arc::new(BooleanArray::from(self.skipped.clone())),
            pick(&self.source, &SOURCES),
            pick(&self.device, &DEVICES),
            pick(&self.country, &countries),
            Arc::new(Int64Array::from(self.session_id.clone())),
        ])
    }
}

/// One line of text (a CSV row or a JSON object) built in a fixed buffer. Every copy has a size
/// known at compile time, so none becomes a `memcpy` call: with `itoa` and `extend_from_slice`,
/// the ~11 small copies per row were a tenth of the generator's time.
struct Line {
    buf: [u8; Line::CAPACITY],
    len: usize,
}

/// Two decimal digits of 0–99.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// A short string padded to 16 bytes, copied whole and then counted by its length.
#[derive(Clone, Copy)]
struct Padded {
    bytes: [u8; 16],
    len: usize,
}

impl Padded {
    const fn new(s: &str) -> Self {
        let mut bytes = [b' '; 16];
        let src = s.as_bytes();
        assert!(src.len() <= 16, "padded strings hold at most 16 bytes");
        let mut i = 0;
        while i < src.len() {
            bytes[i] = src[i];
            i += 1;
        }
        Padded { bytes, len: src.len() }
    }
}

const TRUE: Padded = Padded::new("true");
const FALSE: Padded = Padded::new("false");
const SOURCE_NAMES: [Padded; SOURCES.len()] = padded_names(SOURCES);
const DEVICE_NAMES: [Padded; DEVICES.len()] = padded_names(DEVICES);
const COUNTRY_NAMES: [Padded; COUNTRIES.len()] = padded_names({
    let mut codes = [""; COUNTRIES.len()];
    let mut i = 0;
    while i < COUNTRIES.len() {
        codes[i] = COUNTRIES[i].0;
        i += 1;
    }
    codes
});

const fn padded_names<const N: usize>(names: [&str; N]) -> [Padded; N] {
    let mut out = [Padded::new(""); N];
    let mut i = 0;
    while i < N {
        out[i] = Padded::new(names[i]);
        i += 1;
    }
    out
}

impl Line {
    /// Longer than any line written (a JSON event is ~230 bytes).
    const CAPACITY: usize = 512;

    fn new() -> Self {
        Line { buf: [0; Line::CAPACITY], len: 0 }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    #[inline]
    fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        self.buf[self.len..self.len + N].copy_from_slice(s);
        self.len += N;
    }

    #[inline]
    fn padded(&mut self, p: &Padded) {
        self.buf[self.len..self.len + 16].copy_from_slice(&p.bytes);
        self.len += p.len;
    }

    #[inline]
    fn bool(&mut self, v: bool) {
        self.padded(if v { &TRUE } else { &FALSE });
    }

    /// A non-negative integer in decimal (negative values are written as 0: none occur).
    #[inline]
    fn int(&mut self, v: i64) {
        let mut v = v.max(0) as u64;
        let digits = v.checked_ilog10().unwrap_or(0) as usize + 1;
        let out = &mut self.buf[self.len..self.len + 20];
        let mut end = digits;
        while v >= 100 {
            let d = (v % 100) as usize * 2;
            v /= 100;
            out[end - 2..end].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
            end -= 2;
        }
        if v >= 10 {
            out[..2].copy_from_slice(&DIGIT_PAIRS[v as usize * 2..v as usize * 2 + 2]);
        } else {
            out[0] = b'0' + v as u8;
        }
        self.len += digits;
    }

    /// `micros` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (what chrono's
    /// `%Y-%m-%dT%H:%M:%S%.3fZ` gives, for years 0–9999), without a format string: the date
    /// comes from Howard Hinnant's `civil_from_days`.
    #[cfg(test)]
    fn timestamp(&mut self, micros: i64) {
        let days = micros.div_euclid(86_400_000_000);
        self.timestamp_on(&date_prefix(days), micros.rem_euclid(86_400_000_000) as u64);
    }

    /// A timestamp given its date's `YYYY-MM-DDT` (see [`date_prefix`]) and the microseconds
    /// since that midnight: the plays loop knows each play's day, so the calendar is done once
    /// per day rather than once per row.
    #[inline]
    fn timestamp_on(&mut self, date: &[u8; 11], micros_of_day: u64) {
        fn pair(b: &mut [u8; 24], at: usize, v: u64) {
            let v = (v % 100) as usize * 2;
            b[at] = DIGIT_PAIRS[v];
            b[at + 1] = DIGIT_PAIRS[v + 1];
        }
        let secs = micros_of_day / 1_000_000;
        let millis = micros_of_day % 1_000_000 / 1_000;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        b[..11].copy_from_slice(date);
        pair(&mut b, 11, secs / 3_600);
        pair(&mut b, 14, secs / 60 % 60);
        pair(&mut b, 17, secs % 60);
        b[20] = b'0' + (millis / 100 % 10) as u8;
        pair(&mut b, 21, millis);
        self.lit(&b);
    }
}

/// `YYYY-MM-DDT` of the day `days` after 1970-01-01 (years clamped to 0–9999).
fn date_prefix(days: i64) -> [u8; 11] {
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9_999) as usize;
    let mut b = *b"0000-00-00T";
    for (at, v) in [(0, year / 100), (2, year % 100), (5, month as usize), (8, day as usize)] {
        b[at..at + 2].copy_from_slice(&DIGIT_PAIRS[v * 2..v * 2 + 2]);
    }
    b
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// An open gzip JSONL file of live events.
struct EventFile {
    path: PathBuf,
    encoder: GzEncoder<BufWriter<File>>,
    lines: usize,
    pending: Vec<u8>,
}

impl EventFile {
    fn flush_pending(&mut self) -> Result<()> {
        self.encoder.write_all(&self.pending).map_err(io_err(&self.path))?;
        self.pending.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush_pending()?;
        self.encoder.finish().map_err(io_err(&self.path))?;
        Ok(())
    }
}

/// Writes a chunk's plays to its file and, for event days, to gzip JSONL files.
struct ChunkWriter<'a> {
    config: &'a Config,
    chunk: u64,
    path: PathBuf,
    csv: Option<DirectFile>,
    parquet: Option<parquet::arrow::ArrowWriter<File>>,
    /// Per day: the open event file, its line count and lines not yet given to the encoder
    /// (handed over a batch at a time: per-line writes cost more in the encoder than compressing).
    events: Vec<Option<EventFile>>,
    event_seq: Vec<u64>,
    event_files: u64,
    dirty: u64,
    /// Reused text buffer: a batch of CSV rows.
    text: Vec<u8>,
    line: Line,
    /// `YYYY-MM-DDT` of each generated day.
    dates: Vec<[u8; 11]>,
    /// Midnight of the first day, in microseconds since the epoch.
    day0_micros: i64,
}

impl<'a> ChunkWriter<'a> {
    fn new(config: &'a Config, chunk: u64) -> Result<Self> {
        let path = config.out.join("plays").join(format!("part-{chunk:05}.{}", config.format.extension()));
        let (csv, parquet) = match config.format {
            Format::Csv => {
                // The biggest files by far: written around the page cache (see `direct`), unless
                // STREAMPULSE_DATAGEN_BUFFERED is set (for comparison, or a file system that
                // misbehaves with O_DIRECT).
                let direct = std::env::var_os("STREAMPULSE_DATAGEN_BUFFERED").is_none();
                let mut w = DirectFile::create(&path, direct).map_err(io_err(&path))?;
                w.write_all(b"play_id,user_id,song_id,artist_id,played_at,ms_played,skipped,source,device,country,session_id\n")
                    .map_err(io_err(&path))?;
                (Some(w), None)
            }
            Format::Parquet => {
                let file = File::create(&path).map_err(io_err(&path))?;
                // Dictionaries only where values repeat: for ids, times and durations the writer
                // would hash every value, then give up when the dictionary outgrows its page.
                let mut props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY);
                for column in ["play_id", "user_id", "played_at", "ms_played", "session_id"] {
                    props = props.set_column_dictionary_enabled(column.into(), false);
                }
                let props = props.build();
                let w = parquet::arrow::ArrowWriter::try_new(file, Plays::schema(), Some(props))
                    .map_err(|source| DatagenError::Parquet { path: path.clone(), source })?;
                (None, Some(w))
            }
        };
        Ok(Self {
            config,
            chunk,
            path,
            csv,
            parquet,
            events: (0..DAYS).map(|_| None).collect(),
            event_seq: vec![0; DAYS as usize],
            event_files: 0,
            dirty: 0,
            text: Vec::with_capacity(BATCH_ROWS * 128),
            line: Line::new(),
            dates: (0..DAYS as i64).map(|d| date_prefix(first_day_epoch_days() + d)).collect(),
            day0_micros: first_day_epoch_days() * 86_400_000_000,
        })
    }

    fn write(&mut self, plays: &Plays, rng: &mut ChaCha8Rng) -> Result<()> {
        if let Some(w) = self.csv.as_mut() {
            let (out, line) = (&mut self.text, &mut self.line);
            out.clear();
            for i in 0..plays.len() {
                line.clear();
                for v in [plays.play_id[i], plays.user_id[i], plays.song_id[i], plays.artist_id[i]] {
                    line.int(v);
                    line.lit(b",");
                }
                line.timestamp_on(&self.dates[plays.day[i] as usize], plays.micros_of_day(i, self.day0_micros));
                line.lit(b",");
                if self.config.dirty_fraction > 0.0 && rng.random_bool(self.config.dirty_fraction) {
                    self.dirty += 1;
                    // A malformed row: a non-numeric ms_played and missing columns.
                    line.lit(b"not_a_number,");
                    line.bool(plays.skipped[i]);
                    line.lit(b"\n");
                    out.extend_from_slice(line.as_bytes());
                    continue;
                }
                line.int(plays.ms_played[i].into());
                line.lit(b",");
                line.bool(plays.skipped[i]);
                for name in [&SOURCE_NAMES[plays.source[i] as usize], &DEVICE_NAMES[plays.device[i] as usize], &COUNTRY_NAMES[plays.country[i] as usize]] {
                    line.lit(b",");
                    line.padded(name);
                }
                line.lit(b",");
                line.int(plays.session_id[i]);
                line.lit(b"\n");
                out.extend_from_slice(line.as_bytes());
            }
            w.write_all(out).map_err(io_err(&self.path))?;
        }
        if let Some(w) = self.parquet.as_mut() {
            let batch = plays.to_batch().map_err(|source| DatagenError::Arrow { path: self.path.clone(), source })?;
            w.write(&batch).map_err(|source| DatagenError::Parquet { path: self.path.clone(), source })?;
        }
        self.write_events(plays)
    }

    fn write_events(&mut self, plays: &Plays) -> Result<()> {
        let first_event_day = DAYS - self.config.event_days;
        for i in 0..plays.len() {
            let day = plays.day[i];
            if day < first_event_day {
                continue;
            }
            let slot = &mut self.events[day as usize];
            if slot.is_none() {
                let date = first_day() + Duration::days(day as i64);
                let dir = self.config.out.join("events").join(format!("year={}/month={}/day={}", date.year(), date.month(), date.day()));
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let seq = self.event_seq[day as usize];
                self.event_seq[day as usize] += 1;
                let ts = plays.played_at[i] / 1_000_000;
                let path = dir.join(format!("{ts}_{}_{}_{seq}.gz", self.chunk, day));
                let file = File::create(&path).map_err(io_err(&path))?;
                let encoder = GzEncoder::new(BufWriter::new(file), Compression::fast());
                *slot = Some(EventFile { path, encoder, lines: 0, pending: Vec::with_capacity(1 << 20) });
                self.event_files += 1;
            }
            if let Some(file) = slot.as_mut() {
                // One JSON object per line; the names (SOURCES, DEVICES, COUNTRIES) need no escaping.
                let line = &mut self.line;
                line.clear();
                line.lit(b"{\"play_id\":");
                line.int(plays.play_id[i]);
                line.lit(b",\"user_id\":");
                line.int(plays.user_id[i]);
                line.lit(b",\"song_id\":");
                line.int(plays.song_id[i]);
                line.lit(b",\"artist_id\":");
                line.int(plays.artist_id[i]);
                line.lit(b",\"played_at\":\"");
                line.timestamp_on(&self.dates[plays.day[i] as usize], plays.micros_of_day(i, self.day0_micros));
                line.lit(b"\",\"ms_played\":");
                line.int(plays.ms_played[i].into());
                line.lit(b",\"skipped\":");
                line.bool(plays.skipped[i]);
                line.lit(b",\"source\":\"");
                line.padded(&SOURCE_NAMES[plays.source[i] as usize]);
                line.lit(b"\",\"device\":\"");
                line.padded(&DEVICE_NAMES[plays.device[i] as usize]);
                line.lit(b"\",\"country\":\"");
                line.padded(&COUNTRY_NAMES[plays.country[i] as usize]);
                line.lit(b"\",\"session_id\":");
                line.int(plays.session_id[i]);
                line.lit(b"}\n");
                file.pending.extend_from_slice(line.as_bytes());
                file.lines += 1;
                if file.lines >= EVENTS_PER_FILE
                    && let Some(file) = slot.take()
                {
                    file.finish()?;
                }
            }
        }
        for file in self.events.iter_mut().flatten() {
            file.flush_pending()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(u64, u64)> {
        if let Some(w) = self.csv.take() {
            w.finish().map_err(io_err(&self.path))?;
        }
        if let Some(w) = self.parquet.take() {
            w.close().map_err(|source| DatagenError::Parquet { path: self.path.clone(), source })?;
        }
        for file in self.events.iter_mut().filter_map(Option::take) {
            file.finish()?;
        }
        Ok((self.dirty, self.event_files))
    }
}

fn write_plays_chunk(
    config: &Config,
    scale: &Scale,
    catalog: &Catalog,
    audience: &Audience,
    chunk: u64,
    bar: &ProgressBar,
) -> Result<(u64, u64)> {
    let mut rng = stream(config.seed, 1_000 + chunk);
    let rows = chunk_rows(scale.plays);
    let start = chunk * rows;
    let end = (start + rows).min(scale.plays);
    let day_weights: Vec<f64> = (0..DAYS).map(|d| {
        let weekday = (first_day() + Duration::days(d as i64)).weekday().num_days_from_monday();
        if weekday >= 5 { 1.2 } else { 1.0 }
    }).collect();
    // Day and hour in one draw: weekly rhythm × daily rhythm.
    let day_hour_weights: Vec<f64> = day_weights.iter().flat_map(|d| HOUR_WEIGHTS.iter().map(move |h| d * h)).collect();
    let day_hour = AliasTable::new(&day_hour_weights, |i| ((i / 24) as u32, (i % 24) as i64))
        .ok_or_else(|| DatagenError::Config("day and hour weights".into()))?;
    let day0 = first_day().and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros()).unwrap_or_default();

    let mut writer = ChunkWriter::new(config, chunk)?;
    let mut plays = Plays::default();
    // Users and songs are drawn a batch at a time in tight loops of independent table lookups, so
    // the CPU overlaps their cache misses (the user table is ~100 MB at SF 1); then each play is
    // built from them.
    let mut draws: Vec<u64> = Vec::with_capacity(BATCH_ROWS);
    let mut users: Vec<UserHot> = Vec::with_capacity(BATCH_ROWS);
    let mut song_draws: Vec<(&AliasTable<SongHot>, u64)> = Vec::with_capacity(BATCH_ROWS);
    let mut songs: Vec<SongHot> = Vec::with_capacity(BATCH_ROWS);
    for batch_start in (start..end).step_by(BATCH_ROWS) {
        let n = (end - batch_start).min(BATCH_ROWS as u64) as usize;
        draws.clear();
        draws.extend((0..n).map(|_| rng.next_u64()));
        users.clear();
        users.extend(draws.iter().map(|r| audience.activity.pick(*r)));
        song_draws.clear();
        song_draws.extend(users.iter().map(|user| match &catalog.cluster_popularity[user.cluster as usize] {
            Some(pool) if rng.random_bool(IN_TASTE_SHARE) => (pool, rng.next_u64()),
            _ => (&catalog.popularity, rng.next_u64()),
        }));
        songs.clear();
        songs.extend(song_draws.iter().map(|(table, r)| table.pick(*r)));

        for (k, (user, song)) in users.iter().zip(&songs).enumerate() {
            let cluster = user.cluster as usize;
            let in_taste = cluster_genres(cluster).contains(&(song.genre as usize));
            let mut skip_p = if in_taste { 0.15 } else { 0.35 };
            for (e, experiment) in EXPERIMENTS.iter().enumerate() {
                if user.treatment >> e & 1 == 1 {
                    skip_p *= experiment.3;
                }
            }
            let skipped = rng.random_bool(skip_p);
            let duration = song.duration;
            let ms_played = if skipped { rng.random_range(1_000..30_000) } else { (duration as f64 * rng.random_range(0.5..=1.0)) as i32 };
            let (day, hour) = day_hour.pick(rng.next_u64());
            // Uniform within the hour by multiply-shift of 32 random bits.
            let within_hour = ((rng.next_u64() >> 32) * 3_600_000_000) >> 32;
            let micros = day0 + (day as i64 * 86_400 + hour * 3_600) * 1_000_000 + within_hour as i64;
            let user_id = user.index as i64 + 1;
            plays.play_id.push((batch_start + k as u64) as i64 + 1);
            plays.user_id.push(user_id);
            plays.song_id.push(song.id as i64 + 1);
            plays.artist_id.push(song.artist as i64 + 1);
            plays.played_at.push(micros);
            plays.ms_played.push(ms_played);
            plays.skipped.push(skipped);
            plays.source.push(rng.random_range(0..SOURCES.len()) as u8);
            plays.device.push(if rng.random_bool(0.8) { user.device } else { rng.random_range(0..DEVICES.len()) as u8 });
            plays.country.push(user.country);
            plays.session_id.push(user_id * 1_000 + day as i64 * 24 + hour);
            plays.day.push(day);
        }
        writer.write(&plays, &mut rng)?;
        bar.inc(plays.len() as u64);
        plays.clear();
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, format: Format) -> Config {
        Config { scale: 0.0005, out: dir.to_path_buf(), format, seed: 7, event_days: 2, dirty_fraction: 0.0, progress: false }
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
        assert_ne!(ta.iter().find(|f| f.0 == "plays/part-00000.csv"), tc.iter().find(|f| f.0 == "plays/part-00000.csv"));
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
            assert!((counts[i] as f64 - expected).abs() <= 5.0 * sd, "item {i}: {} draws, expected {expected:.0}", counts[i]);
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
            assert_eq!(String::from_utf8(line.as_bytes().to_vec()).unwrap(), format!("{v},{}{}", SOURCES[4], v % 2 == 0));
        }
    }

    #[test]
    fn hand_written_timestamps_match_chrono() {
        let every_day_1999_2101 = (10_592..48_000).map(|d: i64| d * 86_400_000_000 + 45_296_789_000);
        for micros in [0, 1_791_072_000_123_456, 1_793_577_599_999_999, 946_684_800_000_000, -1_000, 253_402_300_799_999_000]
            .into_iter()
            .chain(every_day_1999_2101)
        {
            let mut line = Line::new();
            line.timestamp(micros);
            let out = line.as_bytes().to_vec();
            let expected = chrono::DateTime::from_timestamp_micros(micros).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
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
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(File::open(&p).unwrap()), &mut text).unwrap();
            // The folder names the day of every event in it.
            let folder = p.parent().unwrap().to_string_lossy().to_string();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v.as_object().unwrap().len(), 11, "{line}");
                let at = chrono::DateTime::parse_from_rfc3339(v["played_at"].as_str().unwrap()).unwrap();
                assert!(v["played_at"].as_str().unwrap().ends_with('Z'));
                assert!(folder.ends_with(&format!("year={}/month={}/day={}", at.year(), at.month(), at.day())), "{folder}: {line}");
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
