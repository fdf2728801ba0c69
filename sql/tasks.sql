-- The pipelines as tasks: A daily, B after A, C daily (metadata API), D monthly on the 1st for the
-- previous month, E daily. C's API address is its songs_api parameter (ALTER TASK ... SET PARAMS).
--   streampulse sql --warehouse ./warehouse -f sql/tasks.sql      (serve --demo runs this too)
-- Tasks are created SUSPENDED; start one with ALTER TASK music.daily_play_counts RESUME.
-- Parameters are expressions over the slot's scheduled time (UTC), never the wall clock: a retry,
-- a catch-up run and a backfill of a day get the run_date the schedule gave that day.
-- Each body is the pipeline script in sql/pipelines/ verbatim (tests/test_tasks.py checks it).

CREATE OR REPLACE TASK music.daily_play_counts
  SCHEDULE = 'USING CRON 0 3 * * * Europe/Stockholm'
  PARAMS (run_date = CAST(scheduled_time AT TIME ZONE 'Europe/Stockholm' AS DATE) - INTERVAL '1 day')
  RETRIES = 2 RETRY_DELAY = '5m' TIMEOUT = '1h'
  COMMENT = 'Pipeline A: yesterday''s play counts per song and artist'
AS $$
-- Pipeline A: daily play counts per day, song and artist.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/a_daily_play_counts.sql --param run_date=2026-10-05
-- Reads only the columns it needs from one day's partition of music.plays. The day's output
-- partition is replaced in one commit (INSERT OVERWRITE replaces just the partitions it writes),
-- so a rerun for the same day never duplicates rows, other days are untouched, and a failed
-- run changes nothing.
CREATE TABLE IF NOT EXISTS music.daily_play_counts (
    play_date DATE,
    song_id BIGINT,
    artist_id BIGINT,
    plays BIGINT,
    listeners BIGINT,
    ms_played BIGINT,
    skips BIGINT
) PARTITIONED BY (play_date);

INSERT OVERWRITE music.daily_play_counts (play_date, song_id, artist_id, plays, listeners, ms_played, skips)
SELECT play_date,
       song_id,
       artist_id,
       count(*) AS plays,
       count(DISTINCT user_id) AS listeners,
       sum(CAST(ms_played AS BIGINT)) AS ms_played,
       sum(CASE WHEN skipped THEN 1 ELSE 0 END) AS skips
FROM music.plays
WHERE play_date = DATE '${run_date}'
GROUP BY play_date, song_id, artist_id;
$$;

CREATE OR REPLACE TASK music.recommendations
  AFTER music.daily_play_counts
  PARAMS (run_date = CAST(scheduled_time AT TIME ZONE 'Europe/Stockholm' AS DATE) - INTERVAL '1 day')
  RETRIES = 1 RETRY_DELAY = '10m' TIMEOUT = '2h'
  COMMENT = 'Pipeline B: top 10 songs per active user, after A for the same night'
AS $$
-- Pipeline B: top 10 song recommendations per active user.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/b_recommendations.sql --param run_date=2026-10-30
--
-- Song vector: the song's eight audio features (tempo, energy, danceability, valence,
-- acousticness, instrumentalness, speechiness, liveness), each standardised over the catalogue
-- (z-score), kept in music.song_vectors.
-- User taste: weighted_avg_vector of the vectors of the songs the user played in the 30 days
-- ending on run_date, weighted by ms played. Active user = at least one play in that window.
-- Recommendations: the 10 songs with the highest cosine similarity to the taste vector, among
-- songs the user has never played up to run_date, computed exactly by top_k_nearest (a blocked
-- matrix multiply on every core that skips only clusters of songs proven unable to rank).
-- Ties go to the lower song_id.
--
-- Idempotent: music.song_vectors is rebuilt, and run_date's partition of
-- music.recommendations is replaced in one commit, so a rerun never duplicates rows.
CREATE OR REPLACE TABLE music.song_vectors AS
WITH s AS (
    SELECT avg(tempo) AS tempo_m, stddev_pop(tempo) AS tempo_s,
           avg(energy) AS energy_m, stddev_pop(energy) AS energy_s,
           avg(danceability) AS dance_m, stddev_pop(danceability) AS dance_s,
           avg(valence) AS valence_m, stddev_pop(valence) AS valence_s,
           avg(acousticness) AS acoustic_m, stddev_pop(acousticness) AS acoustic_s,
           avg(instrumentalness) AS instr_m, stddev_pop(instrumentalness) AS instr_s,
           avg(speechiness) AS speech_m, stddev_pop(speechiness) AS speech_s,
           avg(liveness) AS live_m, stddev_pop(liveness) AS live_s
    FROM music.songs
)
SELECT song_id,
       make_array((tempo - tempo_m) / nullif(tempo_s, 0),
                  (energy - energy_m) / nullif(energy_s, 0),
                  (danceability - dance_m) / nullif(dance_s, 0),
                  (valence - valence_m) / nullif(valence_s, 0),
                  (acousticness - acoustic_m) / nullif(acoustic_s, 0),
                  (instrumentalness - instr_m) / nullif(instr_s, 0),
                  (speechiness - speech_m) / nullif(speech_s, 0),
                  (liveness - live_m) / nullif(live_s, 0)) AS vector
FROM music.songs CROSS JOIN s;

CREATE TABLE IF NOT EXISTS music.recommendations (
    run_date DATE,
    user_id BIGINT,
    rank INT,
    song_id BIGINT,
    score DOUBLE
) PARTITIONED BY (run_date);

INSERT OVERWRITE music.recommendations (run_date, user_id, rank, song_id, score)
SELECT DATE '${run_date}', user_id, rank, item_id, score
FROM top_k_nearest(
    'SELECT p.user_id,
            weighted_avg_vector(v.vector, p.recent_ms) AS taste,
            array_agg(p.song_id) AS played
     FROM (SELECT user_id, song_id,
                  sum(CASE WHEN play_date > DATE ''${run_date}'' - INTERVAL ''30 days''
                           THEN CAST(ms_played AS BIGINT) END) AS recent_ms
           FROM music.plays
           WHERE play_date <= DATE ''${run_date}''
           GROUP BY user_id, song_id) AS p
     JOIN music.song_vectors v ON v.song_id = p.song_id
     GROUP BY p.user_id
     HAVING sum(p.recent_ms) > 0',
    'SELECT song_id, vector FROM music.song_vectors',
    10);
$$;

CREATE OR REPLACE TASK music.song_metadata_sync
  SCHEDULE = 'USING CRON 0 2 * * * Europe/Stockholm'
  PARAMS (songs_api = 'http://127.0.0.1:8099')
  RETRIES = 2 RETRY_DELAY = '10m' TIMEOUT = '30m'
  COMMENT = 'Pipeline C: song metadata from the metadata API into music.songs (needs the API under --http-sources-allow)'
AS $$
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
$$;

CREATE OR REPLACE TASK music.royalties
  SCHEDULE = 'USING CRON 0 5 1 * * Europe/Stockholm'
  PARAMS (month = to_char(CAST(scheduled_time AT TIME ZONE 'Europe/Stockholm' AS DATE) - INTERVAL '1 month', '%Y-%m'))
  RETRIES = 2 RETRY_DELAY = '15m' TIMEOUT = '2h'
  COMMENT = 'Pipeline D: the previous month''s royalties, on the 1st'
AS $$
-- Pipeline D: monthly royalties per artist, under two models.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/d_royalties.sql --param month=2026-10
--
-- Money is integer cents and every split is largest_remainder(), so for each month and model
-- sum(amount_cents) equals the month's revenue (subscriptions + ad revenue) to the cent.
-- A play counts ("qualifying stream") when ms_played >= 30,000 in the month.
--
--   pro_rata      each country's pool (its subscriptions + its ad revenue) is split over artists
--                 by their share of the country's qualifying streams (plays.country).
--   user_centric  each paying user's payment is split over the artists they streamed, by
--                 qualifying ms played; each country's ad revenue is split pro rata as above.
--
-- Money with nothing to split by (a country with revenue but no qualifying streams, a paying
-- user who streamed nothing that qualifies) is kept as an explicit unallocated row: artist_id
-- NULL, streams 0. `streams` is the artist's qualifying streams in the month (all countries).
-- Ties in the remainders go to the lower artist_id.
--
-- Idempotent: the month's partition is replaced in one commit (INSERT OVERWRITE), so a rerun
-- never duplicates rows, other months are untouched, and a failed run changes nothing.
CREATE TABLE IF NOT EXISTS music.royalties (
    month DATE,
    model VARCHAR,
    artist_id BIGINT,
    amount_cents BIGINT,
    streams BIGINT
) PARTITIONED BY (month);

INSERT OVERWRITE music.royalties (month, model, artist_id, amount_cents, streams)
WITH qualifying AS (
    SELECT user_id, artist_id, country, CAST(ms_played AS BIGINT) AS ms
    FROM music.plays
    WHERE play_date >= DATE '${month}-01'
      AND play_date < DATE '${month}-01' + INTERVAL '1 month'
      AND ms_played >= 30000
),
subscription_pool AS (
    SELECT user_id, country, sum(amount_cents) AS amount_cents
    FROM music.subscriptions
    WHERE month = DATE '${month}-01'
    GROUP BY user_id, country
),
ad_pool AS (
    SELECT country, sum(amount_cents) AS amount_cents
    FROM music.ad_revenue
    WHERE day >= DATE '${month}-01' AND day < DATE '${month}-01' + INTERVAL '1 month'
    GROUP BY country
),
country_pool AS (
    SELECT country, sum(amount_cents) AS amount_cents
    FROM (SELECT country, amount_cents FROM subscription_pool
          UNION ALL
          SELECT country, amount_cents FROM ad_pool) AS revenue
    GROUP BY country
),
country_artist AS (
    SELECT country, artist_id, count(*) AS streams FROM qualifying GROUP BY country, artist_id
),
user_artist AS (
    SELECT user_id, artist_id, sum(ms) AS ms FROM qualifying GROUP BY user_id, artist_id
),
-- A pool LEFT JOINed to nothing keeps one row with a NULL artist: largest_remainder gives it a
-- NULL share, and the whole pool becomes that row's (unallocated) amount.
pro_rata AS (
    SELECT ca.artist_id,
           coalesce(largest_remainder(p.amount_cents, ca.streams)
                        OVER (PARTITION BY p.country ORDER BY ca.artist_id), p.amount_cents) AS amount_cents
    FROM country_pool p LEFT JOIN country_artist ca ON ca.country = p.country
),
ad_pro_rata AS (
    SELECT ca.artist_id,
           coalesce(largest_remainder(p.amount_cents, ca.streams)
                        OVER (PARTITION BY p.country ORDER BY ca.artist_id), p.amount_cents) AS amount_cents
    FROM ad_pool p LEFT JOIN country_artist ca ON ca.country = p.country
),
user_centric AS (
    SELECT ua.artist_id,
           coalesce(largest_remainder(s.amount_cents, ua.ms)
                        OVER (PARTITION BY s.user_id ORDER BY ua.artist_id), s.amount_cents) AS amount_cents
    FROM subscription_pool s LEFT JOIN user_artist ua ON ua.user_id = s.user_id
),
allocations AS (
    SELECT 'pro_rata' AS model, artist_id, amount_cents FROM pro_rata
    UNION ALL
    SELECT 'user_centric' AS model, artist_id, amount_cents FROM ad_pro_rata
    UNION ALL
    SELECT 'user_centric' AS model, artist_id, amount_cents FROM user_centric
),
artist_streams AS (
    SELECT artist_id, count(*) AS streams FROM qualifying GROUP BY artist_id
)
SELECT DATE '${month}-01' AS month,
       a.model,
       a.artist_id,
       sum(a.amount_cents) AS amount_cents,
       coalesce(max(s.streams), 0) AS streams
FROM allocations a LEFT JOIN artist_streams s ON s.artist_id = a.artist_id
GROUP BY a.model, a.artist_id;
$$;

CREATE OR REPLACE TASK music.experiment_results
  SCHEDULE = 'USING CRON 30 3 * * * Europe/Stockholm'
  RETRIES = 2 RETRY_DELAY = '5m' TIMEOUT = '1h'
  COMMENT = 'Pipeline E: every experiment''s metrics, tests, SRM and flags'
AS $$
-- Pipeline E: A/B test analytics, with the user as the unit of analysis.
--
-- Users are randomised, so users (not plays) are the independent observations: plays of one
-- user are correlated (each user has their own skip propensity and activity), and a play-level
-- test calls ~17 % of A/A experiments significant at alpha = 0.05 instead of 5 %.
--
-- Assignment (deterministic, from music.experiments): a user is enrolled if
-- ab_bucket(user_id, salt, 100) < 100 * traffic_share, and in treatment if also
-- >= 100 * traffic_share * (1 - treatment_share); shares are rounded to whole buckets. A user
-- counts in an experiment when they played at least once between its start and end dates.
--
-- Per experiment, variant and metric (edit `metrics` below to add one or switch CUPED off):
--   skip_rate           skips / plays           ratio of per-user sums: delta method, Welch t
--   ms_per_play         ms played / plays       ratio of per-user sums: delta method, Welch t
--   plays_per_user      mean plays per user     per-user mean: Welch t
--   ms_played_per_user  mean ms per user        per-user mean: Welch t
--   engaged_user_rate   share of users with >= 30 min played: the user is the trial, pooled
--                       two-proportion z-test
-- CUPED (variance reduction) uses each user's same sums over the 14 days before start_date as
-- the covariate (0 for a user with no history); the interval and p-value are then adjusted and
-- `cuped_variance_reduction` says how much variance it removed.
--
-- Columns: `value` is the variant's metric (unadjusted); on treatment rows, `diff` is the
-- difference treatment - control (CUPED-adjusted when `method` says so), `lift` = diff / control's
-- value, `ci_low`/`ci_high` the 95 % interval of diff, `p_value` two-sided. Control rows are the
-- baseline (NULL test columns). `srm_p_value` is the experiment's sample ratio mismatch check
-- (chi-square of users per variant against the configured split); `flag` is NULL when the row
-- can be read, else why not (a mismatch below p = 0.001 flags every row of the experiment).
--
-- Idempotent: the whole table is replaced in one commit, so a rerun never duplicates rows and a
-- failed run changes nothing.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/e_ab_analytics.sql
-- Written so that each input is read once: DataFusion inlines a CTE at every reference, so each
-- CTE is referenced once; the metrics are rows of one CROSS JOIN and the control is found by a
-- window over each experiment's and metric's variants.
CREATE OR REPLACE TABLE music.experiment_results AS
WITH per_user AS (
    -- aggregate first, hash once per (experiment, user): not once per play
    SELECT e.experiment_id, e.salt, e.traffic_share, e.treatment_share, p.user_id,
           sum(CASE WHEN p.play_date >= e.start_date THEN 1 ELSE 0 END) AS plays,
           sum(CASE WHEN p.play_date >= e.start_date AND p.skipped THEN 1 ELSE 0 END) AS skips,
           sum(CASE WHEN p.play_date >= e.start_date THEN CAST(p.ms_played AS BIGINT) ELSE 0 END) AS ms,
           sum(CASE WHEN p.play_date < e.start_date THEN 1 ELSE 0 END) AS pre_plays,
           sum(CASE WHEN p.play_date < e.start_date AND p.skipped THEN 1 ELSE 0 END) AS pre_skips,
           sum(CASE WHEN p.play_date < e.start_date THEN CAST(p.ms_played AS BIGINT) ELSE 0 END) AS pre_ms
    FROM music.plays p
    JOIN music.experiments e ON p.play_date BETWEEN e.start_date - INTERVAL '14' DAY AND e.end_date
    GROUP BY e.experiment_id, e.salt, e.traffic_share, e.treatment_share, p.user_id
    HAVING sum(CASE WHEN p.play_date >= e.start_date THEN 1 ELSE 0 END) > 0
),
assigned AS (
    SELECT *, ab_bucket(user_id, salt, 100) AS bucket,
           round(100 * traffic_share) AS enrolled_buckets,
           round(100 * traffic_share * (1 - treatment_share)) AS control_buckets
    FROM per_user
),
per_variant AS (
    SELECT experiment_id,
           CASE WHEN bucket >= control_buckets THEN 'treatment' ELSE 'control' END AS variant,
           max((enrolled_buckets - control_buckets) / enrolled_buckets) AS expected_treatment_share,
           count(*) AS users,
           sum(CASE WHEN ms >= 1800000 THEN 1 ELSE 0 END) AS engaged_users,
           ratio_moments(skips, plays, pre_skips, pre_plays) AS skip_rate,
           ratio_moments(ms, plays, pre_ms, pre_plays) AS ms_per_play,
           ratio_moments(plays, 1, pre_plays, 1) AS plays_per_user,
           ratio_moments(ms, 1, pre_ms, 1) AS ms_played_per_user
    FROM assigned
    WHERE bucket < enrolled_buckets
    GROUP BY 1, 2
),
metrics AS (
    -- metric, how it is analysed, whether CUPED adjusts it
    SELECT * FROM (VALUES ('skip_rate', 'ratio', true),
                          ('ms_per_play', 'ratio', true),
                          ('plays_per_user', 'mean', true),
                          ('ms_played_per_user', 'mean', true),
                          ('engaged_user_rate', 'conversion', false)) AS m(metric, kind, cuped)
),
per_metric AS (
    SELECT v.experiment_id, v.variant, v.users, v.engaged_users, v.expected_treatment_share, m.metric, m.kind, m.cuped,
           CASE m.metric WHEN 'skip_rate' THEN v.skip_rate WHEN 'ms_per_play' THEN v.ms_per_play
                         WHEN 'plays_per_user' THEN v.plays_per_user ELSE v.ms_played_per_user END AS moments
    FROM per_variant v
    CROSS JOIN metrics m
),
paired AS (
    SELECT *,
           sum(CASE WHEN variant = 'treatment' THEN users ELSE 0 END) OVER experiment AS t_users,
           sum(CASE WHEN variant = 'control' THEN users ELSE 0 END) OVER experiment AS c_users,
           sum(CASE WHEN variant = 'control' THEN engaged_users ELSE 0 END) OVER experiment AS c_engaged,
           first_value(moments) OVER control_first AS c_moments
    FROM per_metric
    WINDOW experiment AS (PARTITION BY experiment_id, metric),
           control_first AS (PARTITION BY experiment_id, metric
                             ORDER BY CASE WHEN variant = 'control' THEN 0 ELSE 1 END
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
tested AS (
    SELECT *,
           variant = 'treatment' AND c_users > 0 AS compared,
           srm_p_value(t_users, c_users, expected_treatment_share) AS srm_p,
           ratio_test(moments, c_moments, cuped) AS r,
           two_proportion_z_test(engaged_users, users, c_engaged, c_users) AS z
    FROM paired
)
SELECT experiment_id, variant, metric, users,
       CASE WHEN kind = 'conversion' THEN CAST(engaged_users AS DOUBLE) / users
            ELSE moments['num_mean'] / moments['den_mean'] END AS value,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['lift'] ELSE r['lift'] END AS lift,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['ci_low'] ELSE r['ci_low'] END AS ci_low,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['ci_high'] ELSE r['ci_high'] END AS ci_high,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['p_value'] ELSE r['p_value'] END AS p_value,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['diff'] ELSE r['diff'] END AS diff,
       CASE WHEN NOT compared THEN NULL
            WHEN kind = 'conversion' THEN 'two-proportion z-test, user as trial'
            ELSE (CASE kind WHEN 'ratio' THEN 'delta method, Welch t' ELSE 'Welch t' END)
                 || CASE WHEN r['theta'] IS NOT NULL THEN ' + CUPED' ELSE '' END END AS method,
       srm_p AS srm_p_value,
       CASE WHEN compared AND kind <> 'conversion' THEN r['variance_reduction'] END AS cuped_variance_reduction,
       CASE WHEN srm_p < 0.001 THEN 'sample ratio mismatch (p < 0.001): users were lost or misassigned; do not read'
            WHEN c_users = 0 OR t_users = 0 THEN 'only one variant has users'
            WHEN compared AND (CASE WHEN kind = 'conversion' THEN z['p_value'] ELSE r['p_value'] END) IS NULL
                THEN 'no test: too few users or no variance'
       END AS flag
FROM tested;
$$;
