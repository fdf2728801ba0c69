-- serve --demo: the days in music.plays, to run pipeline A once per day.
SELECT DISTINCT CAST(play_date AS VARCHAR) AS play_date FROM music.plays ORDER BY 1
