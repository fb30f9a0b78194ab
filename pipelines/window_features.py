"""Window-aggregation features per entity in event time: count, sum, mean, min, max, last and distinct
count over sliding or fixed windows, one row per entity, window and window end (the time index), to a
Bigtable online store and a BigQuery offline store for point-in-time training joins.

Local default (bundled sample: a day of card transactions, features over 10 minutes every minute, an
hour and a day; rows and dead letters in output/window_features, then a report):

    python -m pipelines.window_features

Streaming on Dataflow, from Pub/Sub to Bigtable (online) and BigQuery (offline):

    python -m pipelines.window_features --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py --streaming \\
        --window_spec gs://B/config/transactions.yaml \\
        --input_subscription projects/P/subscriptions/transactions \\
        --bigtable_instance features --bigtable_table card_features \\
        --output_table P:features.card_windows --dead_letter_table P:features.dead_letters

Backfill through the same transforms: `--input_files 'gs://B/transactions/*.jsonl'` (or CSV, Parquet,
TFRecord), `--input_table` or `--input_query` instead of the subscription, and no --streaming.
"""

import logging
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection

from pipelines.launch import (
    apply_udf,
    dead_letters_by_reason,
    local_output,
    metric_counts,
    read_records,
    run_pipeline,
    write_dead_letters,
    write_health_rows,
)
from pipelines.options import (
    BatchInputOptions,
    BigQueryOutputOptions,
    BigtableOptions,
    EventTimeOptions,
    HealthOptions,
    OutputOptions,
    PubsubInputOptions,
    RecordInputOptions,
    UdfOptions,
    check_allowed_lateness,
    check_health,
    check_input,
    check_outputs,
    check_udf,
)
from pipelines.samples import WINDOW_FEATURES_DIR
from transforms.io.sinks import BigQueryTarget, BigtableTarget, WriteJsonLineBatches, WriteRecords
from transforms.io.sources import BatchRecords, Input, ReadRecords
from transforms.window_features.aggregate import (
    BIGTABLE_COLUMN_FAMILY,
    WINDOW_FEATURES_BQ_SCHEMA,
    ComputeWindowFeatures,
    bigtable_cells,
    entity_row_key,
)
from transforms.window_features.spec import load_window_spec

PIPELINE = "window_features"
SAMPLE_SPEC = str(WINDOW_FEATURES_DIR / "transactions.yaml")
SAMPLE_EVENTS = str(WINDOW_FEATURES_DIR / "transactions.jsonl")


class WindowFeaturesOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--window_spec",
            type=str,
            default=None,
            help="YAML file (local or gs://): entity and event-time fields, windows and aggregates (see "
            "transforms/window_features/spec.py). Default: the bundled card-transactions sample.",
        )
        parser.add_argument(
            "--feature_ttl_hours",
            type=float,
            default=48.0,
            help="Bigtable online store: cells (one per feature and window end) older than this are "
            "garbage-collected (max-age policy of the column family, set when the table is created). "
            "Default: 48.",
        )


INPUT_FLAGS = ("input_subscription", "input_topic", "input_files", "input_table", "input_query")
OPTION_CLASSES = (
    WindowFeaturesOptions,
    EventTimeOptions,
    PubsubInputOptions,
    BatchInputOptions,
    RecordInputOptions,
    BigQueryOutputOptions,
    BigtableOptions,
    UdfOptions,
    HealthOptions,
)


class WindowFeaturesOutputs(NamedTuple):
    row_batches: PCollection  # lists of feature rows
    dead_letters: PCollection
    health_rows: PCollection = None  # with a --health_* sink


class Settings(NamedTuple):
    spec: object  # WindowFeatureSpec
    input: Input


def validate(options):
    """Cross-flag checks before any graph is built."""
    source = check_input(options, INPUT_FLAGS, Input(input_files=SAMPLE_EVENTS))
    check_allowed_lateness(options)
    opts = options.view_as(WindowFeaturesOptions)
    if opts.feature_ttl_hours <= 0:
        raise ValueError(f"--feature_ttl_hours must be positive, got {opts.feature_ttl_hours}")
    check_outputs(
        options,
        PIPELINE,
        (options.view_as(BigQueryOutputOptions).output_table, options.view_as(BigtableOptions).bigtable_instance),
    )
    check_udf(options)
    check_health(options)
    return Settings(load_window_spec(opts.window_spec or SAMPLE_SPEC), source)


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (Create or TestStream in tests): dicts, JSON text or
    PubsubMessages, batched here as ReadRecords batches the input it reads (and records after a UDF)."""
    out, streaming = options.view_as(OutputOptions), options.view_as(StandardOptions).streaming
    spec, udf = settings.spec, options.view_as(UdfOptions).udf_path
    records = read = read_records(
        pipeline,
        PIPELINE,
        source or ReadRecords(settings.input, options.view_as(RecordInputOptions).input_format, batched=not udf),
        "ReadEvents",
    )
    records, dead_letter_sources = apply_udf(options, records, PIPELINE)
    batches = records | "BatchRecords" >> BatchRecords() if source or udf else records
    table, bt = options.view_as(BigQueryOutputOptions).output_table, options.view_as(BigtableOptions)
    row_batches, parse_dead_letters = batches | "ComputeWindowFeatures" >> ComputeWindowFeatures(
        spec,
        PIPELINE,
        options.view_as(EventTimeOptions).allowed_lateness_seconds,
        json_lines=not (streaming or table or bt.bigtable_instance),  # files only: no rows needed
    )
    local_prefix = local_output(options, "feature_rows")
    if local_prefix:
        row_batches | "WriteFeatureFiles" >> WriteJsonLineBatches(local_prefix, streaming)

    online = (
        BigtableTarget(
            options.view_as(GoogleCloudOptions).project,
            bt.bigtable_instance,
            bt.bigtable_table,
            BIGTABLE_COLUMN_FAMILY,
            entity_row_key,
            "time_index",
            max_age_hours=options.view_as(WindowFeaturesOptions).feature_ttl_hours,
            max_versions=None,
            cells=bigtable_cells,
        )
        if bt.bigtable_instance
        else None
    )
    sink_failures = ()
    if table or online:
        sink_failures = (
            row_batches
            | "FeatureRows" >> beam.FlatMap(lambda rows: rows)
            | "WriteFeatureRows"
            >> WriteRecords(
                PIPELINE,
                BigQueryTarget(table, WINDOW_FEATURES_BQ_SCHEMA, "time_index", ["entity", "window"]) if table else None,
                out.bq_write_method,
                online,
                streaming=streaming,
            )
        )
    dead_letters = write_dead_letters(
        options, PIPELINE, read, (*dead_letter_sources, parse_dead_letters, *sink_failures)
    )
    health_rows = write_health_rows(options, PIPELINE, row_batches, dead_letters)
    return WindowFeaturesOutputs(row_batches, dead_letters, health_rows)


REPORT_MAX_ROWS = 100_000  # the report reads the feature rows back for the busiest windows up to this many


def report(result, options, settings):
    """Counts from Beam metrics, per window too; the entity and window end with the most events per window,
    read back from the rows when there are at most REPORT_MAX_ROWS."""
    spec = settings.spec
    counts = metric_counts(result, PIPELINE)
    output_dir = options.view_as(OutputOptions).output_dir
    lines = [
        f"records in: {counts.get('records_in', 0)}  events: {counts.get('events', 0)}  "
        f"dead letters: {counts.get('dead_letters', 0)}  filtered by the UDF: {counts.get('udf_filtered', 0)}  "
        f"feature rows: {counts.get('feature_rows', 0)}"
    ]
    by_reason = dead_letters_by_reason(counts)
    if by_reason:
        lines.append(by_reason)
    if output_dir:
        first_count = {
            w.name: next((name for name, _, agg in spec.aggregations_in(w) if agg == "count"), None)
            for w in spec.windows
        }
        busiest = {}
        if counts.get("feature_rows", 0) <= REPORT_MAX_ROWS:
            for row in _feature_rows(FileSystems.join(output_dir, "feature_rows*.jsonl")):
                w = row["window"]
                if first_count[w]:
                    count = next(f["value"] for f in row["features"] if f["name"] == first_count[w])
                    if w not in busiest or count > busiest[w][0]:
                        busiest[w] = (count, row)
        for w in first_count:
            lines.append(
                f"window {w}: {counts.get(f'feature_rows_{w}', 0)} rows, {counts.get(f'entities_{w}', 0)} entities"
            )
            if w in busiest:
                row = busiest[w][1]
                features = ", ".join(f"{f['name']}={f['value']:.4g}" for f in row["features"] if f["value"] is not None)
                lines.append(f"  busiest: {row['entity']} at {row['time_index']}: {features}")
        if counts.get("feature_rows", 0) > REPORT_MAX_ROWS:
            lines.append(f"(busiest windows: not read back from over {REPORT_MAX_ROWS} rows)")
        lines.append(f"outputs: {output_dir}/feature_rows-*.jsonl, dead_letters-*.jsonl")
    return "\n".join(lines)


def _feature_rows(pattern):
    for match in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(match.path) as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
