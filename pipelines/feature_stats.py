"""Full-pass feature preprocessing, tf.Transform style: cleanse records against a feature spec, split
them deterministically by a key hash, compute statistics per split, analyze the training split only,
transform every split with the training statistics, and write TFRecords, the transform function and
the statistics.

Local default (bundled churn-like sample with missing values, outliers and bad rows; outputs in
output/feature_stats, then a report):

    python -m pipelines.feature_stats

On Dataflow, from a BigQuery query (filter and sample in SQL):

    python -m pipelines.feature_stats --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --feature_spec gs://B/specs/churn.yaml \\
        --input_query 'SELECT * FROM `P.crm.customers` WHERE RAND() < 0.1' \\
        --output_dir gs://B/datasets/churn-v3 --stats_table P:ml.feature_statistics
"""

import datetime
import json
import logging
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.pvalue import PCollection

from pipelines.launch import (
    apply_udf,
    dead_letters_by_reason,
    metric_counts,
    read_records,
    run_pipeline,
    write_dead_letters,
)
from pipelines.options import (
    BatchInputOptions,
    OutputOptions,
    RecordInputOptions,
    TensorBoardOptions,
    TfRecordOutputOptions,
    UdfOptions,
    check_input,
    check_outputs,
    check_udf,
    resolve_tensorboard_run,
)
from pipelines.samples import FEATURES_DIR
from transforms.features.analysis import TrainingAnalysisFn, needs_tft_analysis
from transforms.features.artifacts import SPEC_FILE, STATS_BQ_SCHEMA, read_statistics, stats_rows
from transforms.features.cleanse import (
    AssignStratifiedSplits,
    CleanseChunks,
    CleansedBatch,
    CleanseRecords,
    CleanseTables,
    batch_of_rows,
    batches_by_split,
    raw_of_split,
)
from transforms.features.examples import (
    EncodeExamples,
    WriteExampleBatches,
    tensor_adapter_config,
    tfxio_batch,
    tfxio_schema,
)
from transforms.features.spec import make_preprocessing_fn, parse_feature_spec
from transforms.features.statistics import ROWS_PER_BATCH, ComputeStatistics
from transforms.features.tensorboard import WriteFeatureSummaries
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_text
from transforms.io.record_batches import ReadRecordBatches, batched_format
from transforms.io.sinks import BigQueryTarget, WriteRecords
from transforms.io.sources import Input, ReadRecords

PIPELINE = "feature_stats"
SAMPLE_SPEC = FEATURES_DIR / "churn.yaml"
SAMPLE_DATA = FEATURES_DIR / "customers.jsonl"


class FeatureStatsOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--feature_spec",
            type=str,
            default=None,
            help=f"YAML feature spec (local or gs://): key, label, splits, features with types, cleansing and "
            f"transforms. Default: the bundled sample {SAMPLE_SPEC.name}.",
        )
        parser.add_argument(
            "--stats_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the statistics, one row per split and feature "
            "(created if missing, day-partitioned on computed_at).",
        )


INPUT_FLAGS = ("input_files", "input_table", "input_query")
OPTION_CLASSES = (
    FeatureStatsOptions,
    BatchInputOptions,
    RecordInputOptions,
    TfRecordOutputOptions,
    TensorBoardOptions,
    UdfOptions,
)


class Settings(NamedTuple):
    input: Input
    spec: object  # FeatureSpec
    spec_text: str
    run_id: str
    temp_dir: str


class FeatureStatsOutputs(NamedTuple):
    statistics: PCollection  # one artifact per split
    transformed: dict  # split -> PCollection of (transformed RecordBatch, passthrough)
    dead_letters: PCollection


def validate(options):
    opts = options.view_as(FeatureStatsOptions)
    out = options.view_as(OutputOptions)
    source = check_input(options, INPUT_FLAGS, Input(input_files=str(SAMPLE_DATA)))
    if options.view_as(TfRecordOutputOptions).num_shards < 0:
        raise ValueError("--num_shards must be >= 0")
    check_udf(options)
    check_outputs(options, PIPELINE, ())
    resolve_tensorboard_run(options, PIPELINE)
    spec_path = opts.feature_spec or str(SAMPLE_SPEC)
    try:
        spec_text = read_text(spec_path)
    except OSError as e:
        raise ValueError(f"--feature_spec: cannot read {spec_path}: {e}") from None
    spec = parse_feature_spec(spec_text, f"--feature_spec {spec_path}")  # read once: also written beside transform_fn/
    temp_dir = options.view_as(GoogleCloudOptions).temp_location or FileSystems.join(out.output_dir, "tmp")
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Settings(source, spec, spec_text, run_id, temp_dir)


def filled_of_split(split_batch, split):
    """(split, CleansedBatch) -> its filled table if it is of `split`."""
    if split_batch[0] == split:
        yield split_batch[1].filled


def _count_splits(batch, counters) -> CleansedBatch:
    names, counts = np.unique(batch.split.astype(str), return_counts=True)
    for name, count in zip(names, counts, strict=True):
        counters[name].inc(int(count))
    return batch


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (Create in tests): dicts or JSON lines."""
    import tensorflow_transform.beam as tft_beam

    spec, opts = settings.spec, options.view_as(FeatureStatsOptions)
    out = options.view_as(OutputOptions)
    tfrecords = options.view_as(TfRecordOutputOptions)
    input_format = options.view_as(RecordInputOptions).input_format
    columnar = batched_format(settings.input, input_format)
    if source is None and columnar and not options.view_as(UdfOptions).udf_path:
        read = pipeline | "ReadRecordBatches" >> ReadRecordBatches(settings.input.input_files, columnar, PIPELINE)
        dead_letter_sources = []
        cleanse = CleanseTables(spec, PIPELINE) if columnar == "parquet" else CleanseChunks(spec, PIPELINE)
        cleansed = read | "CleanseTables" >> beam.ParDo(cleanse).with_outputs(DEAD_LETTER_TAG, main="batches")
        batches = cleansed.batches
    else:
        records = read = read_records(
            pipeline, PIPELINE, source or ReadRecords(settings.input, input_format), "ReadRecords"
        )
        records, dead_letter_sources = apply_udf(options, records, PIPELINE)
        cleansed = records | "CleanseRecords" >> beam.ParDo(CleanseRecords(spec, PIPELINE)).with_outputs(
            DEAD_LETTER_TAG, main="batches"
        )
        batches = (
            cleansed.batches
            | "BatchRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=ROWS_PER_BATCH)
            | "RowsToBatches" >> beam.Map(batch_of_rows, spec)
        )
    if spec.stratify_by:
        batches = batches | "AssignStratifiedSplits" >> AssignStratifiedSplits(spec)
    splits = list(spec.splits)
    counters = {name: Metrics.counter(PIPELINE, f"rows_{name}") for name in splits}
    by_split = (
        batches
        | "CountRowsPerSplit" >> beam.Map(_count_splits, counters)
        | "BatchesBySplit" >> beam.FlatMap(batches_by_split, splits)
    )

    numeric = [f.name for f in spec.inputs if f.is_numeric]
    strings = [f.name for f in spec.inputs if f.name not in numeric]
    statistics = (
        by_split
        | "RawBySplit" >> beam.Map(raw_of_split)
        | "ComputeStatistics" >> ComputeStatistics(splits, numeric, strings)
    )

    (
        statistics
        | "AllSplits" >> beam.combiners.ToList()
        | "StatisticsJson"
        >> beam.Map(
            lambda artifacts: json.dumps(
                {"run_id": settings.run_id, **{a["split"]: a for a in artifacts}}, indent=1, sort_keys=True
            )
        )
        | "WriteStatistics"
        >> beam.io.WriteToText(FileSystems.join(out.output_dir, "statistics"), ".json", shard_name_template="")
    )
    tb = options.view_as(TensorBoardOptions)
    if tb.tensorboard_dir:
        statistics | "WriteTensorBoard" >> beam.ParDo(
            WriteFeatureSummaries(FileSystems.join(tb.tensorboard_dir, tb.tensorboard_run))
        )
    sink_failures = ()
    if opts.stats_table:
        computed_at = datetime.datetime.now(datetime.UTC).isoformat()
        sink_failures = (
            statistics
            | "StatisticsRows" >> beam.FlatMap(stats_rows, settings.run_id, computed_at)
            | "WriteStatisticsTable"
            >> WriteRecords(
                PIPELINE,
                BigQueryTarget(opts.stats_table, STATS_BQ_SCHEMA, "computed_at", ["feature"]),
                out.bq_write_method,
            )
        )

    arrow_schema, adapter = tfxio_schema(spec), tensor_adapter_config(spec)
    filled = {
        name: by_split | f"Filled[{name}]" >> beam.FlatMap(filled_of_split, name).with_output_types(pa.Table)
        for name in splits
    }
    analysis = filled["train"] | "AnalyzeTrain" >> beam.CombineGlobally(TrainingAnalysisFn(spec))
    transformed = {}
    compress = tfrecords.compression == "gzip"
    with tft_beam.Context(temp_dir=settings.temp_dir):
        inputs = {
            name: filled[name]
            | f"RecordBatches[{name}]" >> beam.Map(tfxio_batch, arrow_schema).with_output_types(pa.RecordBatch)
            for name in splits
        }
        # tf.Transform's pass over the training rows only for what the pipeline's analysis leaves to it
        analyzed = (
            inputs["train"]
            if needs_tft_analysis(spec)
            else pipeline | "NoRowsToAnalyze" >> beam.Create([pa.RecordBatch.from_pylist([], schema=arrow_schema)])
        )
        transform_fn = (analyzed, adapter) | "TransformFn" >> tft_beam.AnalyzeDataset(
            make_preprocessing_fn(spec, analysis)
        )
        for name in splits:
            transformed[name], metadata = ((inputs[name], adapter), transform_fn) | (
                f"Transform[{name}]" >> tft_beam.TransformDataset(output_record_batches=True)
            )
        for name in splits:
            (
                transformed[name]
                | f"Encode[{name}]" >> beam.ParDo(EncodeExamples(metadata.schema))
                | f"Write[{name}]"
                >> WriteExampleBatches(
                    FileSystems.join(out.output_dir, name, "examples"), tfrecords.num_shards, compress
                )
            )
        transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out.output_dir)
    (
        pipeline
        | "SpecText" >> beam.Create([settings.spec_text])
        | "WriteSpec" >> beam.io.WriteToText(FileSystems.join(out.output_dir, SPEC_FILE), shard_name_template="")
    )

    dead_letters = write_dead_letters(
        options, PIPELINE, read, (*dead_letter_sources, cleansed[DEAD_LETTER_TAG], *sink_failures)
    )
    return FeatureStatsOutputs(statistics, transformed, dead_letters)


def report(result, options, settings):
    output_dir, spec = options.view_as(OutputOptions).output_dir, settings.spec
    counts = metric_counts(result, PIPELINE)
    lines = [
        f"records in: {counts.get('records_in', 0)}  rows: "
        + ", ".join(f"{s}={counts.get(f'rows_{s}', 0)}" for s in spec.splits)
        + f"  dead letters: {counts.get('dead_letters', 0)}  filtered by the UDF: {counts.get('udf_filtered', 0)}"
    ]
    by_reason = dead_letters_by_reason(counts)
    if by_reason:
        lines.append(by_reason)
    stats = read_statistics(output_dir)
    lines.append(f"{'feature':<14}{'split':<7}{'missing':>8}{'min':>12}{'mean':>12}{'max':>12}  top values")
    for name, _feature in stats["train"]["features"].items():
        for split in spec.splits:
            f = stats[split]["features"][name]
            if f["type"] == "numeric":
                cells = "".join(
                    f"{v:>12.4g}" if v is not None else f"{'-':>12}" for v in (f["min"], f["mean"], f["max"])
                )
                lines.append(f"{name:<14}{split:<7}{f['missing']:>8}{cells}")
            else:
                top = ", ".join(f"{t['value'][:12]}={t['count']}" for t in f["top_values"][:3])
                lines.append(f"{name:<14}{split:<7}{f['missing']:>8}{'':>36}  {top}")
    lines.append(
        f"outputs: {output_dir}/<split>/examples-*.tfrecord*, transform_fn/, transformed_metadata/, "
        f"{SPEC_FILE}, statistics.json, dead_letters-*.jsonl"
    )
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
