-- Per-journey SLIs for one day (query parameter "day", a DATE): requests, good fraction and the worst minute's p99,
-- from the latest pane of each window (late data adds panes; the highest pane_index is the complete one).
WITH latest AS (
  SELECT *
  FROM sre.sli_windows
  WHERE DATE(window_start) = @day  -- also prunes the day partitions
  QUALIFY ROW_NUMBER() OVER (PARTITION BY sli_id, window_start ORDER BY pane_index DESC) = 1
)
SELECT
  service,
  journey,
  sli_name,
  SUM(total) AS requests,
  SUM(good) AS good,
  SAFE_DIVIDE(SUM(good), SUM(total)) AS good_fraction,
  MAX(latency_p99_ms) AS worst_minute_p99_ms
FROM latest
WHERE sli_kind IN ('availability', 'latency')
GROUP BY service, journey, sli_name
ORDER BY service, journey, sli_name
