"""Training/serving skew and drift: statistics of serving data (files, a BigQuery table or query) against
the training statistics of a feature pipeline run, per feature, with thresholds from its feature spec;
an anomalies report as JSON, a BigQuery table and Pub/Sub messages.

Local default (bundled training statistics of the churn sample, and serving records where age has
shifted, a new country appears and the device is missing more often; report in output/skew):

    python -m pipelines.skew

On Dataflow, yesterday's serving requests against the training run:

    python -m pipelines.skew --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --training_dir gs://B/datasets/churn-v3 \\
        --input_query 'SELECT * FROM `P.serving.requests` WHERE DATE(ts) = CURRENT_DATE() - 1' \\
        --output_dir gs://B/skew/churn-v3 --anomalies_table P:ml.skew_anomalies \\
        --anomalies_topic projects/P/topics/feature-anomalies
"""
import datetime
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection

from pipelines.common import (
    BatchInputOptions, OutputOptions, RecordInputOptions, UdfOptions, add_progress, metric_counts, read_text,
    run_pipeline)
from pipelines.feature_inputs import check_record_inputs, record_source
from pipelines.feature_stats import SPEC_FILE
from transforms.deadletter import DEAD_LETTER_TAG, RecordError, make_dead_letter
from transforms.feature_spec import load_feature_spec
from transforms.feature_stats import ComputeStatistics
from transforms.features import record_dict, serving_raw_values
from transforms.sinks import BigQueryTarget, WriteDeadLetters, WriteRecords
from transforms.skew import DEFAULT_THRESHOLDS, CountInTrainingBins, skew_report
from transforms.udf import ApplyUdf, load_udf

PIPELINE = "skew"
SAMPLES = Path(__file__).resolve().parent / "samples" / "skew"


class SkewOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--training_dir", type=str, default=None,
            help="Output folder of a feature pipeline run (statistics.json and feature_spec.yaml), local or gs://. "
                 "Default: the bundled training statistics of the churn sample.")
        parser.add_argument(
            "--training_split", type=str, default="train",
            help="Which split of the training statistics to compare with. Default: train.")
        parser.add_argument(
            "--anomalies_table", type=str, default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the report, one row per feature (created if missing, "
                 "day-partitioned on checked_at).")
        parser.add_argument(
            "--anomalies_topic", type=str, default=None,
            help="Pub/Sub topic projects/P/topics/T: one JSON message per feature with anomalies.")


OPTION_CLASSES = (SkewOptions, BatchInputOptions, RecordInputOptions, UdfOptions)

ANOMALY_BQ_SCHEMA = {"fields": [
    {"name": "checked_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    {"name": "training_dir", "type": "STRING", "mode": "REQUIRED"},
    {"name": "feature", "type": "STRING", "mode": "REQUIRED"},
    {"name": "type", "type": "STRING", "mode": "REQUIRED"},
    {"name": "measures", "type": "JSON", "mode": "NULLABLE"},
    {"name": "anomalies", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "measure", "type": "STRING", "mode": "REQUIRED"},
        {"name": "value", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "threshold", "type": "FLOAT", "mode": "REQUIRED"}]},
]}


class Settings(NamedTuple):
    spec: object
    training: dict  # the training split's statistics artifact
    training_dir: str
    thresholds: dict  # feature -> {measure: threshold}


class SkewOutputs(NamedTuple):
    report: PCollection
    dead_letters: PCollection


def validate(options):
    opts, out = options.view_as(SkewOptions), options.view_as(OutputOptions)
    check_record_inputs(options)
    udf = options.view_as(UdfOptions)
    if udf.udf_path:
        load_udf(udf.udf_path, udf.udf_function)
    out.output_dir = out.output_dir or os.path.join("output", PIPELINE)
    training_dir = opts.training_dir or str(SAMPLES / "training")
    try:
        spec = load_feature_spec(FileSystems.join(training_dir, SPEC_FILE), read=read_text)
        statistics = json.loads(read_text(FileSystems.join(training_dir, "statistics.json")))
    except OSError as e:
        raise ValueError(f"--training_dir: {training_dir} must hold a feature pipeline's {SPEC_FILE} and "
                         f"statistics.json: {e}") from None
    if opts.training_split not in statistics:
        raise ValueError(f"--training_split: {training_dir}/statistics.json has no split '{opts.training_split}'")
    thresholds = {f.name: {**DEFAULT_THRESHOLDS, **f.skew} for f in spec.inputs if f.type != "label"}
    return Settings(spec, statistics[opts.training_split], training_dir, thresholds)


class ServingValues(beam.DoFn):
    """Record (dict or JSON text) -> {feature: value or None}; a wrong type is a dead letter."""

    STEP = "ServingValues"

    def __init__(self, spec):
        self._spec = spec

    def process(self, record):
        try:
            values = serving_raw_values(record_dict(record), self._spec)
        except RecordError as e:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, make_dead_letter(PIPELINE, self.STEP, record, e))
            return
        Metrics.counter(PIPELINE, "serving_rows").inc()
        yield values


def _report_rows(report, training_dir, checked_at):
    for f in report["features"]:
        yield {"checked_at": checked_at, "training_dir": training_dir, "feature": f["feature"], "type": f["type"],
               "measures": json.dumps(f["measures"]), "anomalies": f["anomalies"]}


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (Create in tests): dicts or JSON lines."""
    opts, out = options.view_as(SkewOptions), options.view_as(OutputOptions)
    spec, training = settings.spec, settings.training
    features = [f for f in spec.inputs if f.type != "label"]
    numeric = [f.name for f in features if training["features"][f.name]["type"] == "numeric"]
    strings = [f.name for f in features if f.name not in numeric]
    texts = {f.name for f in features if f.type == "text"}
    records = read = pipeline | "ReadServing" >> (source or record_source(options, SAMPLES / "serving.jsonl"))
    dead_letter_sources = []
    udf = options.view_as(UdfOptions)
    if udf.udf_path:
        transformed = records | "ApplyUdf" >> beam.ParDo(
            ApplyUdf(udf.udf_path, udf.udf_function, PIPELINE)).with_outputs(DEAD_LETTER_TAG, main="records")
        records = transformed.records
        dead_letter_sources.append(transformed[DEAD_LETTER_TAG])
    values = records | "ServingValues" >> beam.ParDo(ServingValues(spec)).with_outputs(DEAD_LETTER_TAG, main="rows")
    statistics = (values.rows
                  | "AsServingSplit" >> beam.Map(lambda row: ("serving", row))
                  | "ServingStatistics" >> ComputeStatistics(["serving"], numeric, strings))
    bins = values.rows | "CountInTrainingBins" >> CountInTrainingBins(
        {name: training["features"][name]["histogram"] for name in numeric})
    report = statistics | "SkewReport" >> beam.Map(
        lambda serving, bins_: skew_report(training, serving, bins_, settings.thresholds, texts),
        beam.pvalue.AsSingleton(bins))
    (statistics
     | "ServingStatisticsJson" >> beam.Map(lambda artifact: json.dumps(artifact, indent=1, sort_keys=True))
     | "WriteServingStatistics" >> beam.io.WriteToText(FileSystems.join(out.output_dir, "serving_statistics"),
                                                       ".json", shard_name_template=""))
    (report
     | "ReportJson" >> beam.Map(lambda r: json.dumps(r, indent=1, sort_keys=True))
     | "WriteReport" >> beam.io.WriteToText(FileSystems.join(out.output_dir, "anomalies"), ".json",
                                            shard_name_template=""))
    checked_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    sink_failures = ()
    if opts.anomalies_table or opts.anomalies_topic:
        rows = report | "ReportRows" >> beam.FlatMap(_report_rows, settings.training_dir, checked_at)
        if opts.anomalies_table:
            sink_failures = rows | "WriteAnomaliesTable" >> WriteRecords(
                PIPELINE, BigQueryTarget(opts.anomalies_table, ANOMALY_BQ_SCHEMA, "checked_at", ["feature"]),
                out.bq_write_method)
        if opts.anomalies_topic:
            (rows
             | "OnlyAnomalies" >> beam.Filter(lambda row: row["anomalies"])
             | "PublishAnomalies" >> WriteRecords(PIPELINE, pubsub_topic=opts.anomalies_topic))
    dead_letters = (*dead_letter_sources, values[DEAD_LETTER_TAG], *sink_failures) | "FlattenDeadLetters" >> beam.Flatten()
    dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
        PIPELINE, out.dead_letter_table, out.dead_letter_topic, FileSystems.join(out.output_dir, "dead_letters"),
        False, out.bq_write_method)
    add_progress(options, PIPELINE, read, dead_letters)
    return SkewOutputs(report, dead_letters)


def report(result, options, settings):
    counts = metric_counts(result, PIPELINE)
    output_dir = options.view_as(OutputOptions).output_dir
    skew = json.loads(read_text(FileSystems.join(output_dir, "anomalies.json")))
    lines = [f"training rows: {skew['training_rows']}  serving rows: {counts.get('serving_rows', 0)}  "
             f"dead letters: {counts.get('dead_letters', 0)}  anomalies: {skew['anomalies']}"]
    for f in skew["features"]:
        measures = ", ".join(f"{k}={v:.3f}" for k, v in sorted(f["measures"].items()) if isinstance(v, float))
        new = f["measures"].get("new_categories")
        lines.append(f"{f['feature']:<14}{measures}" + (f", new: {new}" if new else ""))
        lines.extend(f"  ANOMALY {a['measure']} {a['value']:.3f} > {a['threshold']:g}" for a in f["anomalies"])
    lines.append(f"report: {output_dir}/anomalies.json, serving statistics: {output_dir}/serving_statistics.json")
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
