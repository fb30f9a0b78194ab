-- SLO report for one day (query parameter "day", a DATE): per SLO, the end-of-day compliance and error
-- budget, the minutes spent alerting and the day's highest 1-hour burn rate.
WITH day_status AS (
  SELECT
    *,
    (SELECT MAX(b.burn_rate) FROM UNNEST(burn_rates) AS b WHERE b.window_minutes = 60) AS burn_rate_1h
  FROM sre.slo_status
  WHERE DATE(evaluated_at) = @day
),
last_status AS (
  SELECT slo, target, window_days, compliance, budget_remaining
  FROM day_status
  QUALIFY ROW_NUMBER() OVER (PARTITION BY slo ORDER BY evaluated_at DESC) = 1
),
alerting AS (
  SELECT slo, COUNTIF(status = 'ALERTING') AS minutes_alerting
  FROM day_status
  GROUP BY slo
),
burn AS (
  SELECT slo, MAX(burn_rate_1h) AS max_burn_rate_1h
  FROM day_status
  GROUP BY slo
)
SELECT slo, target, window_days, compliance, budget_remaining, minutes_alerting, max_burn_rate_1h
FROM last_status
JOIN alerting USING (slo)
JOIN burn USING (slo)
ORDER BY slo
