//! Live mode: keep dropping new event files into `events/` as the company's streamer sees
//! them land: gzip JSON lines in Hive day folders, named `<unix_ts>_<run>_<day>_<seq>.gz`
//! (the first line's event time, so names do not follow arrival order), mostly for the
//! dataset's last day and a share for the days before it (late files). Users and songs are
//! drawn from the same audience and catalogue as the batch dataset (same scale and seed), so
//! joins with `songs` and `users` hold; play ids start at the run's start time in
//! microseconds, above every batch id and every earlier run's. Each file is written under a
//! hidden name and renamed when complete, so a loader never sees half a file.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration as StdDuration, Instant};

#[allow(unused_imports)]
use super::*;

/// What live mode writes.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The dataset's scale and seed: users and songs come from the same tables.
    pub scale: f64,
    pub seed: u64,
    /// Files go to `out/events/year=…/month=…/day=…/`.
    pub out: PathBuf,
    pub files_per_minute: f64,
    pub lines_per_file: usize,
    /// Share of files for one of the three days before the last (late arrivals).
    pub late_share: f64,
    /// Stop after this many files (never, when `None`).
    pub max_files: Option<u64>,
}

/// What live mode wrote so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveProgress {
    pub files: u64,
    pub lines: u64,
    pub bytes: u64,
}

/// Write event files until `stop` is set or `max_files` are written; `each` sees every file.
pub fn live(config: &LiveConfig, stop: &AtomicBool, mut each: impl FnMut(&Path, LiveProgress)) -> Result<LiveProgress> {
    if !(config.files_per_minute > 0.0 && config.files_per_minute.is_finite()) {
        return Err(DatagenError::Config("files per minute must be a positive number".into()));
    }
    if config.lines_per_file == 0 || !(0.0..=1.0).contains(&config.late_share) {
        return Err(DatagenError::Config("lines per file must be positive and the late share between 0 and 1".into()));
    }
    let base = Config {
        scale: config.scale,
        out: config.out.clone(),
        format: Format::Csv,
        seed: config.seed,
        event_days: 0,
        dirty_fraction: 0.0,
        progress: false,
    };
    let scale = Scale::of(config.scale);
    let (catalog, audience) = rayon::join(|| build_catalog(&base, &scale), || build_audience(&base, &scale));
    let audience = audience?;
    let started_micros = chrono::Utc::now().timestamp_micros();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ started_micros as u64);
    let run: u16 = rng.random();
    let day0 = first_day().and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros()).unwrap_or_default();
    let interval = StdDuration::from_secs_f64(60.0 / config.files_per_minute);
    let mut progress = LiveProgress::default();
    let mut next = Instant::now();
    let mut play_id = started_micros;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && config.max_files.is_none_or(|m| progress.files < m) {
        let day = if rng.random_bool(config.late_share) { DAYS - 1 - rng.random_range(1..=3) } else { DAYS - 1 };
        let date = first_day() + Duration::days(day as i64);
        let mut body = Vec::with_capacity(config.lines_per_file * 240);
        let mut first_ts = None;
        for _ in 0..config.lines_per_file {
            let user = audience.activity.pick(rng.next_u64());
            let song = match &catalog.cluster_popularity[user.cluster as usize] {
                Some(pool) if rng.random_bool(IN_TASTE_SHARE) => pool.pick(rng.next_u64()),
                _ => catalog.popularity.pick(rng.next_u64()),
            };
            let hour: i64 = rng.random_range(0..24);
            let micros = day0 + (day as i64 * 86_400 + hour * 3_600) * 1_000_000 + rng.random_range(0..3_600_000_000);
            first_ts.get_or_insert(micros / 1_000_000);
            let skipped = rng.random_bool(0.25);
            let ms_played = if skipped {
                rng.random_range(1_000..30_000)
            } else {
                (song.duration as f64 * rng.random_range(0.5..=1.0)) as i32
            };
            let user_id = user.index as i64 + 1;
            let at = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
            let line = serde_json::json!({
                "play_id": play_id,
                "user_id": user_id,
                "song_id": song.id as i64 + 1,
                "artist_id": song.artist as i64 + 1,
                "played_at": at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                "ms_played": ms_played,
                "skipped": skipped,
                "source": SOURCES[rng.random_range(0..SOURCES.len())],
                "device": DEVICES[user.device as usize % DEVICES.len()],
                "country": COUNTRIES[user.country as usize % COUNTRIES.len()].0,
                "session_id": user_id * 1_000 + day as i64 * 24 + hour,
            });
            play_id += 1;
            body.extend_from_slice(line.to_string().as_bytes());
            body.push(b'\n');
        }
        let dir =
            config.out.join("events").join(format!("year={}/month={}/day={}", date.year(), date.month(), date.day()));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = format!("{}_{run}_{day}_{}.gz", first_ts.unwrap_or_default(), progress.files);
        let (tmp, path) = (dir.join(format!(".{name}.tmp")), dir.join(&name));
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        gz.write_all(&body).map_err(io_err(&tmp))?;
        let bytes = gz.finish().map_err(io_err(&tmp))?;
        std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        progress.files += 1;
        progress.lines += config.lines_per_file as u64;
        progress.bytes += bytes.len() as u64;
        each(&path, progress);
        next += interval;
        let now = Instant::now();
        if next > now {
            // Sleep in short steps so a stop request is seen quickly.
            while Instant::now() < next && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep((next - Instant::now()).min(StdDuration::from_millis(100)));
            }
        } else {
            next = now;
        }
    }
    Ok(progress)
}
