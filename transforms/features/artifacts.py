"""What a feature pipeline run writes and the skew and scoring pipelines read: statistics.json, the spec
file beside transform_fn/, and the statistics rows with their BigQuery schema."""

import json

from apache_beam.io.filesystems import FileSystems

from transforms.io.files import read_text

STATS_BQ_SCHEMA = {
    "fields": [
        {"name": "run_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "computed_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "split", "type": "STRING", "mode": "REQUIRED"},
        {"name": "feature", "type": "STRING", "mode": "REQUIRED"},
        {"name": "type", "type": "STRING", "mode": "REQUIRED"},
        {"name": "count", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "missing", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "min", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "max", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "mean", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "std", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "distinct", "type": "INTEGER", "mode": "NULLABLE"},
        {
            "name": "quantiles",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "q", "type": "FLOAT", "mode": "REQUIRED"},
                {"name": "value", "type": "FLOAT", "mode": "REQUIRED"},
            ],
        },
        {
            "name": "histogram",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "low", "type": "FLOAT", "mode": "REQUIRED"},
                {"name": "high", "type": "FLOAT", "mode": "REQUIRED"},
                {"name": "count", "type": "INTEGER", "mode": "REQUIRED"},
            ],
        },
        {
            "name": "top_values",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "value", "type": "STRING", "mode": "REQUIRED"},
                {"name": "count", "type": "INTEGER", "mode": "REQUIRED"},
            ],
        },
    ]
}


def stats_rows(artifact, run_id, computed_at):
    """A split's statistics artifact -> one BigQuery row per feature."""
    for name, f in artifact["features"].items():
        yield {
            "run_id": run_id,
            "computed_at": computed_at,
            "split": artifact["split"],
            "feature": name,
            "type": f["type"],
            "count": f["count"],
            "missing": f["missing"],
            "min": f.get("min"),
            "max": f.get("max"),
            "mean": f.get("mean"),
            "std": f.get("std"),
            "distinct": f.get("distinct"),
            "quantiles": [{"q": float(q), "value": v} for q, v in f.get("quantiles", {}).items()],
            "histogram": f.get("histogram", []),
            "top_values": f.get("top_values", []),
        }


def read_statistics(output_dir):
    """{split: artifact} from a run's statistics.json (for the skew check, reports and tests)."""
    return json.loads(read_text(FileSystems.join(str(output_dir), "statistics.json")))


SPEC_FILE = "feature_spec.yaml"  # written next to transform_fn/: scoring reads it with --transform_dir
