"""Replay and what-if: stored SLI rows evaluated again under one or several SLI configs side by side, with
the same `ComputeSloStatus` the SLI pipeline runs, and a comparison row per config and SLO (alerts that
would have fired, minutes firing, error budget consumed).

Memory: per config and SLO, one worker holds that SLO's inputs of the period (a 5-tuple per component,
minute and pane: about 200 bytes, so 28 days of a 2-component SLO are about 16 MB), never the rows.
"""

import datetime
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.accumulators import MergingCombineFn
from transforms.core.records import finite, record_dict, text
from transforms.io.deadletter import GuardedDoFn, RecordError
from transforms.sli.parsing import parse_timestamp
from transforms.slo.status import ALERTS_TAG, ComputeSloStatus

SEVERITIES = ("page", "ticket")

COMPARISON_BQ_SCHEMA = {
    "fields": [
        {"name": "config", "type": "STRING", "mode": "REQUIRED"},
        {"name": "slo", "type": "STRING", "mode": "REQUIRED"},
        {"name": "target", "type": "FLOAT64", "mode": "REQUIRED"},
        {"name": "evaluated_minutes", "type": "INT64", "mode": "REQUIRED"},
        {"name": "first_evaluated_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "last_evaluated_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "pages", "type": "INT64", "mode": "REQUIRED"},
        {"name": "tickets", "type": "INT64", "mode": "REQUIRED"},
        {"name": "page_minutes", "type": "INT64", "mode": "REQUIRED"},
        {"name": "ticket_minutes", "type": "INT64", "mode": "REQUIRED"},
        {"name": "compliance", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "budget_consumed", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "budget_remaining", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "max_budget_consumed", "type": "FLOAT64", "mode": "NULLABLE"},
    ]
}

REPLAY_ALERTS_BQ_SCHEMA = {
    "fields": [
        {"name": "config", "type": "STRING", "mode": "REQUIRED"},
        {"name": "slo", "type": "STRING", "mode": "REQUIRED"},
        {"name": "state", "type": "STRING", "mode": "REQUIRED"},
        {"name": "severity", "type": "STRING", "mode": "REQUIRED"},
        {"name": "at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "long_window_minutes", "type": "INT64", "mode": "REQUIRED"},
        {"name": "short_window_minutes", "type": "INT64", "mode": "REQUIRED"},
        {"name": "threshold", "type": "FLOAT64", "mode": "REQUIRED"},
        {"name": "burn_rate_long", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "burn_rate_short", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "budget_remaining", "type": "FLOAT64", "mode": "NULLABLE"},
    ]
}


class Period(NamedTuple):
    """[start, end) in seconds since the epoch on the rows' window_start; None: open."""

    start: float | None = None
    end: float | None = None

    def holds(self, seconds):
        return (self.start is None or seconds >= self.start) and (self.end is None or seconds < self.end)


def _count(value, field):
    """A non-negative whole number (JSON integer, or a float with no fraction as BigQuery FLOAT64 gives)."""
    number = finite(value, field)
    if number < 0 or not number.is_integer():
        raise RecordError("out_of_range", f"field '{field}': {value!r:.40} is not a whole number >= 0")
    return int(number)


def parse_sli_row(record):
    """A stored SLI row (JSON text/bytes or a BigQuery dict, as the SLI pipeline writes them) -> the fields SLO
    evaluation reads: sli_id, window_start (ISO, UTC), good, total, pane_index. Unmatched-journey rows keep
    good None. Raises RecordError: invalid_json/not_an_object..., missing_field, wrong_type, bad_timestamp,
    out_of_range, bad_field (windows other than 60 s, good > total)."""
    row = record_dict(record)
    for field in ("sli_id", "window_start", "total", "pane_index"):
        if row.get(field) is None:
            raise RecordError("missing_field", f"field '{field}' is missing: not an SLI row of pipelines.sli")
    unmatched = row.get("sli_kind") == "unmatched"
    if row.get("good") is None and not unmatched:
        raise RecordError("missing_field", "field 'good' is missing: not an SLI row of pipelines.sli")
    if row.get("window_seconds") is not None and _count(row["window_seconds"], "window_seconds") != 60:
        raise RecordError(
            "bad_field",
            f"field 'window_seconds': {row['window_seconds']!r:.20} - SLOs are evaluated per minute: replay the "
            "rows of an SLI run with --window_seconds 60",
        )
    total = _count(row["total"], "total")
    good = None if row.get("good") is None else _count(row["good"], "good")
    if good is not None and good > total:
        raise RecordError("bad_field", f"field 'good': {good} is more than total {total}")
    start = parse_timestamp(row["window_start"], "window_start")
    return {
        "sli_id": text(row["sli_id"], "sli_id"),
        "window_start": datetime.datetime.fromtimestamp(start, datetime.UTC).isoformat(),
        "good": good,
        "total": total,
        "pane_index": _count(row["pane_index"], "pane_index"),
    }


class ParseSliRows(GuardedDoFn):
    """Stored SLI rows -> `parse_sli_row` rows inside `period` (the main output); rows outside it are counted
    (`rows_outside_period`), bad rows are dead letters."""

    STEP = "ParseSliRows"

    def __init__(self, pipeline_name, period):
        super().__init__(pipeline_name)
        self._period = period

    def setup(self):
        self._outside = Metrics.counter(self._pipeline, "rows_outside_period")
        self._parsed = Metrics.counter(self._pipeline, "rows_parsed")

    def handle(self, record):
        row = parse_sli_row(record)
        if not self._period.holds(datetime.datetime.fromisoformat(row["window_start"]).timestamp()):
            self._outside.inc()
            return
        self._parsed.inc()
        yield row


class ReplaySummary:
    """Plain accumulator of one config's SLO over the replay: status rows and alert transitions in, one
    comparison row out. The latest status row gives the final compliance and budget."""

    def __init__(self):
        self.minutes = 0
        self.firing_minutes = dict.fromkeys(SEVERITIES, 0)
        self.fired = dict.fromkeys(SEVERITIES, 0)
        self.first = self.last = None  # status rows
        self.max_consumed = None
        self.target = None

    def add(self, kind, value):
        """kind: "status" (a status row), "alert" (a transition) or "seed" (the SLO's target: it exists, with
        or without data)."""
        if kind == "seed":
            self.target = value
        elif kind == "alert":
            self.fired[value["severity"]] += value["state"] == "FIRING"
        elif kind == "status":
            self.minutes += 1
            for severity in SEVERITIES:
                self.firing_minutes[severity] += any(a.startswith(f"{severity}:") for a in value["alerts_firing"])
            self._see(value)

    def _see(self, row):
        if row is None:
            return
        at = row["evaluated_at"]
        if self.first is None or at < self.first["evaluated_at"]:
            self.first = row
        if self.last is None or at > self.last["evaluated_at"]:
            self.last = row
        consumed = row["budget_consumed"]
        if consumed is not None and (self.max_consumed is None or consumed > self.max_consumed):
            self.max_consumed = consumed

    def merge(self, other):
        self.minutes += other.minutes
        for severity in SEVERITIES:
            self.firing_minutes[severity] += other.firing_minutes[severity]
            self.fired[severity] += other.fired[severity]
        self.target = self.target if other.target is None else other.target
        self._see(other.first)
        self._see(other.last)
        if other.max_consumed is not None and (self.max_consumed is None or other.max_consumed > self.max_consumed):
            self.max_consumed = other.max_consumed
        return self

    def extract(self, config, slo):
        last = self.last or {}
        return {
            "config": config,
            "slo": slo,
            "target": self.target,
            "evaluated_minutes": self.minutes,
            "first_evaluated_at": self.first["evaluated_at"] if self.first else None,
            "last_evaluated_at": last.get("evaluated_at"),
            "pages": self.fired["page"],
            "tickets": self.fired["ticket"],
            "page_minutes": self.firing_minutes["page"],
            "ticket_minutes": self.firing_minutes["ticket"],
            "compliance": last.get("compliance"),
            "budget_consumed": last.get("budget_consumed"),
            "budget_remaining": last.get("budget_remaining"),
            "max_budget_consumed": self.max_consumed,
        }


class _SummaryCombineFn(MergingCombineFn):
    def create_accumulator(self):
        return ReplaySummary()

    def add_input(self, acc, element):
        acc.add(*element)
        return acc


def _extract(element):
    (config, slo), summary = element
    return summary.extract(config, slo)


def _until(at, end):
    return end is None or datetime.datetime.fromisoformat(at) <= end


class ReplayOutputs(NamedTuple):
    comparison: beam.PCollection  # one row per config and SLO
    alerts: beam.PCollection  # alert transitions, each with its config


class ReplaySlos(beam.PTransform):
    """{config name: parsed SLI rows} -> `ReplayOutputs`, under each of `configs` ({name: SliConfig}) side by
    side. Status rows and alerts after `period.end` (the minutes the evaluator runs on until the SLO goes
    idle) are left out, so an alert open at the end stays open."""

    def __init__(self, configs, period, pipeline_name):
        super().__init__()
        self._configs, self._period, self._pipeline = configs, period, pipeline_name

    def expand(self, rows):
        end = None if self._period.end is None else datetime.datetime.fromtimestamp(self._period.end, datetime.UTC)
        keyed, alerts = [], []
        for name, config in self._configs.items():
            slos = rows[name] | f"Evaluate[{name}]" >> ComputeSloStatus(config, True, self._pipeline)
            status = slos.status | f"StatusInPeriod[{name}]" >> beam.Filter(
                lambda r, e=end: _until(r["evaluated_at"], e)
            )
            transitions = slos[ALERTS_TAG] | f"AlertsInPeriod[{name}]" >> beam.Filter(
                lambda a, e=end: _until(a["at"], e)
            )
            alerts.append(transitions | f"WithConfig[{name}]" >> beam.Map(lambda a, n=name: {"config": n, **a}))
            keyed.append(status | f"KeyStatus[{name}]" >> beam.Map(lambda r, n=name: ((n, r["slo"]), ("status", r))))
            keyed.append(
                transitions | f"KeyAlerts[{name}]" >> beam.Map(lambda a, n=name: ((n, a["slo"]), ("alert", a)))
            )
        seeds = [
            ((name, slo.name), ("seed", slo.target)) for name, config in self._configs.items() for slo in config.slos
        ]
        keyed.append(next(iter(rows.values())).pipeline | "EverySlo" >> beam.Create(seeds))
        comparison = (
            keyed
            | "FlattenEvaluations" >> beam.Flatten()
            | "Summarize" >> beam.CombinePerKey(_SummaryCombineFn())
            | "ComparisonRows" >> beam.Map(_extract)
        )
        return ReplayOutputs(comparison, alerts | "FlattenAlerts" >> beam.Flatten())
