-- Pipeline E: A/B test analytics, with the user as the unit of analysis.
--
-- Users are randomised, so users (not plays) are the independent observations: plays of one
-- user are correlated (each user has their own skip propensity and activity), and a play-level
-- test calls ~17 % of A/A experiments significant at alpha = 0.05 instead of 5 %.
--
-- Assignment (deterministic, from music.experiments): a user is enrolled if
-- ab_bucket(user_id, salt, 100) < 100 * traffic_share, and in treatment if also
-- >= 100 * traffic_share * (1 - treatment_share); shares are rounded to whole buckets. A user
-- counts in an experiment when they played at least once between its start and end dates.
--
-- Per experiment, variant and metric (edit `metrics` below to add one or switch CUPED off):
--   skip_rate           skips / plays           ratio of per-user sums: delta method, Welch t
--   ms_per_play         ms played / plays       ratio of per-user sums: delta method, Welch t
--   plays_per_user      mean plays per user     per-user mean: Welch t
--   ms_played_per_user  mean ms per user        per-user mean: Welch t
--   engaged_user_rate   share of users with >= 30 min played: the user is the trial, pooled
--                       two-proportion z-test
-- CUPED (variance reduction) uses each user's same sums over the 14 days before start_date as
-- the covariate (0 for a user with no history); the interval and p-value are then adjusted and
-- `cuped_variance_reduction` says how much variance it removed.
--
-- Columns: `value` is the variant's metric (unadjusted); on treatment rows, `diff` is the
-- difference treatment - control (CUPED-adjusted when `method` says so), `lift` = diff / control's
-- value, `ci_low`/`ci_high` the 95 % interval of diff, `p_value` two-sided. Control rows are the
-- baseline (NULL test columns). `srm_p_value` is the experiment's sample ratio mismatch check
-- (chi-square of users per variant against the configured split); `flag` is NULL when the row
-- can be read, else why not (a mismatch below p = 0.001 flags every row of the experiment).
--
-- Idempotent: the whole table is replaced in one commit, so a rerun never duplicates rows and a
-- failed run changes nothing.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/e_ab_analytics.sql
-- Written so that each input is read once: DataFusion inlines a CTE at every reference, so each
-- CTE is referenced once; the metrics are rows of one CROSS JOIN and the control is found by a
-- window over each experiment's and metric's variants.
CREATE OR REPLACE TABLE music.experiment_results AS
WITH per_user AS (
    -- aggregate first, hash once per (experiment, user): not once per play
    SELECT e.experiment_id, e.salt, e.traffic_share, e.treatment_share, p.user_id,
           sum(CASE WHEN p.play_date >= e.start_date THEN 1 ELSE 0 END) AS plays,
           sum(CASE WHEN p.play_date >= e.start_date AND p.skipped THEN 1 ELSE 0 END) AS skips,
           sum(CASE WHEN p.play_date >= e.start_date THEN CAST(p.ms_played AS BIGINT) ELSE 0 END) AS ms,
           sum(CASE WHEN p.play_date < e.start_date THEN 1 ELSE 0 END) AS pre_plays,
           sum(CASE WHEN p.play_date < e.start_date AND p.skipped THEN 1 ELSE 0 END) AS pre_skips,
           sum(CASE WHEN p.play_date < e.start_date THEN CAST(p.ms_played AS BIGINT) ELSE 0 END) AS pre_ms
    FROM music.plays p
    JOIN music.experiments e ON p.play_date BETWEEN e.start_date - INTERVAL '14' DAY AND e.end_date
    GROUP BY e.experiment_id, e.salt, e.traffic_share, e.treatment_share, p.user_id
    HAVING sum(CASE WHEN p.play_date >= e.start_date THEN 1 ELSE 0 END) > 0
),
assigned AS (
    SELECT *, ab_bucket(user_id, salt, 100) AS bucket,
           round(100 * traffic_share) AS enrolled_buckets,
           round(100 * traffic_share * (1 - treatment_share)) AS control_buckets
    FROM per_user
),
per_variant AS (
    SELECT experiment_id,
           CASE WHEN bucket >= control_buckets THEN 'treatment' ELSE 'control' END AS variant,
           max((enrolled_buckets - control_buckets) / enrolled_buckets) AS expected_treatment_share,
           count(*) AS users,
           sum(CASE WHEN ms >= 1800000 THEN 1 ELSE 0 END) AS engaged_users,
           ratio_moments(skips, plays, pre_skips, pre_plays) AS skip_rate,
           ratio_moments(ms, plays, pre_ms, pre_plays) AS ms_per_play,
           ratio_moments(plays, 1, pre_plays, 1) AS plays_per_user,
           ratio_moments(ms, 1, pre_ms, 1) AS ms_played_per_user
    FROM assigned
    WHERE bucket < enrolled_buckets
    GROUP BY 1, 2
),
metrics AS (
    -- metric, how it is analysed, whether CUPED adjusts it
    SELECT * FROM (VALUES ('skip_rate', 'ratio', true),
                          ('ms_per_play', 'ratio', true),
                          ('plays_per_user', 'mean', true),
                          ('ms_played_per_user', 'mean', true),
                          ('engaged_user_rate', 'conversion', false)) AS m(metric, kind, cuped)
),
per_metric AS (
    SELECT v.experiment_id, v.variant, v.users, v.engaged_users, v.expected_treatment_share, m.metric, m.kind, m.cuped,
           CASE m.metric WHEN 'skip_rate' THEN v.skip_rate WHEN 'ms_per_play' THEN v.ms_per_play
                         WHEN 'plays_per_user' THEN v.plays_per_user ELSE v.ms_played_per_user END AS moments
    FROM per_variant v
    CROSS JOIN metrics m
),
paired AS (
    SELECT *,
           sum(CASE WHEN variant = 'treatment' THEN users ELSE 0 END) OVER experiment AS t_users,
           sum(CASE WHEN variant = 'control' THEN users ELSE 0 END) OVER experiment AS c_users,
           sum(CASE WHEN variant = 'control' THEN engaged_users ELSE 0 END) OVER experiment AS c_engaged,
           first_value(moments) OVER control_first AS c_moments
    FROM per_metric
    WINDOW experiment AS (PARTITION BY experiment_id, metric),
           control_first AS (PARTITION BY experiment_id, metric
                             ORDER BY CASE WHEN variant = 'control' THEN 0 ELSE 1 END
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
tested AS (
    SELECT *,
           variant = 'treatment' AND c_users > 0 AS compared,
           srm_p_value(t_users, c_users, expected_treatment_share) AS srm_p,
           ratio_test(moments, c_moments, cuped) AS r,
           two_proportion_z_test(engaged_users, users, c_engaged, c_users) AS z
    FROM paired
)
SELECT experiment_id, variant, metric, users,
       CASE WHEN kind = 'conversion' THEN CAST(engaged_users AS DOUBLE) / users
            ELSE moments['num_mean'] / moments['den_mean'] END AS value,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['lift'] ELSE r['lift'] END AS lift,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['ci_low'] ELSE r['ci_low'] END AS ci_low,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['ci_high'] ELSE r['ci_high'] END AS ci_high,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['p_value'] ELSE r['p_value'] END AS p_value,
       CASE WHEN NOT compared THEN NULL WHEN kind = 'conversion' THEN z['diff'] ELSE r['diff'] END AS diff,
       CASE WHEN NOT compared THEN NULL
            WHEN kind = 'conversion' THEN 'two-proportion z-test, user as trial'
            ELSE (CASE kind WHEN 'ratio' THEN 'delta method, Welch t' ELSE 'Welch t' END)
                 || CASE WHEN r['theta'] IS NOT NULL THEN ' + CUPED' ELSE '' END END AS method,
       srm_p AS srm_p_value,
       CASE WHEN compared AND kind <> 'conversion' THEN r['variance_reduction'] END AS cuped_variance_reduction,
       CASE WHEN srm_p < 0.001 THEN 'sample ratio mismatch (p < 0.001): users were lost or misassigned; do not read'
            WHEN c_users = 0 OR t_users = 0 THEN 'only one variant has users'
            WHEN compared AND (CASE WHEN kind = 'conversion' THEN z['p_value'] ELSE r['p_value'] END) IS NULL
                THEN 'no test: too few users or no variance'
       END AS flag
FROM tested;
