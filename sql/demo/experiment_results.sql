-- serve --demo: pipeline E's results per experiment, metric and variant.
SELECT experiment_id, variant, metric, users, round(value, 4) AS value, round(lift, 4) AS lift,
       round(p_value, 6) AS p_value, method, round(cuped_variance_reduction, 3) AS cuped_vr,
       round(srm_p_value, 4) AS srm_p, flag
FROM music.experiment_results
ORDER BY experiment_id, metric, variant
