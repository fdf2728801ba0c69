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
