-- A small demo schema so a fresh server has something to query (`streampulse serve --demo`).
-- Idempotent: rerunning it leaves everything as it was. The full generated dataset and the
-- pipelines come from `streampulse datagen` and sql/pipelines (see README).
CREATE SCHEMA IF NOT EXISTS demo;

CREATE TABLE IF NOT EXISTS demo.songs AS
SELECT
    value AS song_id,
    value % 50 AS artist_id,
    'Song ' || CAST(value AS VARCHAR) AS title,
    CASE value % 4 WHEN 0 THEN 'pop' WHEN 1 THEN 'rock' WHEN 2 THEN 'jazz' ELSE 'electronic' END AS genre,
    120000 + (value * 7919) % 180000 AS duration_ms
FROM generate_series(1, 500) AS t(value);

CREATE TABLE IF NOT EXISTS demo.plays
PARTITIONED BY (play_date)
AS SELECT
    value AS play_id,
    (value * 2654435761) % 1000 AS user_id,
    1 + (value * 40503) % 500 AS song_id,
    CAST(DATE '2026-11-01' + CAST(value % 7 AS INT) AS DATE) AS play_date,
    (value * 97) % 240000 AS ms_played,
    (value % 5) = 0 AS skipped
FROM generate_series(1, 20000) AS t(value);

CREATE OR REPLACE VIEW demo.daily_plays AS
SELECT play_date, count(*) AS plays, count(DISTINCT user_id) AS listeners
FROM demo.plays GROUP BY play_date;
