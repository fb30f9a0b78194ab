-- What became of the images ingested since a point in time: per label, status, split and reason.
SELECT
  label,
  status,
  split,
  reason,
  COUNT(*) AS images
FROM ml.image_manifest
WHERE recorded_at >= @since
GROUP BY label, status, split, reason
ORDER BY label, status, split, reason
