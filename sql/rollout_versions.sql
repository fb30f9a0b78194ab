-- Each model version over a period, from the per-version SLI rows of a rollout (--rollout_sli_table):
-- requests, the share that failed (a dead letter of that version) and the share slower than the latency
-- SLI's threshold. The latest pane of each window counts (streaming rewrites a window with late data).
WITH latest AS (
  SELECT *
  FROM `ml`.`rollout_sli_rows`
  WHERE window_start >= @since
  QUALIFY ROW_NUMBER() OVER (PARTITION BY sli_id, window_start ORDER BY pane_index DESC) = 1
)
SELECT
  journey,
  SUM(IF(sli_kind = 'availability', total, 0)) AS requests,
  SAFE_DIVIDE(SUM(IF(sli_kind = 'availability', bad, 0)), SUM(IF(sli_kind = 'availability', total, 0))) AS failed_rate,
  SAFE_DIVIDE(SUM(IF(sli_kind = 'latency', bad, 0)), SUM(IF(sli_kind = 'latency', total, 0))) AS slow_rate
FROM latest
GROUP BY journey
ORDER BY journey
