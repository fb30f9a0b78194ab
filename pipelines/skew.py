"""Training/serving skew and drift: statistics of serving data (files, a BigQuery table or query, or
fixed windows of a Pub/Sub stream) against the training statistics of a feature pipeline run, per feature,
with thresholds from its feature spec; an anomalies report as JSON, a BigQuery table and Pub/Sub messages
(in streaming: one report per window, and an alert message per feature with anomalies).

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

Streaming on Dataflow, serving requests from Pub/Sub checked every hour (windows by publish time):

    python -m pipelines.skew --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --training_dir gs://B/datasets/churn-v3 \\
        --input_subscription projects/P/subscriptions/serving-requests-skew --skew_window_seconds 3600 \\
        --output_dir gs://B/skew/churn-v3 --anomalies_table P:ml.skew_anomalies \\
        --anomalies_topic projects/P/topics/feature-anomalies --dead_letter_table P:ml.dead_letters
"""

import json
import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection
from apache_beam.transforms import window

from pipelines.launch import apply_udf, metric_counts, read_records, run_pipeline, write_dead_letters, write_health_rows
from pipelines.options import (
    BatchInputOptions,
    HealthOptions,
    OutputOptions,
    PubsubInputOptions,
    RecordInputOptions,
    UdfOptions,
    check_health,
    check_input,
    check_outputs,
    check_udf,
)
from pipelines.samples import SKEW_DIR
from transforms.features.artifacts import SPEC_FILE
from transforms.features.skew import (
    ANOMALY_BQ_SCHEMA,
    DEFAULT_THRESHOLDS,
    CountInTrainingBins,
    ServingValues,
    anomaly_rows,
    skew_report,
)
from transforms.features.spec import load_feature_spec
from transforms.features.statistics import ROWS_PER_BATCH, ComputeStatistics, raw_table
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_text
from transforms.io.sinks import BigQueryTarget, WriteRecords
from transforms.io.sources import Input, ReadRecords

PIPELINE = "skew"
SAMPLES = SKEW_DIR


class SkewOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--training_dir",
            type=str,
            default=None,
            help="Output folder of a feature pipeline run (statistics.json and feature_spec.yaml), local or gs://. "
            "Default: the bundled training statistics of the churn sample.",
        )
        parser.add_argument(
            "--training_split",
            type=str,
            default="train",
            help="Which split of the training statistics to compare with. Default: train.",
        )
        parser.add_argument(
            "--anomalies_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the report, one row per feature (created if missing, "
            "day-partitioned on checked_at).",
        )
        parser.add_argument(
            "--anomalies_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T: one JSON message per feature with anomalies (per window "
            "in streaming: an alert).",
        )
        parser.add_argument(
            "--skew_window_seconds",
            type=int,
            default=3600,
            help="Streaming (--input_subscription or --input_topic): length of the fixed windows, by publish "
            "time, each compared with the training statistics on its own. Default: 3600.",
        )


INPUT_FLAGS = ("input_subscription", "input_topic", "input_files", "input_table", "input_query")
OPTION_CLASSES = (SkewOptions, PubsubInputOptions, BatchInputOptions, RecordInputOptions, UdfOptions, HealthOptions)


class Settings(NamedTuple):
    input: Input
    spec: object
    training: dict  # the training split's statistics artifact
    training_dir: str
    thresholds: dict  # feature -> {measure: threshold}


class SkewOutputs(NamedTuple):
    report: PCollection  # one skew report per window (batch: one)
    rows: PCollection  # the reports' rows, one per feature and window
    dead_letters: PCollection
    health_rows: PCollection = None  # with a --health_* sink


def validate(options):
    opts = options.view_as(SkewOptions)
    source = check_input(options, INPUT_FLAGS, Input(input_files=str(SAMPLES / "serving.jsonl")))
    if opts.skew_window_seconds <= 0:
        raise ValueError(f"--skew_window_seconds must be positive, got {opts.skew_window_seconds}")
    check_udf(options)
    check_health(options)
    check_outputs(options, PIPELINE, ())
    training_dir = opts.training_dir or str(SAMPLES / "training")
    try:
        spec = load_feature_spec(FileSystems.join(training_dir, SPEC_FILE), "--training_dir")
        statistics = json.loads(read_text(FileSystems.join(training_dir, "statistics.json")))
    except OSError as e:
        raise ValueError(
            f"--training_dir: {training_dir} must hold a feature pipeline's {SPEC_FILE} and statistics.json: {e}"
        ) from None
    if opts.training_split not in statistics:
        raise ValueError(f"--training_split: {training_dir}/statistics.json has no split '{opts.training_split}'")
    thresholds = {f.name: {**DEFAULT_THRESHOLDS, **f.skew} for f in spec.inputs if f.type != "label"}
    return Settings(source, spec, statistics[opts.training_split], training_dir, thresholds)


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (Create/TestStream in tests): dicts, JSON lines or
    PubsubMessages. In streaming, each fixed window of --skew_window_seconds gets its own report."""
    opts, out = options.view_as(SkewOptions), options.view_as(OutputOptions)
    streaming = options.view_as(StandardOptions).streaming
    spec, training = settings.spec, settings.training
    features = [f for f in spec.inputs if f.type != "label"]
    numeric = [f.name for f in features if training["features"][f.name]["type"] == "numeric"]
    strings = [f.name for f in features if f.name not in numeric]
    texts = {f.name for f in features if f.type == "text"}
    records = read = read_records(
        pipeline,
        PIPELINE,
        source or ReadRecords(settings.input, options.view_as(RecordInputOptions).input_format),
        "ReadServing",
    )
    records, dead_letter_sources = apply_udf(options, records, PIPELINE)
    values = records | "ServingValues" >> beam.ParDo(ServingValues(spec, PIPELINE)).with_outputs(
        DEAD_LETTER_TAG, main="rows"
    )
    rows = values.rows
    if streaming:
        rows = rows | "SkewWindows" >> beam.WindowInto(window.FixedWindows(opts.skew_window_seconds))
    batches = (
        rows
        | "BatchServingRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=ROWS_PER_BATCH)
        | "ServingTables" >> beam.Map(raw_table, numeric, strings)
    )
    statistics = (
        batches
        | "AsServingSplit" >> beam.Map(lambda table: ("serving", table))
        | "ServingStatistics"
        >> ComputeStatistics(  # the serving histograms go to the batch JSON only
            ["serving"], numeric, strings, histograms=not streaming
        )
    )
    bins = batches | "CountInTrainingBins" >> CountInTrainingBins(
        {name: training["features"][name]["histogram"] for name in numeric}
    )
    report = statistics | "SkewReport" >> beam.Map(
        lambda serving, bins_: skew_report(training, serving, bins_, settings.thresholds, texts),
        beam.pvalue.AsSingleton(bins, default_value={}),
    )
    if not streaming:  # one JSON file each; streaming writes the report rows as JSONL below
        (
            statistics
            | "ServingStatisticsJson" >> beam.Map(lambda artifact: json.dumps(artifact, indent=1, sort_keys=True))
            | "WriteServingStatistics"
            >> beam.io.WriteToText(
                FileSystems.join(out.output_dir, "serving_statistics"), ".json", shard_name_template=""
            )
        )
        (
            report
            | "ReportJson" >> beam.Map(lambda r: json.dumps(r, indent=1, sort_keys=True))
            | "WriteReport"
            >> beam.io.WriteToText(FileSystems.join(out.output_dir, "anomalies"), ".json", shard_name_template="")
        )
    report_rows = report | "ReportRows" >> beam.FlatMap(anomaly_rows, settings.training_dir)
    sink_failures = ()
    if opts.anomalies_table or streaming:
        sink_failures = report_rows | "WriteReportRows" >> WriteRecords(
            PIPELINE,
            BigQueryTarget(opts.anomalies_table, ANOMALY_BQ_SCHEMA, "checked_at", ["feature"])
            if opts.anomalies_table
            else None,
            out.bq_write_method,
            local_prefix=FileSystems.join(out.output_dir, "anomalies") if streaming else None,
            streaming=streaming,
        )
    if opts.anomalies_topic:
        (
            report_rows
            | "OnlyAnomalies" >> beam.Filter(lambda row: row["anomalies"])
            | "PublishAnomalies" >> WriteRecords(PIPELINE, pubsub_topic=opts.anomalies_topic, streaming=streaming)
        )
    dead_letters = write_dead_letters(
        options, PIPELINE, read, (*dead_letter_sources, values[DEAD_LETTER_TAG], *sink_failures)
    )
    health_rows = write_health_rows(options, PIPELINE, report_rows, dead_letters)
    return SkewOutputs(report, report_rows, dead_letters, health_rows)


def report(result, options, settings):
    counts = metric_counts(result, PIPELINE)
    output_dir = options.view_as(OutputOptions).output_dir
    skew = json.loads(read_text(FileSystems.join(output_dir, "anomalies.json")))
    lines = [
        f"training rows: {skew['training_rows']}  serving rows: {counts.get('serving_rows', 0)}  "
        f"dead letters: {counts.get('dead_letters', 0)}  anomalies: {skew['anomalies']}"
    ]
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
