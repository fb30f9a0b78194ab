-- The predictions of one TensorFlow Serving request body, in instance order (a failed instance has no
-- row: its dead letter carries the attributes score.request_id and score.instance_index).
SELECT
  instance_index,
  request_id,
  model_version,
  top_k[SAFE_OFFSET(0)].label AS top_label,
  top_k[SAFE_OFFSET(0)].score AS top_score
FROM `ml`.`predictions`
WHERE STARTS_WITH(request_id, CONCAT(@body_id, '/')) AND instance_index IS NOT NULL
ORDER BY instance_index
