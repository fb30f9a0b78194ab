"""Replay and what-if: SLOs evaluated again over stored SLI rows, for any period, under one or several SLI
configs side by side: which pages and tickets would have fired, and how much error budget each SLO used.

Local default (the bundled sample logs turned into SLI rows in the run, under the bundled
profile_service.yaml and starter_slos.yaml side by side; the comparison, alert transitions and dead
letters land in output/slo_replay):

    python -m pipelines.slo_replay

What-if over a month of the SLI pipeline's BigQuery rows on Dataflow, today's config against a proposal:

    python -m pipelines.slo_replay --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --sli_config today=gs://B/config/profile_service.yaml,proposal=gs://B/config/proposal.yaml \\
        --input_table P:sre.sli_windows --start 2026-11-01T00:00:00Z --end 2026-12-01T00:00:00Z \\
        --output_table P:sre.slo_replay --alerts_table P:sre.slo_replay_alerts --dead_letter_table P:sre.dead_letters \\
        --report_html gs://B/slo_replay/report.html
"""

import datetime
import logging
import posixpath
import re
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection
from apache_beam.transforms import window

from pipelines.launch import (
    dead_letters_by_reason,
    local_output,
    metric_counts,
    read_records,
    run_pipeline,
    write_dead_letters,
)
from pipelines.options import (
    BatchInputOptions,
    BigQueryOutputOptions,
    OutputOptions,
    RecordInputOptions,
    SliConfigOptions,
    check_input,
    check_outputs,
)
from pipelines.reports import replay_report
from pipelines.samples import SLI_DIR
from pipelines.sli import alert_line
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_jsonl
from transforms.io.sinks import BigQueryTarget, WriteRecords
from transforms.io.sources import Input, ReadRecords
from transforms.sli.batch import AggregateLogBatches
from transforms.sli.config import load_sli_config
from transforms.sli.rows import ComputeSliRowsFromPartials
from transforms.slo.replay import COMPARISON_BQ_SCHEMA, REPLAY_ALERTS_BQ_SCHEMA, ParseSliRows, Period, ReplaySlos

PIPELINE = "slo_replay"
SAMPLE_CONFIGS = (SLI_DIR / "profile_service.yaml", SLI_DIR / "starter_slos.yaml")
SAMPLE_LOGS = SLI_DIR / "request_logs.jsonl.gz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SloReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--start",
            type=str,
            default=None,
            help="First minute replayed, RFC 3339 (e.g. 2026-11-01T00:00:00Z; no offset: UTC): SLI rows whose "
            "window_start is before it are left out, so budgets and alert windows start empty there. "
            "Default: the first row.",
        )
        parser.add_argument(
            "--end",
            type=str,
            default=None,
            help="End of the replay, RFC 3339, exclusive: rows whose window_start is at or after it are left "
            "out, and nothing evaluated after it is reported (an alert firing then stays open). Default: "
            "after the last row.",
        )
        parser.add_argument(
            "--report_html",
            type=str,
            default=None,
            help="Also write an HTML page (local path or gs://) comparing the configs side by side per SLO: "
            "the comparison table, budget consumed over time, burn rates against each config's thresholds, "
            "pages and tickets where they fired. Self-contained: opens offline.",
        )
        parser.add_argument(
            "--alerts_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the alert transitions of every config (created if "
            "missing, day-partitioned on at, clustered by config).",
        )


INPUT_FLAGS = ("input_files", "input_table", "input_query")
OPTION_CLASSES = (SliConfigOptions, SloReplayOptions, BatchInputOptions, RecordInputOptions, BigQueryOutputOptions)


class SloReplayOutputs(NamedTuple):
    comparison: PCollection  # one row per config and SLO
    alerts: PCollection  # alert transitions, each with its config
    dead_letters: PCollection


class Settings(NamedTuple):
    configs: dict  # name -> SliConfig, in --sli_config order
    input: Input | None  # None: SLI rows of the bundled sample logs, computed in the run under each config
    period: Period


def parse_config_list(value):
    """--sli_config's comma-separated `PATH` or `NAME=PATH` list -> {name: path}; a PATH is named by its
    file stem."""
    named = {}
    for item in (part.strip() for part in value.split(",")):
        name, named_by_flag, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if named_by_flag else ("", item)
        name = name or posixpath.splitext(posixpath.basename(path))[0]
        if not path or not _NAME.match(name):
            raise ValueError(
                f"--sli_config: {item!r} must be PATH or NAME=PATH, NAME of letters, digits, '_', '.' or '-' "
                f"(1-64, starting with a letter or digit)"
            )
        if name in named:
            raise ValueError(f"--sli_config: two configs are named {name!r}: name them with NAME=PATH")
        named[name] = path
    return named


def parse_time(value, flag):
    """RFC 3339 text (no offset: UTC) -> seconds since the epoch."""
    try:
        dt = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--{flag}: {value!r} is not an RFC 3339 time such as 2026-11-01T00:00:00Z") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=datetime.UTC)).timestamp()


def validate(options):
    """Cross-flag checks, before any graph is built."""
    replay = options.view_as(SloReplayOptions)
    source = check_input(options, INPUT_FLAGS, None)
    flag = options.view_as(SliConfigOptions).sli_config
    paths = parse_config_list(flag) if flag else {p.stem: str(p) for p in SAMPLE_CONFIGS}
    configs = {name: load_sli_config(path) for name, path in paths.items()}
    for name, config in configs.items():
        if not config.slos:
            raise ValueError(f"--sli_config {name}={paths[name]} defines no SLOs: add a 'slos' section to replay it")
    start = parse_time(replay.start, "start") if replay.start else None
    end = parse_time(replay.end, "end") if replay.end else None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"--end {replay.end} must be after --start {replay.start}")
    check_outputs(options, PIPELINE, (options.view_as(BigQueryOutputOptions).output_table, replay.alerts_table))
    return Settings(configs, source, Period(start, end))


class _SampleSliRows(beam.PTransform):
    """The bundled sample logs -> SLI rows under each config, as the SLI pipeline computes them:
    ({name: rows}, [dead letters of the log parser])."""

    def __init__(self, configs):
        super().__init__()
        self._configs = configs

    def expand(self, batches):
        rows, dead_letters = {}, []
        for name, config in self._configs.items():
            parsed = batches | f"ParseLogRecords[{name}]" >> beam.ParDo(
                AggregateLogBatches(config, 60, PIPELINE)
            ).with_outputs(DEAD_LETTER_TAG, main="partials")
            # batch: no record is late, so the lateness does not matter; rows leave their minute windows, as
            # stored rows have none
            rows[name] = (
                parsed.partials
                | f"ComputeSliRows[{name}]" >> ComputeSliRowsFromPartials(config, PIPELINE, 60, 0)
                | f"GlobalWindow[{name}]" >> beam.WindowInto(window.GlobalWindows())
            )
            dead_letters.append(parsed[DEAD_LETTER_TAG])
        return rows, dead_letters


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (e.g. a Create of SLI rows in tests): JSON text/bytes or
    dict rows."""
    replay = options.view_as(SloReplayOptions)
    out = options.view_as(OutputOptions)
    dead_letter_sources = []

    def parse(rows, label):
        result = rows | label >> beam.ParDo(ParseSliRows(PIPELINE, settings.period)).with_outputs(
            DEAD_LETTER_TAG, main="rows"
        )
        dead_letter_sources.append(result[DEAD_LETTER_TAG])
        return result.rows

    if source is None and settings.input is None:
        read = read_records(
            pipeline, PIPELINE, ReadRecords(Input(input_files=str(SAMPLE_LOGS)), "jsonl", batched=True), "ReadLogs"
        )
        sample_rows, log_dead_letters = read | "SampleSliRows" >> _SampleSliRows(settings.configs)
        dead_letter_sources += log_dead_letters
        parsed = {name: parse(rows, f"ParseSliRows[{name}]") for name, rows in sample_rows.items()}
    else:
        records = source or ReadRecords(settings.input, options.view_as(RecordInputOptions).input_format)
        read = read_records(pipeline, PIPELINE, records, "ReadSliRows")
        parsed = dict.fromkeys(settings.configs, parse(read, "ParseSliRows"))
    outputs = parsed | "ReplaySlos" >> ReplaySlos(
        settings.configs, settings.period, PIPELINE, series=bool(replay.report_html)
    )
    dead_letter_sources += outputs.dead_letters
    if replay.report_html:
        rules = {name: config.alerting.rules for name, config in settings.configs.items()}
        (
            (
                outputs.comparison | "PageComparison" >> beam.Map(lambda r: ("comparison", r)),
                outputs.alerts | "PageAlerts" >> beam.Map(lambda a: ("alerts", a)),
                outputs.series | "PageSeries" >> beam.Map(lambda s: ("series", s)),
            )
            | "FlattenPage" >> beam.Flatten()
            | "CollectPage" >> beam.combiners.ToList()
            | "WritePage" >> beam.Map(write_page, replay.report_html, rules)
        )

    def bigquery(table, schema, partition_field):
        return BigQueryTarget(table, schema, partition_field, ["config"]) if table else None

    table = options.view_as(BigQueryOutputOptions).output_table
    sink_failures = outputs.comparison | "WriteComparison" >> WriteRecords(
        PIPELINE,
        bigquery(table, COMPARISON_BQ_SCHEMA, "last_evaluated_at"),
        out.bq_write_method,
        local_prefix=local_output(options, "comparison"),
    )
    sink_failures += outputs.alerts | "WriteAlerts" >> WriteRecords(
        PIPELINE,
        bigquery(replay.alerts_table, REPLAY_ALERTS_BQ_SCHEMA, "at"),
        out.bq_write_method,
        local_prefix=local_output(options, "alerts"),
    )
    dead_letters = write_dead_letters(options, PIPELINE, read, (*dead_letter_sources, *sink_failures))
    return SloReplayOutputs(outputs.comparison, outputs.alerts, dead_letters)


def write_page(parts, path, rules):
    """The HTML page from [(kind, row)] (kind: comparison, alerts or series) at `path`; each config's rule
    thresholds over its SLO's period (the latest status row's window_days)."""
    rows = {"comparison": [], "alerts": [], "series": []}
    for kind, row in parts:
        rows[kind].append(row)
    thresholds = {name: {} for name in rules}
    for s in rows["series"]:
        if s["window_days"] is not None:
            thresholds[s["config"]][s["slo"]] = {
                f"{r.severity}:{r.long_window_minutes}m/{r.short_window_minutes}m": float(r.threshold(s["window_days"]))
                for r in rules[s["config"]]
            }
    with FileSystems.create(path) as f:
        f.write(replay_report.render(rows["comparison"], rows["alerts"], rows["series"], thresholds).encode("utf-8"))
    return path


def comparison_table(rows):
    """The comparison as text: per SLO, one line per config, side by side."""

    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    lines = [
        f"{'SLO':<28} {'config':<18} {'target':>8} {'pages':>5} {'tickets':>7} {'page min':>8} {'ticket min':>10} "
        f"{'budget used':>11} {'max used':>8} {'minutes':>7}"
    ]
    for r in sorted(rows, key=lambda r: (r["slo"], r["config"])):
        lines.append(
            f"{r['slo']:<28} {r['config']:<18} {r['target']:>8.3%} {r['pages']:>5} {r['tickets']:>7} "
            f"{r['page_minutes']:>8} {r['ticket_minutes']:>10} {pct(r['budget_consumed']):>11} "
            f"{pct(r['max_budget_consumed']):>8} {r['evaluated_minutes']:>7}"
        )
    sketched = [r for r in sorted(rows, key=lambda r: (r["config"], r["slo"])) if r.get("latency_from_sketches")]
    if sketched:
        lines.append(
            "latency thresholds the rows lack, counted from their latency sketches (exact except requests within "
            "1% of the threshold):"
        )
        lines += [f"  {r['config']}/{r['slo']}: {', '.join(r['latency_from_sketches'])}" for r in sketched]
    return "\n".join(lines)


def report(result, options, settings):
    """Counts from Beam metrics; the comparison table and alert transitions from the output files."""
    output_dir = options.view_as(OutputOptions).output_dir
    counts = metric_counts(result, PIPELINE)
    lines = [
        f"records in: {counts.get('records_in', 0)}  SLI rows replayed: {counts.get('rows_parsed', 0)}  "
        f"outside --start/--end: {counts.get('rows_outside_period', 0)}  dead letters: {counts.get('dead_letters', 0)}"
    ]
    by_reason = dead_letters_by_reason(counts)
    if by_reason:
        lines.append(by_reason)
    if output_dir:
        lines.append(comparison_table(read_jsonl(FileSystems.join(output_dir, "comparison*.jsonl"))))
        alerts = sorted(
            read_jsonl(FileSystems.join(output_dir, "alerts*.jsonl")), key=lambda a: (a["config"], a["at"], a["slo"])
        )
        lines += [f"{a['config']}: {alert_line(a)}" for a in alerts]
        lines.append(f"outputs: {output_dir}/comparison-*.jsonl, alerts-*.jsonl, dead_letters-*.jsonl")
    report_html = options.view_as(SloReplayOptions).report_html
    if report_html:
        lines.append(f"page: {report_html}")
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
