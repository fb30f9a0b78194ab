"""Dataflow readiness: each pipeline's bundled default run with the SDK workers in separate processes
(DoFns pickled and shipped, modules imported afresh, as on Dataflow), giving the same counts."""

import pytest

from pipelines import feature_stats, image_ingest, score, skew, window_features
from pipelines.launch import metric_counts

MULTI_PROCESS = [
    "--runner",
    "FnApiRunner",
    "--direct_num_workers",
    "2",
    "--direct_running_mode",
    "multi_processing",
    "--progress",
    "off",
]


# The counts follow from how the samples were generated (pipelines/samples/*.py): 25 distinct images, 2 copies,
# 3 bad files; 32 requests and 4 malformed ones; 2,000 customers (70/30 per label) and 4 bad records; 1,000
# serving records; 3,040 card transactions and 4 bad records.
@pytest.mark.parametrize(
    "module, namespace, expected",
    [
        (image_ingest, "image_ingest", {"manifest_accepted": 25, "manifest_duplicate": 2, "manifest_rejected": 3}),
        (score, "score", {"scored": 32, "dead_letters": 4}),
        (feature_stats, "feature_stats", {"records_in": 2004, "rows_train": 1400, "rows_eval": 600, "dead_letters": 4}),
        (skew, "skew", {"serving_rows": 1000}),
        (window_features, "window_features", {"records_in": 3044, "events": 3040, "dead_letters": 4}),
    ],
)
def test_bundled_default_with_workers_in_separate_processes(module, namespace, expected, tmp_path):
    result = module.run([*MULTI_PROCESS, "--output_dir", str(tmp_path)])
    counts = metric_counts(result, namespace)
    assert {k: counts.get(k, 0) for k in expected} == expected
