"""SLIs from request logs: per-journey, per-window availability, latency, throughput and error rate; and,
when the config defines them, SLOs: compliance, error budgets and burn-rate alerts, every minute.

Local default (bundled sample: one day of a profile web service in every supported log format, with a
short 5xx incident and a latency regression; rows, SLO status, alerts and dead letters land in
output/sli, then a report):

    python -m pipelines.sli

Streaming on Dataflow, from a Cloud Logging sink's Pub/Sub subscription to BigQuery and Bigtable:

    python -m pipelines.sli --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py --streaming \\
        --sli_config gs://B/config/profile_service.yaml \\
        --input_subscription projects/P/subscriptions/request-logs \\
        --output_table P:sre.sli_windows --bigtable_instance sre --bigtable_table sli_windows \\
        --dead_letter_table P:sre.dead_letters

Backfill: the same with `--input_files 'gs://B/logs/*.json.gz'` or `--input_table P:logs.requests_export`
instead of the subscription (and no --streaming).
"""

import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
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
    SliConfigOptions,
    TensorBoardOptions,
    UdfOptions,
    check_allowed_lateness,
    check_health,
    check_input,
    check_outputs,
    check_udf,
    resolve_tensorboard_run,
)
from pipelines.samples import SLI_DIR
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_jsonl
from transforms.io.sinks import BigQueryTarget, BigtableTarget, WriteRecords
from transforms.io.sources import BatchRecords, Input, ReadRecords
from transforms.sli.batch import AggregateLogBatches
from transforms.sli.config import load_sli_config
from transforms.sli.rows import (
    BIGTABLE_COLUMN_FAMILY,
    SLI_ROW_BQ_SCHEMA,
    ComputeSliRowsFromPartials,
    bigtable_row_key,
)
from transforms.sli.tensorboard import WriteSliSummaries
from transforms.slo.replay import ParseSliRows, Period
from transforms.slo.status import ALERTS_TAG, SLO_STATUS_BQ_SCHEMA, ComputeSloStatus, slo_status_row_key

PIPELINE = "sli"
SAMPLE_CONFIG = SLI_DIR / "profile_service.yaml"
SAMPLE_LOGS = SLI_DIR / "request_logs.jsonl.gz"


class SliOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--window_seconds",
            type=int,
            default=60,
            help="Length of the event-time fixed windows, in seconds. Default: 60.",
        )
        parser.add_argument(
            "--slo_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for SLO status rows, one per SLO and evaluated minute "
            "(created if missing, day-partitioned on evaluated_at, clustered by slo).",
        )
        parser.add_argument(
            "--alerts_topic",
            type=str,
            default=None,
            help="Pub/Sub topic projects/P/topics/T for burn-rate alert transitions (FIRING/RESOLVED), one "
            "JSON message each.",
        )
        parser.add_argument(
            "--sli_rows_subscription",
            type=str,
            default=None,
            help="Pub/Sub subscription projects/P/subscriptions/S of SLI rows as JSON instead of request logs "
            "(streaming): the SLOs of --sli_config are evaluated on them, e.g. on other pipelines' health rows "
            "(their --health_topic; the sample pipelines/samples/pipeline_slos/pipeline_slos.yaml).",
        )
        parser.add_argument(
            "--sli_rows_delay_seconds",
            type=int,
            default=120,
            help="With --sli_rows_subscription: how long after a minute ends its rows may still arrive before "
            "the minute is evaluated (rows come from other jobs, published once their minute has closed there); "
            "a minute still without rows of an SLO with minutes_without_data: bad then counts as bad. "
            "Default: 120.",
        )


# The pipeline's own flag groups; every pipeline also has OutputOptions (see pipelines/options.py).
INPUT_FLAGS = ("input_subscription", "input_topic", "input_files", "input_table")
OPTION_CLASSES = (
    SliConfigOptions,
    SliOptions,
    EventTimeOptions,
    PubsubInputOptions,
    BatchInputOptions,
    BigQueryOutputOptions,
    BigtableOptions,
    TensorBoardOptions,
    UdfOptions,
    HealthOptions,
)


class SliOutputs(NamedTuple):
    sli_rows: PCollection
    slo_status: PCollection  # None when the config defines no SLOs
    alerts: PCollection  # None when the config defines no SLOs
    dead_letters: PCollection
    health_rows: PCollection = None  # with a --health_* sink


class Settings(NamedTuple):
    config: object  # SliConfig
    input: Input


def validate(options):
    """Cross-flag checks, before any graph is built."""
    sli = options.view_as(SliOptions)
    source = check_input(options, INPUT_FLAGS, Input(input_files=str(SAMPLE_LOGS)))
    if sli.sli_rows_subscription:
        if source.input_files != str(SAMPLE_LOGS):
            raise ValueError(f"give --sli_rows_subscription or {source.given()[0]}, not both")
        if options.view_as(UdfOptions).udf_path:
            raise ValueError(
                "--udf_path reshapes log records, and --sli_rows_subscription reads SLI rows, not logs: drop "
                "--udf_path here and give it to the job that reads the logs"
            )
        source = Input(input_subscription=sli.sli_rows_subscription)
        options.view_as(StandardOptions).streaming = True
    if sli.sli_rows_delay_seconds < 0:
        raise ValueError(f"--sli_rows_delay_seconds must be >= 0, got {sli.sli_rows_delay_seconds}")
    if sli.window_seconds <= 0:
        raise ValueError(f"--window_seconds must be positive, got {sli.window_seconds}")
    check_allowed_lateness(options)
    check_outputs(
        options,
        PIPELINE,
        (options.view_as(BigQueryOutputOptions).output_table, options.view_as(BigtableOptions).bigtable_instance),
    )
    check_udf(options)
    check_health(options)
    config = load_sli_config(options.view_as(SliConfigOptions).sli_config or SAMPLE_CONFIG)
    resolve_tensorboard_run(options, PIPELINE)
    if not config.slos and sli.sli_rows_subscription:
        raise ValueError("--sli_rows_subscription evaluates SLOs on SLI rows: add a 'slos' section to --sli_config")
    if not config.slos and (sli.slo_table or sli.alerts_topic):
        raise ValueError("--slo_table and --alerts_topic need SLOs: add a 'slos' section to --sli_config")
    if config.slos and sli.window_seconds != 60:
        raise ValueError(
            f"the SLOs in the config are evaluated per minute: --window_seconds must be 60 "
            f"(got {sli.window_seconds}), or remove 'slos' from the config"
        )
    return Settings(config, source)


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (e.g. Create or TestStream in tests); it yields raw
    records: PubsubMessage, JSON text/bytes or dicts. Records are parsed and aggregated in batches; a UDF
    (--udf_path) runs on them one by one (see apply_udf)."""
    sli, config = options.view_as(SliOptions), settings.config
    out = options.view_as(OutputOptions)
    streaming = options.view_as(StandardOptions).streaming
    if sli.sli_rows_subscription:  # SLI rows in, as other pipelines' --health_topic writes them
        read = read_records(pipeline, PIPELINE, source or ReadRecords(settings.input, "jsonl"), "ReadSliRows")
        parsed = (
            read
            | "MessageData" >> beam.Map(lambda record: record.data if isinstance(record, PubsubMessage) else record)
            | "ParseSliRows" >> beam.ParDo(ParseSliRows(PIPELINE, Period())).with_outputs(DEAD_LETTER_TAG, main="rows")
        )
        rows, dead_letter_sources = parsed.rows, []
    else:
        batched = source is None  # a given source yields records, batched here
        read = read_records(
            pipeline, PIPELINE, source or ReadRecords(settings.input, "jsonl", batched=True), "ReadLogRecords"
        )
        records, dead_letter_sources = apply_udf(options, read, PIPELINE, batched=batched)
        batches = records if batched else records | "BatchRecords" >> BatchRecords()
        parsed = batches | "ParseLogRecords" >> beam.ParDo(
            AggregateLogBatches(config, sli.window_seconds, PIPELINE)
        ).with_outputs(DEAD_LETTER_TAG, main="partials")
        rows = parsed.partials | "ComputeSliRows" >> ComputeSliRowsFromPartials(
            config, PIPELINE, sli.window_seconds, options.view_as(EventTimeOptions).allowed_lateness_seconds
        )
    project = options.view_as(GoogleCloudOptions).project

    def bigtable(row_key, time_field):
        bt = options.view_as(BigtableOptions)
        if not bt.bigtable_instance:
            return None
        return BigtableTarget(
            project, bt.bigtable_instance, bt.bigtable_table, BIGTABLE_COLUMN_FAMILY, row_key, time_field
        )

    def bigquery(table, schema, partition_field, clustering_field):
        return BigQueryTarget(table, schema, partition_field, [clustering_field]) if table else None

    sink_failures = rows | "WriteSliRows" >> WriteRecords(
        PIPELINE,
        bigquery(options.view_as(BigQueryOutputOptions).output_table, SLI_ROW_BQ_SCHEMA, "window_start", "sli_id"),
        out.bq_write_method,
        bigtable(bigtable_row_key, "emitted_at"),
        local_prefix=local_output(options, "sli_rows"),
        streaming=streaming,
    )
    tb = options.view_as(TensorBoardOptions)
    if tb.tensorboard_dir:
        rows | "WriteTensorBoard" >> beam.ParDo(
            WriteSliSummaries(config, FileSystems.join(tb.tensorboard_dir, tb.tensorboard_run))
        )
    slo_status = alerts = None
    if config.slos:
        delay = sli.sli_rows_delay_seconds if sli.sli_rows_subscription else 0
        slos = rows | "ComputeSloStatus" >> ComputeSloStatus(config, read.is_bounded, PIPELINE, delay)
        slo_status, alerts = slos.status, slos[ALERTS_TAG]
        sink_failures += slo_status | "WriteSloStatus" >> WriteRecords(
            PIPELINE,
            bigquery(sli.slo_table, SLO_STATUS_BQ_SCHEMA, "evaluated_at", "slo"),
            out.bq_write_method,
            bigtable(slo_status_row_key, "evaluated_at"),
            local_prefix=local_output(options, "slo_status"),
            streaming=streaming,
        )
        alerts | "WriteAlerts" >> WriteRecords(
            PIPELINE, pubsub_topic=sli.alerts_topic, local_prefix=local_output(options, "alerts"), streaming=streaming
        )
    dead_letters = write_dead_letters(
        options, PIPELINE, read, (*dead_letter_sources, parsed[DEAD_LETTER_TAG], *sink_failures)
    )
    health_rows = write_health_rows(options, PIPELINE, rows, dead_letters)
    return SliOutputs(rows, slo_status, alerts, dead_letters, health_rows)


def alert_line(alert):
    """One report line per alert transition. A burn rate is None (no data) when its window held no events,
    which is how an alert resolves after the traffic stops."""

    def burn(rate):
        return "no data" if rate is None else f"{rate:.1f}"

    return (
        f"alert {alert['state']:<8} {alert['at']} {alert['slo']} {alert['severity']} "
        f"{alert['long_window_minutes']}m/{alert['short_window_minutes']}m "
        f"burn {burn(alert['burn_rate_long'])}/{burn(alert['burn_rate_short'])} "
        f"(threshold {alert['threshold']:.2f})"
    )


def report(result, options, _settings):
    """A short text report of a finished batch run: counts from Beam metrics, SLIs from the output files."""
    output_dir = options.view_as(OutputOptions).output_dir
    counts = metric_counts(result, PIPELINE)
    lines = [
        f"records in: {counts.get('records_in', 0)}  events: {counts.get('records_parsed', 0)}  "
        f"dead letters: {counts.get('dead_letters', 0)}  filtered by the UDF: {counts.get('udf_filtered', 0)}  "
        f"unmatched requests: {counts.get('requests_unmatched', 0)}",
    ]
    by_reason = dead_letters_by_reason(counts)
    if by_reason:
        lines.append(by_reason)
    if output_dir:
        rows = [r for r in read_jsonl(FileSystems.join(output_dir, "sli_rows*.jsonl")) if r["sli_kind"] != "unmatched"]
        totals = {}
        for row in rows:
            good, total = totals.get(row["sli_id"], (0, 0))
            totals[row["sli_id"]] = (good + row["good"], total + row["total"])
        lines.append(f"{'SLI':<52} {'good/total':>17} {'ratio':>9}")
        for sli_id, (good, total) in sorted(totals.items()):
            if not sli_id.endswith("/throughput"):
                lines.append(f"{sli_id:<52} {f'{good}/{total}':>17} {good / total:>9.4%}")
        worst = sorted((r for r in rows if r["sli_kind"] == "availability"), key=lambda r: r["good_fraction"])[:3]
        for row in worst:
            lines.append(
                f"worst availability minute: {row['window_start']} {row['sli_id']} "
                f"{row['good_fraction']:.2%} of {row['total']}"
            )
        alerts = sorted(read_jsonl(FileSystems.join(output_dir, "alerts*.jsonl")), key=lambda a: (a["at"], a["slo"]))
        lines += [alert_line(alert) for alert in alerts]
        status = read_jsonl(FileSystems.join(output_dir, "slo_status*.jsonl"))
        latest = {}
        for row in status:
            if row["slo"] not in latest or row["evaluated_at"] > latest[row["slo"]]["evaluated_at"]:
                latest[row["slo"]] = row
        for name, row in sorted(latest.items()):
            lines.append(
                f"SLO {name}: {row['compliance']:.4%} vs target {row['target']:.2%} over "
                f"{row['window_days']}d, error budget remaining {row['budget_remaining']:.1%}"
            )
        lines.append(
            f"outputs: {output_dir}/sli_rows-*.jsonl, slo_status-*.jsonl, alerts-*.jsonl, dead_letters-*.jsonl"
        )
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
