-- serve --demo: the first user's top five recommendations from pipeline B.
SELECT r.user_id, r.rank, r.song_id, s.genre, round(r.score, 4) AS score,
       (SELECT count(DISTINCT user_id) FROM music.recommendations) AS users_with_recommendations
FROM music.recommendations r
JOIN music.songs s ON s.song_id = r.song_id
WHERE r.user_id = (SELECT min(user_id) FROM music.recommendations) AND r.rank <= 5
ORDER BY r.rank
