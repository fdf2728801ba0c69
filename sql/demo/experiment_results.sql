-- serve --demo: pipeline E's results per experiment, metric and variant.
SELECT experiment_id, variant, metric, users, round(value, 4) AS value, round(lift, 4) AS lift,
       round(p_value, 6) AS p_value
FROM music.experiment_results
ORDER BY experiment_id, metric, variant
