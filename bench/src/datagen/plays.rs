//! The plays: drawn chunk by chunk, each line built in a fixed buffer, written as CSV (O_DIRECT) or Parquet, with the live-event copies.

#[allow(unused_imports)]
use super::*;

/// One batch of plays, column by column.
#[derive(Default)]
pub(super) struct Plays {
    pub(super) play_id: Vec<i64>,
    pub(super) user_id: Vec<i64>,
    pub(super) song_id: Vec<i64>,
    pub(super) artist_id: Vec<i64>,
    pub(super) played_at: Vec<i64>,
    pub(super) ms_played: Vec<i32>,
    pub(super) skipped: Vec<bool>,
    pub(super) source: Vec<u8>,
    pub(super) device: Vec<u8>,
    pub(super) country: Vec<u8>,
    pub(super) session_id: Vec<i64>,
    pub(super) day: Vec<u32>,
}

impl Plays {
    pub(super) fn len(&self) -> usize {
        self.play_id.len()
    }

    /// Microseconds since the midnight of row `i`'s day, given the first day's midnight.
    #[inline]
    pub(super) fn micros_of_day(&self, i: usize, day0_micros: i64) -> u64 {
        (self.played_at[i] - day0_micros - self.day[i] as i64 * 86_400_000_000) as u64
    }

    /// Empties the batch, keeping its buffers.
    pub(super) fn clear(&mut self) {
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

    pub(super) fn schema() -> SchemaRef {
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

    pub(super) fn to_batch(&self) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let pick = |v: &[u8], names: &[&str]| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(v.iter().map(|i| names[*i as usize])))
        };
        let countries: Vec<&str> = COUNTRIES.iter().map(|c| c.0).collect();
        RecordBatch::try_new(
            Self::schema(),
            vec![
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
            ],
        )
    }
}

/// One line of text (a CSV row or a JSON object) built in a fixed buffer. Every copy has a size
/// known at compile time, so none becomes a `memcpy` call: with `itoa` and `extend_from_slice`,
/// the ~11 small copies per row were a tenth of the generator's time.
pub(super) struct Line {
    pub(super) buf: [u8; Line::CAPACITY],
    pub(super) len: usize,
}

/// Two decimal digits of 0–99.
pub(super) const DIGIT_PAIRS: &[u8; 200] =
    b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// A short string padded to 16 bytes, copied whole and then counted by its length.
#[derive(Clone, Copy)]
pub(super) struct Padded {
    pub(super) bytes: [u8; 16],
    pub(super) len: usize,
}

impl Padded {
    pub(super) const fn new(s: &str) -> Self {
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

pub(super) const TRUE: Padded = Padded::new("true");
pub(super) const FALSE: Padded = Padded::new("false");
pub(super) const SOURCE_NAMES: [Padded; SOURCES.len()] = padded_names(SOURCES);
pub(super) const DEVICE_NAMES: [Padded; DEVICES.len()] = padded_names(DEVICES);
pub(super) const COUNTRY_NAMES: [Padded; COUNTRIES.len()] = padded_names({
    let mut codes = [""; COUNTRIES.len()];
    let mut i = 0;
    while i < COUNTRIES.len() {
        codes[i] = COUNTRIES[i].0;
        i += 1;
    }
    codes
});

pub(super) const fn padded_names<const N: usize>(names: [&str; N]) -> [Padded; N] {
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

    pub(super) fn new() -> Self {
        Line { buf: [0; Line::CAPACITY], len: 0 }
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    #[inline]
    pub(super) fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        self.buf[self.len..self.len + N].copy_from_slice(s);
        self.len += N;
    }

    #[inline]
    pub(super) fn padded(&mut self, p: &Padded) {
        self.buf[self.len..self.len + 16].copy_from_slice(&p.bytes);
        self.len += p.len;
    }

    #[inline]
    pub(super) fn bool(&mut self, v: bool) {
        self.padded(if v { &TRUE } else { &FALSE });
    }

    /// A non-negative integer in decimal (negative values are written as 0: none occur).
    #[inline]
    pub(super) fn int(&mut self, v: i64) {
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
    pub(super) fn timestamp(&mut self, micros: i64) {
        let days = micros.div_euclid(86_400_000_000);
        self.timestamp_on(&date_prefix(days), micros.rem_euclid(86_400_000_000) as u64);
    }

    /// A timestamp given its date's `YYYY-MM-DDT` (see [`date_prefix`]) and the microseconds
    /// since that midnight: the plays loop knows each play's day, so the calendar is done once
    /// per day rather than once per row.
    #[inline]
    pub(super) fn timestamp_on(&mut self, date: &[u8; 11], micros_of_day: u64) {
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
pub(super) fn date_prefix(days: i64) -> [u8; 11] {
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9_999) as usize;
    let mut b = *b"0000-00-00T";
    for (at, v) in [(0, year / 100), (2, year % 100), (5, month as usize), (8, day as usize)] {
        b[at..at + 2].copy_from_slice(&DIGIT_PAIRS[v * 2..v * 2 + 2]);
    }
    b
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01.
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

/// Writes a chunk's plays to its file and, for event days, to gzip JSONL files.
pub(super) struct ChunkWriter<'a> {
    pub(super) config: &'a Config,
    pub(super) chunk: u64,
    pub(super) path: PathBuf,
    pub(super) csv: Option<DirectFile>,
    pub(super) parquet: Option<parquet::arrow::ArrowWriter<File>>,
    /// Per day: the open event file, its line count and lines not yet given to the encoder
    /// (handed over a batch at a time: per-line writes cost more in the encoder than compressing).
    pub(super) events: Vec<Option<EventFile>>,
    pub(super) event_seq: Vec<u64>,
    pub(super) event_files: u64,
    pub(super) dirty: u64,
    /// Reused text buffer: a batch of CSV rows.
    pub(super) text: Vec<u8>,
    pub(super) line: Line,
    /// `YYYY-MM-DDT` of each generated day.
    pub(super) dates: Vec<[u8; 11]>,
    /// Midnight of the first day, in microseconds since the epoch.
    pub(super) day0_micros: i64,
}

impl<'a> ChunkWriter<'a> {
    pub(super) fn new(config: &'a Config, chunk: u64) -> Result<Self> {
        let path = config.out.join("plays").join(format!("part-{chunk:05}.{}", config.format.extension()));
        let (csv, parquet) = match config.format {
            Format::Csv => {
                // The biggest files by far: written around the page cache (see `direct`), unless
                // STREAMPULSE_DATAGEN_BUFFERED is set (for comparison, or a file system that
                // misbehaves with O_DIRECT).
                let direct = std::env::var_os("STREAMPULSE_DATAGEN_BUFFERED").is_none();
                let mut w = DirectFile::create(&path, direct).map_err(io_err(&path))?;
                w.write_all(
                    b"play_id,user_id,song_id,artist_id,played_at,ms_played,skipped,source,device,country,session_id\n",
                )
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

    pub(super) fn write(&mut self, plays: &Plays, rng: &mut ChaCha8Rng) -> Result<()> {
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
                for name in [
                    &SOURCE_NAMES[plays.source[i] as usize],
                    &DEVICE_NAMES[plays.device[i] as usize],
                    &COUNTRY_NAMES[plays.country[i] as usize],
                ] {
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

    pub(super) fn write_events(&mut self, plays: &Plays) -> Result<()> {
        let first_event_day = DAYS - self.config.event_days;
        for i in 0..plays.len() {
            let day = plays.day[i];
            if day < first_event_day {
                continue;
            }
            let slot = &mut self.events[day as usize];
            if slot.is_none() {
                let date = first_day() + Duration::days(day as i64);
                let dir = self.config.out.join("events").join(format!(
                    "year={}/month={}/day={}",
                    date.year(),
                    date.month(),
                    date.day()
                ));
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

    pub(super) fn finish(mut self) -> Result<(u64, u64)> {
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

pub(super) fn write_plays_chunk(
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
    let day_weights: Vec<f64> = (0..DAYS)
        .map(|d| {
            let weekday = (first_day() + Duration::days(d as i64)).weekday().num_days_from_monday();
            if weekday >= 5 { 1.2 } else { 1.0 }
        })
        .collect();
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
            let (day, hour) = day_hour.pick(rng.next_u64());
            let mut skip_p = (if in_taste { 0.15 } else { 0.35 } * user.skip_factor()).min(0.95);
            if day >= EXPERIMENT_START_DAY {
                for (e, experiment) in EXPERIMENTS.iter().enumerate() {
                    if user.in_treatment_of(e) {
                        skip_p *= experiment.3;
                    }
                }
            }
            let skipped = rng.random_bool(skip_p);
            let duration = song.duration;
            let ms_played = if skipped {
                rng.random_range(1_000..30_000)
            } else {
                (duration as f64 * rng.random_range(0.5..=1.0)) as i32
            };
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
            plays.device.push(if rng.random_bool(0.8) {
                user.device
            } else {
                rng.random_range(0..DEVICES.len()) as u8
            });
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
