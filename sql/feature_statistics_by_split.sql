-- Each feature's statistics side by side per split, for one run of the feature pipeline.
SELECT
  feature,
  split,
  count,
  missing,
  SAFE_DIVIDE(missing, count) AS missing_rate,
  min,
  max,
  mean,
  std
FROM ml.feature_statistics
WHERE run_id = @run_id
ORDER BY feature, split
