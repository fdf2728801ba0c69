-- serve --demo: the five most played songs over pipeline A's output.
SELECT song_id, artist_id, sum(plays) AS plays, sum(listeners) AS listener_days, sum(skips) AS skips
FROM music.daily_play_counts
GROUP BY song_id, artist_id
ORDER BY plays DESC, song_id
LIMIT 5
