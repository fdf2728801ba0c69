-- serve --demo: pipeline D's royalties per month and model; allocations sum to the revenue.
SELECT month, model, count(artist_id) AS artists, sum(amount_cents) AS total_cents,
       sum(CASE WHEN artist_id IS NULL THEN amount_cents ELSE 0 END) AS unallocated_cents,
       max(amount_cents) FILTER (WHERE artist_id IS NOT NULL) AS top_artist_cents
FROM music.royalties
GROUP BY month, model
ORDER BY month, model
