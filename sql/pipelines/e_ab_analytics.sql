-- Pipeline E: A/B test analytics.
--
-- Assignment is deterministic: treatment if ab_bucket(user_id, salt, 100) >= 50, else control.
-- A user counts in an experiment when they played at least once between its start and end.
-- Per experiment and variant, three metrics:
--   skip_rate           skips / plays                 two-proportion z-test (pooled)
--   plays_per_user      mean plays per user           Welch t-test over per-user values
--   ms_played_per_user  mean ms played per user       Welch t-test over per-user values
-- against the control variant: `lift` = (treatment - control) / control, `ci_low`/`ci_high` =
-- 95 % confidence interval of the absolute difference, `p_value` two-sided. The control row of
-- each metric is the baseline (NULL lift, interval and p-value).
--
-- Idempotent: the whole table is replaced in one commit, so a rerun never duplicates rows and a
-- failed run changes nothing.
--   streampulse sql --warehouse ./warehouse -f sql/pipelines/e_ab_analytics.sql
CREATE OR REPLACE TABLE music.experiment_results AS
WITH assignment AS (
    SELECT e.experiment_id, e.start_date, e.end_date, u.user_id,
           CASE WHEN ab_bucket(u.user_id, e.salt, 100) >= 50 THEN 'treatment' ELSE 'control' END AS variant
    FROM music.experiments e CROSS JOIN music.users u
),
per_user AS (
    SELECT a.experiment_id, a.variant, a.user_id,
           count(*) AS plays,
           sum(CASE WHEN p.skipped THEN 1 ELSE 0 END) AS skips,
           sum(CAST(p.ms_played AS BIGINT)) AS ms
    FROM assignment a
    JOIN music.plays p ON p.user_id = a.user_id AND p.play_date BETWEEN a.start_date AND a.end_date
    GROUP BY a.experiment_id, a.variant, a.user_id
),
per_variant AS (
    SELECT experiment_id, variant, count(*) AS users, sum(plays) AS plays, sum(skips) AS skips,
           avg(CAST(plays AS DOUBLE)) AS plays_mean, var_samp(CAST(plays AS DOUBLE)) AS plays_var,
           avg(CAST(ms AS DOUBLE)) AS ms_mean, var_samp(CAST(ms AS DOUBLE)) AS ms_var
    FROM per_user
    GROUP BY experiment_id, variant
),
tested AS (
    SELECT v.experiment_id, v.variant, v.users, v.plays, v.skips, v.plays_mean, v.ms_mean,
           v.variant = 'control' AS baseline,
           two_proportion_z_test(v.skips, v.plays, c.skips, c.plays) AS skip_test,
           welch_t_test(v.plays_mean, v.plays_var, v.users, c.plays_mean, c.plays_var, c.users) AS plays_test,
           welch_t_test(v.ms_mean, v.ms_var, v.users, c.ms_mean, c.ms_var, c.users) AS ms_test
    FROM per_variant v
    JOIN per_variant c ON c.experiment_id = v.experiment_id AND c.variant = 'control'
)
SELECT experiment_id, variant, 'skip_rate' AS metric, users, CAST(skips AS DOUBLE) / plays AS value,
       CASE WHEN baseline THEN NULL ELSE skip_test['lift'] END AS lift,
       CASE WHEN baseline THEN NULL ELSE skip_test['ci_low'] END AS ci_low,
       CASE WHEN baseline THEN NULL ELSE skip_test['ci_high'] END AS ci_high,
       CASE WHEN baseline THEN NULL ELSE skip_test['p_value'] END AS p_value
FROM tested
UNION ALL
SELECT experiment_id, variant, 'plays_per_user', users, plays_mean,
       CASE WHEN baseline THEN NULL ELSE plays_test['lift'] END,
       CASE WHEN baseline THEN NULL ELSE plays_test['ci_low'] END,
       CASE WHEN baseline THEN NULL ELSE plays_test['ci_high'] END,
       CASE WHEN baseline THEN NULL ELSE plays_test['p_value'] END
FROM tested
UNION ALL
SELECT experiment_id, variant, 'ms_played_per_user', users, ms_mean,
       CASE WHEN baseline THEN NULL ELSE ms_test['lift'] END,
       CASE WHEN baseline THEN NULL ELSE ms_test['ci_low'] END,
       CASE WHEN baseline THEN NULL ELSE ms_test['ci_high'] END,
       CASE WHEN baseline THEN NULL ELSE ms_test['p_value'] END
FROM tested;
