-- Pipeline C: song metadata sync from the metadata API into music.songs.
--   streampulse mock-api --data ./demo-data &        (or the real API)
--   streampulse sql --warehouse ./warehouse --http-sources-allow http://127.0.0.1:8099/ \
--     -f sql/pipelines/c_metadata_sync.sql --param songs_api=http://127.0.0.1:8099
-- The server may only fetch URLs under its --http-sources-allow prefixes.
-- Every page of the API is fetched (32 at a time, each retried on 429/5xx/timeouts with backoff)
-- and checked (declared types, the reported total, unique song_id) before MERGE writes anything:
-- a run that cannot get the whole catalogue fails naming the URL and page, and changes nothing.
-- MERGE is one Delta commit that touches only songs whose metadata changed, adds new ones and
-- removes songs the API no longer lists (safe because the crawl was checked complete); a rerun
-- with nothing changed makes no commit.
CREATE SCHEMA IF NOT EXISTS landing;
CREATE SCHEMA IF NOT EXISTS music;

CREATE OR REPLACE EXTERNAL TABLE landing.songs_api (
    song_id BIGINT NOT NULL,
    artist_id BIGINT,
    title VARCHAR,
    album VARCHAR,
    genre VARCHAR,
    release_date DATE,
    duration_ms INT,
    tempo DOUBLE,
    energy DOUBLE,
    danceability DOUBLE,
    valence DOUBLE,
    acousticness DOUBLE,
    instrumentalness DOUBLE,
    speechiness DOUBLE,
    liveness DOUBLE
)
STORED AS JSON_API
LOCATION '${songs_api}/songs?page={page}&page_size=1000'
OPTIONS ('concurrency' '32', 'timeout' '10s', 'retries' '8', 'primary_key' 'song_id');

CREATE TABLE IF NOT EXISTS music.songs (
    song_id BIGINT,
    artist_id BIGINT,
    title VARCHAR,
    album VARCHAR,
    genre VARCHAR,
    release_date DATE,
    duration_ms BIGINT,
    tempo DOUBLE,
    energy DOUBLE,
    danceability DOUBLE,
    valence DOUBLE,
    acousticness DOUBLE,
    instrumentalness DOUBLE,
    speechiness DOUBLE,
    liveness DOUBLE
);

MERGE INTO music.songs AS t
USING landing.songs_api AS s
ON t.song_id = s.song_id
WHEN MATCHED AND (
       (t.artist_id IS DISTINCT FROM s.artist_id) OR (t.title IS DISTINCT FROM s.title)
    OR (t.album IS DISTINCT FROM s.album) OR (t.genre IS DISTINCT FROM s.genre)
    OR (t.release_date IS DISTINCT FROM s.release_date) OR (t.duration_ms IS DISTINCT FROM s.duration_ms)
    OR (t.tempo IS DISTINCT FROM s.tempo) OR (t.energy IS DISTINCT FROM s.energy)
    OR (t.danceability IS DISTINCT FROM s.danceability) OR (t.valence IS DISTINCT FROM s.valence)
    OR (t.acousticness IS DISTINCT FROM s.acousticness) OR (t.instrumentalness IS DISTINCT FROM s.instrumentalness)
    OR (t.speechiness IS DISTINCT FROM s.speechiness) OR (t.liveness IS DISTINCT FROM s.liveness))
  THEN UPDATE SET artist_id = s.artist_id, title = s.title, album = s.album, genre = s.genre,
    release_date = s.release_date, duration_ms = s.duration_ms, tempo = s.tempo, energy = s.energy,
    danceability = s.danceability, valence = s.valence, acousticness = s.acousticness,
    instrumentalness = s.instrumentalness, speechiness = s.speechiness, liveness = s.liveness
WHEN NOT MATCHED THEN INSERT (song_id, artist_id, title, album, genre, release_date, duration_ms, tempo,
    energy, danceability, valence, acousticness, instrumentalness, speechiness, liveness)
  VALUES (s.song_id, s.artist_id, s.title, s.album, s.genre, s.release_date, s.duration_ms, s.tempo,
    s.energy, s.danceability, s.valence, s.acousticness, s.instrumentalness, s.speechiness, s.liveness)
WHEN NOT MATCHED BY SOURCE THEN DELETE;
