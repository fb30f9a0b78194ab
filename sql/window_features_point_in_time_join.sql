-- Point-in-time training join on the offline store (the window-features pipeline's --output_table, here
-- features.card_windows for the bundled card-transactions spec): each label row of ml.training_labels
-- (entity, label_time, label...) gets, per feature, the value of the latest window that had ended at
-- label_time and was still the latest one then (time_index <= label_time < valid_until), so no feature
-- sees events after the label. A feature with no such window had no events in it: count, sum and distinct
-- count are 0, the others NULL. Streaming runs may write several panes of a window: the highest counts.
-- For another spec, list its feature names in the SELECT of `pivoted`.
WITH current_windows AS (
  SELECT l.entity, l.label_time, w.features
  FROM (SELECT DISTINCT entity, label_time FROM ml.training_labels) AS l
  JOIN features.card_windows AS w
    ON w.entity = l.entity AND w.time_index <= l.label_time AND l.label_time < w.valid_until
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY l.entity, l.label_time, w.window ORDER BY w.pane_index DESC, w.emitted_at DESC) = 1
),
pivoted AS (
  SELECT
    entity,
    label_time,
    MAX(IF(f.name = 'amount_count_10m', f.value, NULL)) AS amount_count_10m,
    MAX(IF(f.name = 'amount_sum_10m', f.value, NULL)) AS amount_sum_10m,
    MAX(IF(f.name = 'amount_mean_10m', f.value, NULL)) AS amount_mean_10m,
    MAX(IF(f.name = 'amount_min_10m', f.value, NULL)) AS amount_min_10m,
    MAX(IF(f.name = 'amount_max_10m', f.value, NULL)) AS amount_max_10m,
    MAX(IF(f.name = 'amount_last_10m', f.value, NULL)) AS amount_last_10m,
    MAX(IF(f.name = 'merchant_distinct_count_10m', f.value, NULL)) AS merchant_distinct_count_10m,
    MAX(IF(f.name = 'amount_count_1h', f.value, NULL)) AS amount_count_1h,
    MAX(IF(f.name = 'amount_sum_1h', f.value, NULL)) AS amount_sum_1h,
    MAX(IF(f.name = 'amount_mean_1h', f.value, NULL)) AS amount_mean_1h,
    MAX(IF(f.name = 'amount_min_1h', f.value, NULL)) AS amount_min_1h,
    MAX(IF(f.name = 'amount_max_1h', f.value, NULL)) AS amount_max_1h,
    MAX(IF(f.name = 'amount_last_1h', f.value, NULL)) AS amount_last_1h,
    MAX(IF(f.name = 'merchant_distinct_count_1h', f.value, NULL)) AS merchant_distinct_count_1h,
    MAX(IF(f.name = 'amount_count_1d', f.value, NULL)) AS amount_count_1d,
    MAX(IF(f.name = 'amount_sum_1d', f.value, NULL)) AS amount_sum_1d,
    MAX(IF(f.name = 'amount_mean_1d', f.value, NULL)) AS amount_mean_1d,
    MAX(IF(f.name = 'amount_min_1d', f.value, NULL)) AS amount_min_1d,
    MAX(IF(f.name = 'amount_max_1d', f.value, NULL)) AS amount_max_1d,
    MAX(IF(f.name = 'amount_last_1d', f.value, NULL)) AS amount_last_1d,
    MAX(IF(f.name = 'merchant_distinct_count_1d', f.value, NULL)) AS merchant_distinct_count_1d
  FROM current_windows, UNNEST(features) AS f
  GROUP BY entity, label_time
)
SELECT
  l.*,
  CAST(COALESCE(p.amount_count_10m, 0) AS INT64) AS amount_count_10m,
  COALESCE(p.amount_sum_10m, 0) AS amount_sum_10m,
  p.amount_mean_10m,
  p.amount_min_10m,
  p.amount_max_10m,
  p.amount_last_10m,
  CAST(COALESCE(p.merchant_distinct_count_10m, 0) AS INT64) AS merchant_distinct_count_10m,
  CAST(COALESCE(p.amount_count_1h, 0) AS INT64) AS amount_count_1h,
  COALESCE(p.amount_sum_1h, 0) AS amount_sum_1h,
  p.amount_mean_1h,
  p.amount_min_1h,
  p.amount_max_1h,
  p.amount_last_1h,
  CAST(COALESCE(p.merchant_distinct_count_1h, 0) AS INT64) AS merchant_distinct_count_1h,
  CAST(COALESCE(p.amount_count_1d, 0) AS INT64) AS amount_count_1d,
  COALESCE(p.amount_sum_1d, 0) AS amount_sum_1d,
  p.amount_mean_1d,
  p.amount_min_1d,
  p.amount_max_1d,
  p.amount_last_1d,
  CAST(COALESCE(p.merchant_distinct_count_1d, 0) AS INT64) AS merchant_distinct_count_1d
FROM ml.training_labels AS l
LEFT JOIN pivoted AS p USING (entity, label_time)
ORDER BY l.entity, l.label_time
