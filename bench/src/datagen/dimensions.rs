//! The dimension tables (users, songs, artists, subscriptions, ad revenue, experiments, truth) as CSV or Parquet.

#[allow(unused_imports)]
use super::*;

pub(super) fn utf8(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

pub(super) fn write_table(config: &Config, name: &str, batch: RecordBatch) -> Result<()> {
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

pub(super) fn batch(fields: Vec<(&str, DataType)>, columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = Arc::new(Schema::new(fields.into_iter().map(|(n, t)| Field::new(n, t, true)).collect::<Vec<_>>()));
    // Columns are built to match their fields; a mismatch is a programming error caught by tests.
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("datagen schema bug: {e}"))
}

pub(super) fn write_dimensions(config: &Config, scale: &Scale, catalog: &Catalog, audience: &Audience) -> Result<()> {
    let mut rng = stream(config.seed, 3);
    // artists
    let n = scale.artists as usize;
    write_table(
        config,
        "artists",
        batch(
            vec![
                ("artist_id", DataType::Int64),
                ("name", DataType::Utf8),
                ("country", DataType::Utf8),
                ("formed_year", DataType::Int32),
            ],
            vec![
                Arc::new(Int64Array::from_iter_values(1..=n as i64)),
                utf8((1..=n).map(|i| format!("Artist {i}")).collect()),
                utf8((0..n).map(|_| COUNTRIES[rng.random_range(0..COUNTRIES.len())].0.to_string()).collect()),
                Arc::new(Int32Array::from_iter_values((0..n).map(|_| rng.random_range(1955..=2025)))),
            ],
        ),
    )?;
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
    write_table(
        config,
        "songs",
        batch(
            vec![
                ("song_id", DataType::Int64),
                ("artist_id", DataType::Int64),
                ("title", DataType::Utf8),
                ("album", DataType::Utf8),
                ("genre", DataType::Utf8),
                ("release_date", DataType::Date32),
                ("duration_ms", DataType::Int32),
                ("tempo", DataType::Float64),
                ("energy", DataType::Float64),
                ("danceability", DataType::Float64),
                ("valence", DataType::Float64),
                ("acousticness", DataType::Float64),
                ("instrumentalness", DataType::Float64),
                ("speechiness", DataType::Float64),
                ("liveness", DataType::Float64),
            ],
            song_cols,
        ),
    )?;
    // users
    let u = scale.users as usize;
    write_table(
        config,
        "users",
        batch(
            vec![
                ("user_id", DataType::Int64),
                ("signup_date", DataType::Date32),
                ("country", DataType::Utf8),
                ("plan", DataType::Utf8),
                ("birth_year", DataType::Int32),
            ],
            vec![
                Arc::new(Int64Array::from_iter_values(1..=u as i64)),
                Arc::new(Date32Array::from(audience.signup.clone())),
                utf8(audience.country.iter().map(|c| COUNTRIES[*c as usize].0.to_string()).collect()),
                utf8(audience.plan.iter().map(|p| PLANS[*p as usize].0.to_string()).collect()),
                Arc::new(Int32Array::from(audience.birth_year.clone())),
            ],
        ),
    )?;
    // subscriptions: every paying user pays the month's price
    let month = first_day().num_days_from_ce() - 719_163;
    let paying: Vec<usize> = (0..u).filter(|i| PLANS[audience.plan[*i] as usize].2 > 0).collect();
    write_table(
        config,
        "subscriptions",
        batch(
            vec![
                ("user_id", DataType::Int64),
                ("month", DataType::Date32),
                ("plan", DataType::Utf8),
                ("amount_cents", DataType::Int64),
                ("country", DataType::Utf8),
            ],
            vec![
                Arc::new(Int64Array::from_iter_values(paying.iter().map(|i| *i as i64 + 1))),
                Arc::new(Date32Array::from(vec![month; paying.len()])),
                utf8(paying.iter().map(|i| PLANS[audience.plan[*i] as usize].0.to_string()).collect()),
                Arc::new(Int64Array::from_iter_values(paying.iter().map(|i| PLANS[audience.plan[*i] as usize].2))),
                utf8(paying.iter().map(|i| COUNTRIES[audience.country[*i] as usize].0.to_string()).collect()),
            ],
        ),
    )?;
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
    write_table(
        config,
        "ad_revenue",
        batch(
            vec![("country", DataType::Utf8), ("day", DataType::Date32), ("amount_cents", DataType::Int64)],
            vec![utf8(countries), Arc::new(Date32Array::from(days)), Arc::new(Int64Array::from(amounts))],
        ),
    )?;
    // experiments
    let (start, end) = (month + EXPERIMENT_START_DAY as i32, month + DAYS as i32 - 1);
    write_table(
        config,
        "experiments",
        batch(
            vec![
                ("experiment_id", DataType::Int64),
                ("name", DataType::Utf8),
                ("salt", DataType::Utf8),
                ("variants", DataType::Utf8),
                ("traffic_share", DataType::Float64),
                ("treatment_share", DataType::Float64),
                ("start_date", DataType::Date32),
                ("end_date", DataType::Date32),
                ("assignment", DataType::Utf8),
            ],
            vec![
                Arc::new(Int64Array::from_iter_values(EXPERIMENTS.iter().map(|e| e.0))),
                utf8(EXPERIMENTS.iter().map(|e| e.1.to_string()).collect()),
                utf8(EXPERIMENTS.iter().map(|e| e.2.to_string()).collect()),
                utf8(vec!["control,treatment".into(); EXPERIMENTS.len()]),
                Arc::new(Float64Array::from(vec![1.0; EXPERIMENTS.len()])),
                Arc::new(Float64Array::from(vec![TREATMENT_SHARE; EXPERIMENTS.len()])),
                Arc::new(Date32Array::from(vec![start; EXPERIMENTS.len()])),
                Arc::new(Date32Array::from(vec![end; EXPERIMENTS.len()])),
                utf8(vec![
                    "enrolled if ab_bucket(user_id, salt, 100) < 100 * traffic_share; treatment if also \
                     >= 100 * traffic_share * (1 - treatment_share)"
                        .into();
                    EXPERIMENTS.len()
                ]),
            ],
        ),
    )?;
    // truth
    write_table(
        config,
        "truth/user_clusters",
        batch(
            vec![("user_id", DataType::Int64), ("cluster", DataType::Int32)],
            vec![
                Arc::new(Int64Array::from_iter_values(1..=u as i64)),
                Arc::new(Int32Array::from_iter_values(audience.cluster.iter().map(|c| *c as i32))),
            ],
        ),
    )?;
    write_table(
        config,
        "truth/clusters",
        batch(
            vec![("cluster", DataType::Int32), ("genre_1", DataType::Utf8), ("genre_2", DataType::Utf8)],
            vec![
                Arc::new(Int32Array::from_iter_values(0..CLUSTERS as i32)),
                utf8((0..CLUSTERS).map(|c| GENRES[cluster_genres(c)[0]].to_string()).collect()),
                utf8((0..CLUSTERS).map(|c| GENRES[cluster_genres(c)[1]].to_string()).collect()),
            ],
        ),
    )?;
    Ok(())
}
