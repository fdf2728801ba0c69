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
-- Written so that each input is read once: DataFusion inlines a CTE at every reference, so the
-- per-user aggregate is referenced exactly once, the control variant is found with a window
-- over the four per-variant rows, and the three metrics come from one CROSS JOIN.
CREATE OR REPLACE TABLE music.experiment_results AS
WITH per_user AS (
    -- aggregate first, hash once per (experiment, user): not once per play
    SELECT e.experiment_id, e.salt, p.user_id,
           count(*) AS plays,
           sum(CASE WHEN p.skipped THEN 1 ELSE 0 END) AS skips,
           sum(CAST(p.ms_played AS BIGINT)) AS ms
    FROM music.plays p
    JOIN music.experiments e ON p.play_date BETWEEN e.start_date AND e.end_date
    GROUP BY e.experiment_id, e.salt, p.user_id
),
per_variant AS (
    SELECT experiment_id,
           CASE WHEN ab_bucket(user_id, salt, 100) >= 50 THEN 'treatment' ELSE 'control' END AS variant,
           count(*) AS users, sum(plays) AS plays, sum(skips) AS skips,
           avg(CAST(plays AS DOUBLE)) AS plays_mean, var_samp(CAST(plays AS DOUBLE)) AS plays_var,
           avg(CAST(ms AS DOUBLE)) AS ms_mean, var_samp(CAST(ms AS DOUBLE)) AS ms_var
    FROM per_user
    GROUP BY 1, 2
),
with_control AS (
    SELECT *,
           first_value(users) OVER control AS c_users, first_value(plays) OVER control AS c_plays,
           first_value(skips) OVER control AS c_skips,
           first_value(plays_mean) OVER control AS c_plays_mean, first_value(plays_var) OVER control AS c_plays_var,
           first_value(ms_mean) OVER control AS c_ms_mean, first_value(ms_var) OVER control AS c_ms_var
    FROM per_variant
    WINDOW control AS (PARTITION BY experiment_id ORDER BY CASE WHEN variant = 'control' THEN 0 ELSE 1 END
                       ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
tested AS (
    SELECT experiment_id, variant, users, plays, skips, plays_mean, ms_mean,
           variant = 'control' AS baseline,
           two_proportion_z_test(skips, plays, c_skips, c_plays) AS skip_test,
           welch_t_test(plays_mean, plays_var, users, c_plays_mean, c_plays_var, c_users) AS plays_test,
           welch_t_test(ms_mean, ms_var, users, c_ms_mean, c_ms_var, c_users) AS ms_test
    FROM with_control
)
SELECT t.experiment_id, t.variant, m.metric, t.users,
       CASE m.metric WHEN 'skip_rate' THEN CAST(t.skips AS DOUBLE) / t.plays
                     WHEN 'plays_per_user' THEN t.plays_mean ELSE t.ms_mean END AS value,
       CASE WHEN t.baseline THEN NULL
            WHEN m.metric = 'skip_rate' THEN t.skip_test['lift']
            WHEN m.metric = 'plays_per_user' THEN t.plays_test['lift'] ELSE t.ms_test['lift'] END AS lift,
       CASE WHEN t.baseline THEN NULL
            WHEN m.metric = 'skip_rate' THEN t.skip_test['ci_low']
            WHEN m.metric = 'plays_per_user' THEN t.plays_test['ci_low'] ELSE t.ms_test['ci_low'] END AS ci_low,
       CASE WHEN t.baseline THEN NULL
            WHEN m.metric = 'skip_rate' THEN t.skip_test['ci_high']
            WHEN m.metric = 'plays_per_user' THEN t.plays_test['ci_high'] ELSE t.ms_test['ci_high'] END AS ci_high,
       CASE WHEN t.baseline THEN NULL
            WHEN m.metric = 'skip_rate' THEN t.skip_test['p_value']
            WHEN m.metric = 'plays_per_user' THEN t.plays_test['p_value'] ELSE t.ms_test['p_value'] END AS p_value
FROM tested t
CROSS JOIN (VALUES ('skip_rate'), ('plays_per_user'), ('ms_played_per_user')) AS m(metric);
