-- The 10 worst availability minutes of a day (query parameter "day", a DATE), latest pane of each window.
WITH latest AS (
  SELECT *
  FROM sre.sli_windows
  WHERE DATE(window_start) = @day  -- also prunes the day partitions
    AND sli_kind = 'availability'
  QUALIFY ROW_NUMBER() OVER (PARTITION BY sli_id, window_start ORDER BY pane_index DESC) = 1
)
SELECT window_start, sli_id, total, bad, good_fraction, latency_p99_ms
FROM latest
ORDER BY good_fraction, total DESC, window_start, sli_id
LIMIT 10
