-- Pipeline D: monthly royalties per artist, under two models.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/d_royalties.sql --param month=2026-10
--
-- Money is integer cents and every split is largest_remainder(), so for each month and model
-- sum(amount_cents) equals the month's revenue (subscriptions + ad revenue) to the cent.
-- A play counts ("qualifying stream") when ms_played >= 30,000 in the month.
--
--   pro_rata      each country's pool (its subscriptions + its ad revenue) is split over artists
--                 by their share of the country's qualifying streams (plays.country).
--   user_centric  each paying user's payment is split over the artists they streamed, by
--                 qualifying ms played; each country's ad revenue is split pro rata as above.
--
-- Money with nothing to split by (a country with revenue but no qualifying streams, a paying
-- user who streamed nothing that qualifies) is kept as an explicit unallocated row: artist_id
-- NULL, streams 0. `streams` is the artist's qualifying streams in the month (all countries).
-- Ties in the remainders go to the lower artist_id.
--
-- Idempotent: the month's partition is replaced in one commit (INSERT OVERWRITE), so a rerun
-- never duplicates rows, other months are untouched, and a failed run changes nothing.
CREATE TABLE IF NOT EXISTS music.royalties (
    month DATE,
    model VARCHAR,
    artist_id BIGINT,
    amount_cents BIGINT,
    streams BIGINT
) PARTITIONED BY (month);

INSERT OVERWRITE music.royalties (month, model, artist_id, amount_cents, streams)
WITH qualifying AS (
    SELECT user_id, artist_id, country, CAST(ms_played AS BIGINT) AS ms
    FROM music.plays
    WHERE play_date >= DATE '${month}-01'
      AND play_date < DATE '${month}-01' + INTERVAL '1 month'
      AND ms_played >= 30000
),
subscription_pool AS (
    SELECT user_id, country, sum(amount_cents) AS amount_cents
    FROM music.subscriptions
    WHERE month = DATE '${month}-01'
    GROUP BY user_id, country
),
ad_pool AS (
    SELECT country, sum(amount_cents) AS amount_cents
    FROM music.ad_revenue
    WHERE day >= DATE '${month}-01' AND day < DATE '${month}-01' + INTERVAL '1 month'
    GROUP BY country
),
country_pool AS (
    SELECT country, sum(amount_cents) AS amount_cents
    FROM (SELECT country, amount_cents FROM subscription_pool
          UNION ALL
          SELECT country, amount_cents FROM ad_pool) AS revenue
    GROUP BY country
),
country_artist AS (
    SELECT country, artist_id, count(*) AS streams FROM qualifying GROUP BY country, artist_id
),
user_artist AS (
    SELECT user_id, artist_id, sum(ms) AS ms FROM qualifying GROUP BY user_id, artist_id
),
-- A pool LEFT JOINed to nothing keeps one row with a NULL artist: largest_remainder gives it a
-- NULL share, and the whole pool becomes that row's (unallocated) amount.
pro_rata AS (
    SELECT ca.artist_id,
           coalesce(largest_remainder(p.amount_cents, ca.streams)
                        OVER (PARTITION BY p.country ORDER BY ca.artist_id), p.amount_cents) AS amount_cents
    FROM country_pool p LEFT JOIN country_artist ca ON ca.country = p.country
),
ad_pro_rata AS (
    SELECT ca.artist_id,
           coalesce(largest_remainder(p.amount_cents, ca.streams)
                        OVER (PARTITION BY p.country ORDER BY ca.artist_id), p.amount_cents) AS amount_cents
    FROM ad_pool p LEFT JOIN country_artist ca ON ca.country = p.country
),
user_centric AS (
    SELECT ua.artist_id,
           coalesce(largest_remainder(s.amount_cents, ua.ms)
                        OVER (PARTITION BY s.user_id ORDER BY ua.artist_id), s.amount_cents) AS amount_cents
    FROM subscription_pool s LEFT JOIN user_artist ua ON ua.user_id = s.user_id
),
allocations AS (
    SELECT 'pro_rata' AS model, artist_id, amount_cents FROM pro_rata
    UNION ALL
    SELECT 'user_centric' AS model, artist_id, amount_cents FROM ad_pro_rata
    UNION ALL
    SELECT 'user_centric' AS model, artist_id, amount_cents FROM user_centric
),
artist_streams AS (
    SELECT artist_id, count(*) AS streams FROM qualifying GROUP BY artist_id
)
SELECT DATE '${month}-01' AS month,
       a.model,
       a.artist_id,
       sum(a.amount_cents) AS amount_cents,
       coalesce(max(s.streams), 0) AS streams
FROM allocations a LEFT JOIN artist_streams s ON s.artist_id = a.artist_id
GROUP BY a.model, a.artist_id;
