"""Template parameters per pipeline: generated from each pipeline's options classes plus this table of
what argparse cannot say (regexes, parameter types, a sample value the tests check against both).

Every option must have an entry here and every entry an option (tests/test_templates.py), so the
metadata cannot drift from the flags."""

import argparse

from pipelines import feature_stats, image_ingest, options, score, skew, sli, slo_replay, window_features
from transforms.images import pixels as images

PUBSUB_SUBSCRIPTION = r"^projects/[^/]+/subscriptions/[^/]+$"
PUBSUB_TOPIC = r"^projects/[^/]+/topics/[^/]+$"
BIGQUERY_TABLE = r"^([a-z0-9.:-]+[:.])?[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$"
GCS_FILE = r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]/.+$"
GCS_FOLDER = r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9](/.*)?$"
POSITIVE_INT = r"^[1-9][0-9]*$"
NON_NEGATIVE_INT = r"^[0-9]+$"
DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?(Z|[+-][0-9]{2}:[0-9]{2})?$"


def one_of(choices):
    return r"^(%s)$" % "|".join(choices)


# flag -> (paramType, [regexes], sample value)
PARAMETERS = {
    # slo_replay takes a comma-separated list of PATH or NAME=PATH
    "sli_config": (
        "GCS_READ_FILE",
        [r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}=)?gs://[^,]+(,([A-Za-z0-9][A-Za-z0-9_.-]{0,63}=)?gs://[^,]+)*$"],
        "gs://my-bucket/config/profile_service.yaml",
    ),
    "input_subscription": ("PUBSUB_SUBSCRIPTION", [PUBSUB_SUBSCRIPTION], "projects/p/subscriptions/request-logs"),
    "input_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/request-logs"),
    "input_files": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/logs/2026/11/*.json.gz"),
    "input_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE[:-1] + r"\*?$"], "my-project:logs.run_googleapis_com_requests_*"),
    "input_start_date": ("TEXT", [DATE], "2026-11-01"),
    "input_end_date": ("TEXT", [DATE], "2026-11-30"),
    "window_seconds": ("TEXT", [POSITIVE_INT], "60"),
    "allowed_lateness_seconds": ("TEXT", [NON_NEGATIVE_INT], "3600"),
    "output_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:sre.sli_windows"),
    "bigtable_instance": ("TEXT", [r"^[a-z][a-z0-9-]{4,31}[a-z0-9]$"], "sre-dashboards"),
    "bigtable_table": ("TEXT", [r"^[-_.a-zA-Z0-9]{1,50}$"], "sli_windows"),
    "tensorboard_dir": ("GCS_WRITE_FOLDER", [GCS_FOLDER], "gs://my-bucket/tensorboard"),
    "tensorboard_run": ("TEXT", [r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"], "sli-backfill-2026-11"),
    "slo_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:sre.slo_status"),
    "alerts_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/slo-alerts"),
    "sli_rows_subscription": ("PUBSUB_SUBSCRIPTION", [PUBSUB_SUBSCRIPTION], "projects/p/subscriptions/pipeline-health"),
    "sli_rows_delay_seconds": ("TEXT", [NON_NEGATIVE_INT], "120"),
    "health_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ops.pipeline_health"),
    "health_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/pipeline-health"),
    "health_output_dir": ("GCS_WRITE_FOLDER", [GCS_FOLDER], "gs://my-bucket/pipeline_health"),
    "health_freshness_seconds": ("TEXT", [r"^[0-9]+(\.[0-9]+)?$"], "120.0"),
    "output_dir": ("GCS_WRITE_FOLDER", [GCS_FOLDER], "gs://my-bucket/sli/output"),
    "dead_letter_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:sre.dead_letters"),
    "dead_letter_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/sli-dead-letters"),
    "bq_write_method": ("TEXT", [one_of(options.BQ_WRITE_METHODS)], "STORAGE_WRITE_API"),
    "progress": ("TEXT", [one_of(("auto", "off"))], "off"),
    "udf_path": (
        "GCS_READ_FILE",
        [r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]/.+\.(js|py)$"],
        "gs://my-bucket/udf/mask_pii.py",
    ),
    "udf_timeout_ms": ("TEXT", [NON_NEGATIVE_INT], "250"),
    "dead_letter_max_payload_bytes": ("TEXT", [POSITIVE_INT], "131072"),
    "udf_function": ("TEXT", [r"^[A-Za-z_$][A-Za-z0-9_$]*$"], "process"),
    "input_dir": ("GCS_READ_FOLDER", [GCS_FOLDER], "gs://my-bucket/images"),
    "input_manifest": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/images/manifest.csv"),
    "image_size": ("TEXT", [r"^[1-9][0-9]*(x[1-9][0-9]*)?$"], "224x224"),
    "resize_method": ("TEXT", [one_of(images.RESIZE_METHODS)], "crop"),
    "encoding": ("TEXT", [one_of(images.ENCODINGS)], "png"),
    "jpeg_quality": ("TEXT", [POSITIVE_INT], "85"),
    "max_image_bytes": ("TEXT", [POSITIVE_INT], "10485760"),
    "max_image_pixels": ("TEXT", [POSITIVE_INT], "25000000"),
    "label_map": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/datasets/flowers-v1/label_map.txt"),
    "unknown_label": ("TEXT", [one_of(("dead_letter", "fail"))], "fail"),
    "exif_orientation": ("TEXT", [one_of(images.EXIF_ORIENTATIONS)], "ignore"),
    "dedup_by": ("TEXT", [one_of(images.DEDUP_KEYS)], "pixels"),
    "splits": (
        "TEXT",
        [r"^[A-Za-z_][A-Za-z0-9_]*=[0-9.]+(,[A-Za-z_][A-Za-z0-9_]*=[0-9.]+)*$"],
        "train=0.8,eval=0.1,test=0.1",
    ),
    "max_per_label": ("TEXT", [POSITIVE_INT], "5000"),
    "imbalance_ratio": ("TEXT", [r"^[0-9]+(\.[0-9]+)?$"], "2.5"),
    "dedup_retention_seconds": ("TEXT", [POSITIVE_INT], "86400"),
    "num_shards": ("TEXT", [NON_NEGATIVE_INT], "16"),
    "compression": ("TEXT", [one_of(("gzip", "none"))], "none"),
    "shard_seconds": ("TEXT", [POSITIVE_INT], "300"),
    "manifest_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ml.image_manifest"),
    "model_path": ("TEXT", [GCS_FILE], "gs://my-bucket/models/shapes/3"),
    "signature": ("TEXT", [r"^[A-Za-z0-9_.-]+$"], "serving_default"),
    "top_k": ("TEXT", [POSITIVE_INT], "5"),
    "model_watch_pattern": ("TEXT", [GCS_FILE], "gs://my-bucket/models/shapes/*/saved_model.pb"),
    "model_watch_interval_seconds": ("TEXT", [POSITIVE_INT], "600"),
    "min_batch_size": ("TEXT", [POSITIVE_INT], "8"),
    "max_batch_size": ("TEXT", [POSITIVE_INT], "128"),
    "max_batch_duration_secs": ("TEXT", [POSITIVE_INT], "2"),
    "predictions_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/predictions"),
    "predictions_format": ("TEXT", [one_of(score.PREDICTIONS_FORMATS)], "tf_serving"),
    "max_instances_per_request": ("TEXT", [POSITIVE_INT], "500"),
    "image_scale": ("TEXT", [one_of(score.IMAGE_SCALES)], "-1_1"),
    "cache_ttl_hours": ("TEXT", [r"^[0-9]+(\.[0-9]+)?$"], "48.0"),
    "feature_spec": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/specs/churn.yaml"),
    "input_format": ("TEXT", [one_of(("csv", "jsonl", "parquet", "tfrecord"))], "parquet"),
    "input_query": (
        "TEXT",
        [r"(?is)^\s*(SELECT|WITH)\b.+"],
        "SELECT * FROM `my-project.crm.customers` WHERE RAND() < 0.1",
    ),
    "stats_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ml.feature_statistics"),
    "training_dir": ("GCS_READ_FOLDER", [GCS_FOLDER], "gs://my-bucket/datasets/churn-v3"),
    "transform_dir": ("GCS_READ_FOLDER", [GCS_FOLDER], "gs://my-bucket/datasets/churn-v3"),
    "training_split": ("TEXT", [r"^[A-Za-z_][A-Za-z0-9_]*$"], "eval"),
    "anomalies_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ml.skew_anomalies"),
    "anomalies_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/feature-anomalies"),
    "skew_window_seconds": ("TEXT", [POSITIVE_INT], "3600"),
    "window_spec": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/config/transactions.yaml"),
    "feature_ttl_hours": ("TEXT", [r"^[0-9]+(\.[0-9]+)?$"], "72.0"),
    "start": ("TEXT", [RFC3339], "2026-11-01T00:00:00Z"),
    "end": ("TEXT", [RFC3339], "2026-12-01T00:00:00+00:00"),
    "alerts_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:sre.slo_replay_alerts"),
    "report_html": ("GCS_WRITE_FILE", [GCS_FILE], "gs://my-bucket/slo_replay/report.html"),
    "canary_model_dir": ("TEXT", [GCS_FILE], "gs://my-bucket/models/shapes/4"),
    "canary_fraction": ("TEXT", [r"^0?\.[0-9]*[1-9][0-9]*$"], "0.05"),
    "shadow_model_dir": ("TEXT", [GCS_FILE], "gs://my-bucket/models/shapes/4"),
    "rollout_slo_config": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/config/canary_slos.yaml"),
    "rollback_control_file": ("GCS_WRITE_FILE", [GCS_FILE], "gs://my-bucket/rollouts/shapes-4/rollback.json"),
    "rollback_poll_seconds": ("TEXT", [r"^[0-9]+(\.[0-9]+)?$"], "10.0"),
    "divergence_threshold": ("TEXT", [r"^0?\.[0-9]+$"], "0.1"),
    "rollback_topic": ("PUBSUB_TOPIC", [PUBSUB_TOPIC], "projects/p/topics/model-rollbacks"),
    "rollout_sli_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ml.rollout_sli_rows"),
    "rollout_slo_table": ("BIGQUERY_TABLE", [BIGQUERY_TABLE], "my-project:ml.rollout_slo_status"),
    "feature_store_instance": ("TEXT", [r"^[a-z][a-z0-9-]{4,31}[a-z0-9]$"], "features"),
    "feature_store_table": ("TEXT", [r"^[-_.a-zA-Z0-9]{1,50}$"], "card_features"),
    "feature_window_spec": ("GCS_READ_FILE", [GCS_FILE], "gs://my-bucket/config/transactions.yaml"),
    "entity_field": ("TEXT", [r"^\S+$"], "card_id"),
    "missing_feature_value": ("TEXT", [r"^-?[0-9]+(\.[0-9]+)?$"], "0.0"),
}

PIPELINES = {
    "sli": {
        "module": sli,
        "option_classes": (*sli.OPTION_CLASSES, options.OutputOptions),
        "name": "SLIs from request logs",
        "description": "Per-journey, per-minute availability, latency, throughput and error-rate SLIs from "
        "Cloud Logging and JSON request logs (Pub/Sub, files or a BigQuery export), written to "
        "BigQuery and Bigtable; SLO compliance, error budgets and burn-rate alerts; dead "
        "letters for bad records.",
        "streaming": True,
    },
    "image_ingest": {
        "module": image_ingest,
        "option_classes": (*image_ingest.OPTION_CLASSES, options.OutputOptions),
        "name": "Image ingestion to TFRecords",
        "description": "Labelled images from Pub/Sub (TensorFlow Serving base64 JSON or raw bytes), a folder "
        "tree or a manifest: validated, decoded with a pixel cap, resized, deduplicated by "
        "content hash, split per label and written as TFRecords of tf.train.Example, with a "
        "manifest of every input, a label map and dead letters for bad images.",
        "streaming": True,
    },
    "feature_stats": {
        "module": feature_stats,
        "option_classes": (*feature_stats.OPTION_CLASSES, options.OutputOptions),
        "name": "Feature statistics and preprocessing",
        "description": "Records from BigQuery (table or query) or files (CSV, JSONL, Parquet, TFRecord) cleansed "
        "against a feature spec, split by a key hash, statistics per split, tf.Transform analysis "
        "of the training split applied to every split, written as TFRecords with the transform "
        "function and the statistics (JSON and BigQuery).",
        "streaming": False,
    },
    "skew": {
        "module": skew,
        "option_classes": (*skew.OPTION_CLASSES, options.OutputOptions),
        "name": "Training/serving skew and drift",
        "description": "Serving records (files, a BigQuery table or query, or fixed windows of a Pub/Sub stream) "
        "compared per feature with the training statistics of a feature pipeline run: Jensen-Shannon divergence, "
        "PSI, out-of-range rate, "
        "L-infinity distance, new categories, missing-rate change; anomalies to JSON, BigQuery and "
        "Pub/Sub.",
        "streaming": True,
    },
    "score": {
        "module": score,
        "option_classes": (*score.OPTION_CLASSES, options.OutputOptions),
        "name": "Model scoring",
        "description": "TensorFlow SavedModels (serving signature) or .keras models scored through RunInference "
        "on requests from Pub/Sub, files, BigQuery or an image folder: predictions with the "
        "model version to BigQuery, Pub/Sub and files, Bigtable as a serving cache, new model "
        "versions picked up from a watched path, dead letters for bad requests.",
        "streaming": True,
    },
    "window_features": {
        "module": window_features,
        "option_classes": (*window_features.OPTION_CLASSES, options.OutputOptions),
        "name": "Window-aggregation features",
        "description": "Per-entity features over sliding or fixed event-time windows (count, sum, mean, min, max, "
        "last, distinct count) from Pub/Sub, files or BigQuery: rows of entity, time index (window "
        "end) and features to a Bigtable online store (one row per entity, cell timestamp = window "
        "end, max-age garbage collection) and a BigQuery offline store for point-in-time joins.",
        "streaming": True,
    },
    "slo_replay": {
        "module": slo_replay,
        "option_classes": (*slo_replay.OPTION_CLASSES, options.OutputOptions),
        "name": "SLO replay and what-if",
        "description": "Stored SLI rows (files or BigQuery) of any period evaluated again under one or several "
        "SLI configs side by side: the pages and tickets that would have fired and the error budget each "
        "SLO consumed, as a comparison table and alert transitions to JSONL and BigQuery.",
        "streaming": False,
    },
}


def option_actions(option_classes):
    """(dest, help, default) of every flag the option classes declare, in declaration order."""
    parser = argparse.ArgumentParser(add_help=False)
    for cls in option_classes:
        cls._add_argparse_args(parser)
    return [(a.dest, a.help, a.default) for a in parser._actions]


def _label(dest):
    text = dest.replace("_", " ")
    for word, upper in (("bq", "BigQuery"), ("udf", "UDF"), ("sli", "SLI")):
        text = " ".join(upper if w == word else w for w in text.split())
    return text[0].upper() + text[1:]


def metadata(pipeline):
    spec = PIPELINES[pipeline]
    parameters = []
    for dest, help_text, _ in option_actions(spec["option_classes"]):
        param_type, regexes, _ = PARAMETERS[dest]
        parameters.append(
            {
                "name": dest,
                "label": _label(dest),
                "helpText": help_text,
                "isOptional": True,
                "regexes": regexes,
                "paramType": param_type,
            }
        )
    return {
        "name": spec["name"],
        "description": spec["description"],
        "streaming": spec["streaming"],
        "parameters": parameters,
    }
