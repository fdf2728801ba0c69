-- Continuous load of live play events into music.plays, the same columns as the batch load
-- (sql/load_generated.sql): gzip JSON lines in Hive day folders, as `streampulse datagen
-- --live` drops them. Run once, against a server (its pipe service does the loading):
--   streampulse sql --connect grpc://127.0.0.1:50051 --user admin -f sql/ingest.sql --param events=/abs/path/to/events/
-- Each new file is loaded exactly once, seconds after it lands, whatever crashes or however
-- many servers run; bad lines go to system.load_errors. Watch it in system.pipes (backlog,
-- lag) and system.copy_history (one row per file); ALTER PIPE music.plays_events PAUSE stops it.
CREATE PIPE IF NOT EXISTS music.plays_events INTERVAL = '500ms'
  COMMENT = 'live play events into music.plays'
AS COPY INTO music.plays
  FROM (SELECT play_id, user_id, song_id, artist_id, played_at, ms_played, skipped, source, device, country,
               session_id, CAST(played_at AS DATE) AS play_date
        FROM '${events}')
  PATTERN = '.*[.]gz'
  FILE_FORMAT = (TYPE = JSON, COMPRESSION = GZIP)
  ON_ERROR = CONTINUE;
