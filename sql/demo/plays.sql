-- serve --demo: what was loaded into music.plays.
SELECT count(*) AS plays, count(DISTINCT user_id) AS listeners, count(DISTINCT play_date) AS days FROM music.plays
