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
