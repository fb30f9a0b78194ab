-- One pipeline's health minute by minute, from query parameter "start" up to "end" (TIMESTAMPs on minute
-- boundaries; "pipeline" a STRING), latest pane of each minute: what it emitted, how much of it was stale or
-- dead letters, and the minutes without any health row (has_rows false: the pipeline stalled or died).
WITH ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY sli_id, window_start ORDER BY pane_index DESC) AS newest
  FROM ops.pipeline_health
  WHERE journey = @pipeline AND window_start >= @start AND window_start < @end
),
per_minute AS (
  SELECT
    window_start AS minute,
    MAX(IF(sli_name = 'freshness', total, NULL)) AS records,
    MAX(IF(sli_name = 'freshness', bad, NULL)) AS stale,
    MAX(IF(sli_name = 'dead_letters', bad, NULL)) AS dead_letters,
    MAX(IF(sli_name = 'freshness', latency_max_ms, NULL)) / 1000 AS max_lag_s
  FROM ranked
  WHERE newest = 1
  GROUP BY minute
)
SELECT
  minute,
  records IS NOT NULL AS has_rows,
  COALESCE(records, 0) AS records,
  COALESCE(stale, 0) AS stale,
  COALESCE(dead_letters, 0) AS dead_letters,
  max_lag_s
FROM UNNEST(GENERATE_TIMESTAMP_ARRAY(@start, TIMESTAMP_SUB(@end, INTERVAL 1 MINUTE), INTERVAL 1 MINUTE)) AS minute
LEFT JOIN per_minute USING (minute)
ORDER BY minute
