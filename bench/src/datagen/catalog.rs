//! The song catalogue: artists, genres, durations, and the popularity tables plays are drawn from.

#[allow(unused_imports)]
use super::*;

/// Songs: artist, genre, popularity.
pub(super) struct Catalog {
    pub(super) song_artist: Vec<u32>,
    pub(super) song_genre: Vec<u8>,
    pub(super) song_duration: Vec<i32>,
    /// Zipf(1.05) over all songs by popularity rank.
    pub(super) popularity: AliasTable<SongHot>,
    /// Per cluster: Zipf(1.0) over the songs of its genres by popularity rank (None if it has none).
    pub(super) cluster_popularity: Vec<Option<AliasTable<SongHot>>>,
}

/// What the plays loop needs of a song, in one place: one cache miss per draw, not four.
#[derive(Clone, Copy)]
pub(super) struct SongHot {
    pub(super) id: u32,
    pub(super) artist: u32,
    pub(super) duration: i32,
    pub(super) genre: u8,
}

pub(super) fn genre_centroid(genre: usize) -> [f64; 7] {
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

pub(super) fn build_catalog(config: &Config, scale: &Scale) -> Catalog {
    let mut rng = stream(config.seed, 1);
    let artist_genre: Vec<u8> = (0..scale.artists).map(|_| rng.random_range(0..GENRES.len()) as u8).collect();
    // Prolific artists: artist of a song is Zipf over artist ids.
    let artist_zipf = Zipf::new(scale.artists as f64, 0.8).ok();
    let mut song_artist = Vec::with_capacity(scale.songs as usize);
    let mut song_genre = Vec::with_capacity(scale.songs as usize);
    let mut song_duration = Vec::with_capacity(scale.songs as usize);
    for _ in 0..scale.songs {
        let a = artist_zipf.map_or(1.0, |z| z.sample(&mut rng)) as u32 - 1;
        let genre =
            if rng.random_bool(0.9) { artist_genre[a as usize] } else { rng.random_range(0..GENRES.len()) as u8 };
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
    let hot = |s: u32| SongHot {
        id: s,
        artist: song_artist[s as usize],
        duration: song_duration[s as usize],
        genre: song_genre[s as usize],
    };
    let cluster_popularity = (0..CLUSTERS)
        .into_par_iter()
        .map(|c| {
            let genres = cluster_genres(c);
            let pool: Vec<SongHot> = by_popularity
                .iter()
                .copied()
                .filter(|s| genres.contains(&(song_genre[*s as usize] as usize)))
                .map(hot)
                .collect();
            zipf_alias(&pool, 1.0)
        })
        .collect();
    let by_popularity: Vec<SongHot> = by_popularity.into_iter().map(hot).collect();
    let popularity =
        zipf_alias(&by_popularity, 1.05).unwrap_or_else(|| panic!("datagen: the catalogue has at least 500 songs"));
    Catalog { song_artist, song_genre, song_duration, popularity, cluster_popularity }
}

pub(super) fn weighted_pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
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
