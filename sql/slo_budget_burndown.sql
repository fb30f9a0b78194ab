-- Error-budget burn-down of one SLO (query parameters "slo", a STRING, and "since" and "until",
-- TIMESTAMPs): the budget remaining at each full hour in that span.
SELECT evaluated_at, compliance, budget_remaining, status
FROM sre.slo_status
WHERE slo = @slo
  AND evaluated_at BETWEEN @since AND @until
  AND EXTRACT(MINUTE FROM evaluated_at) = 0
ORDER BY evaluated_at
