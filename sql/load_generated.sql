-- Load a folder written by `streampulse datagen` into the warehouse as managed Delta tables.
--   streampulse sql --warehouse ./warehouse -f sql/load_generated.sql --param data=/abs/path/to/data --param format=csv
-- Raw files are exposed as external tables in schema `landing`; managed copies go to `music`,
-- with plays partitioned by day. Rerunning replaces the managed tables (CREATE OR REPLACE).
CREATE SCHEMA IF NOT EXISTS landing;
CREATE SCHEMA IF NOT EXISTS music;

CREATE EXTERNAL TABLE IF NOT EXISTS landing.plays STORED AS ${format} LOCATION '${data}/plays/';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.users STORED AS ${format} LOCATION '${data}/users.${format}';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.songs STORED AS ${format} LOCATION '${data}/songs.${format}';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.artists STORED AS ${format} LOCATION '${data}/artists.${format}';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.subscriptions STORED AS ${format} LOCATION '${data}/subscriptions.${format}';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.ad_revenue STORED AS ${format} LOCATION '${data}/ad_revenue.${format}';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.experiments STORED AS ${format} LOCATION '${data}/experiments.${format}';

CREATE OR REPLACE TABLE music.plays PARTITIONED BY (play_date) AS
SELECT play_id, user_id, song_id, artist_id, played_at, ms_played, skipped, source, device, country, session_id,
       CAST(played_at AS DATE) AS play_date
FROM landing.plays;
CREATE OR REPLACE TABLE music.users AS SELECT * FROM landing.users;
CREATE OR REPLACE TABLE music.songs AS SELECT * FROM landing.songs;
CREATE OR REPLACE TABLE music.artists AS SELECT * FROM landing.artists;
CREATE OR REPLACE TABLE music.subscriptions AS SELECT * FROM landing.subscriptions;
CREATE OR REPLACE TABLE music.ad_revenue AS SELECT * FROM landing.ad_revenue;
CREATE OR REPLACE TABLE music.experiments AS SELECT * FROM landing.experiments;
