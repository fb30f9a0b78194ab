"""Replay and what-if: stored SLI rows evaluated again under one or several SLI configs side by side, with
the same `ComputeSloStatus` the SLI pipeline runs, and a comparison row per config and SLO (alerts that
would have fired, minutes firing, error budget consumed).

A latency SLI a config names that the rows lack (a threshold chosen after the fact) is counted per journey
and minute from the rows' latency sketches (`LatencyFromSketches`): exact except for requests whose latency
lies within 1% of the threshold (`transforms.sli.stats.count_above`); the comparison rows list such SLIs.

Memory: per config and SLO, one worker holds that SLO's inputs of the period (a 5-tuple per component,
minute and pane: about 200 bytes, so 28 days of a 2-component SLO are about 16 MB), never the rows.
"""

import datetime
import functools
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.accumulators import MergingCombineFn
from transforms.core.records import finite, record_dict, text
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedDoFn, RecordError
from transforms.sli.config import sli_short_name
from transforms.sli.parsing import parse_timestamp
from transforms.sli.stats import count_above, sketch_from_text
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
        {"name": "latency_from_sketches", "type": "STRING", "mode": "REPEATED"},
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


@functools.lru_cache(maxsize=256)
def _sketch(text):
    """The rows of one journey and minute carry the same sketch: read it once. Never merged into (shared)."""
    return sketch_from_text(text)


def _checked_sketch(value, total):
    """The row's latency_sketch text (None in rows written before sketches), checked to hold `total` requests."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"field 'latency_sketch': expected text, got {type(value).__name__}")
    try:
        count = _sketch(value).count
    except ValueError as e:
        raise RecordError("bad_field", f"field 'latency_sketch': not a latency sketch of pipelines.sli ({e})") from None
    if count != total:
        raise RecordError(
            "bad_field", f"field 'latency_sketch': holds {count:.0f} requests, the row's total is {total}"
        )
    return value


def parse_sli_row(record):
    """A stored SLI row (JSON text/bytes or a BigQuery dict, as the SLI pipeline writes them) -> the fields SLO
    evaluation reads: sli_id, window_start (ISO, UTC), good, total, pane_index, latency_sketch (None in rows
    written before sketches). Unmatched-journey rows keep good None. Raises RecordError: invalid_json/
    not_an_object..., missing_field, wrong_type, bad_timestamp, out_of_range, bad_field (windows other than
    60 s, good > total, a latency_sketch that is not one or holds another number of requests than total)."""
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
        "latency_sketch": _checked_sketch(row.get("latency_sketch"), total),
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


SKETCHED_TAG = "sketched"


def sketched_latency_slis(config):
    """{(service, journey): ((sli_id, threshold_ms), ...)}: the latency SLIs the config's SLOs use, which
    `LatencyFromSketches` counts from sketches in the minutes whose rows lack them."""
    used = {sli_id for slo in config.slos for sli_id, _ in slo.slis()}
    out = {}
    for service in config.services:
        for journey in service.journeys:
            for sli in journey.slis or service.slis:
                sli_id = f"{service.name}/{journey.name}/{sli_short_name(sli)}"
                if sli.kind == "latency" and sli_id in used:
                    out.setdefault((service.name, journey.name), []).append((sli_id, sli.threshold_ms))
    return {key: tuple(slis) for key, slis in out.items()}


class LatencyFromSketches(GuardedDoFn):
    """((service, journey, window_start), that minute's parsed rows) -> a row (sli_id, window_start, good,
    total, pane_index) per latency SLI of `slis` the rows lack, counted from the latest pane's sketch, and
    each such sli_id on SKETCHED_TAG. Rows without a sketch (written before sketches) cannot give one: a
    dead letter (missing_field) per journey and minute."""

    def __init__(self, pipeline_name, config_name, slis):
        super().__init__(pipeline_name)
        self.STEP = f"LatencyFromSketches[{config_name}]"
        self._slis = slis

    def handle(self, element):
        (service, journey, window_start), rows = element
        rows = list(rows)
        present = {r["sli_id"] for r in rows}
        missing = [(sli_id, threshold) for sli_id, threshold in self._slis[(service, journey)] if sli_id not in present]
        if not missing:
            return
        latest = max(rows, key=lambda r: (r["pane_index"], r["latency_sketch"] is not None))
        if latest["latency_sketch"] is None:
            raise RecordError(
                "missing_field",
                f"field 'latency_sketch' is missing: the rows of {service}/{journey} at {window_start} lack "
                f"{', '.join(s for s, _ in missing)} and have no latency sketch to count it from (rows written "
                "before sketches): replay these rows with their own latency thresholds, or run pipelines.sli "
                "again over the logs",
            )
        sketch = _sketch(latest["latency_sketch"])
        for sli_id, threshold in missing:
            bad = count_above(sketch, threshold)
            yield {
                "sli_id": sli_id,
                "window_start": window_start,
                "good": latest["total"] - bad,
                "total": latest["total"],
                "pane_index": latest["pane_index"],
            }
            yield beam.pvalue.TaggedOutput(SKETCHED_TAG, sli_id)


class WithSketchedLatency(beam.PTransform):
    """One config's parsed rows -> (those rows and the latency rows counted from sketches, dead letters,
    sli_ids counted from sketches at least once)."""

    def __init__(self, config, name, pipeline_name):
        super().__init__()
        self._slis, self._name, self._pipeline = sketched_latency_slis(config), name, pipeline_name

    def expand(self, rows):
        slis, name = self._slis, self._name

        def journey_minute(row):
            journey = tuple(row["sli_id"].split("/", 2)[:2])
            if journey in slis:
                yield (*journey, row["window_start"]), row

        result = (
            rows
            | f"KeyJourneyMinutes[{name}]" >> beam.FlatMap(journey_minute)
            | f"GroupJourneyMinutes[{name}]" >> beam.GroupByKey()
            | f"LatencyFromSketches[{name}]"
            >> beam.ParDo(LatencyFromSketches(self._pipeline, name, slis)).with_outputs(
                DEAD_LETTER_TAG, SKETCHED_TAG, main="rows"
            )
        )
        sketched = result[SKETCHED_TAG] | f"SketchedSlis[{name}]" >> beam.Distinct()
        return (rows, result.rows) | f"WithSketched[{name}]" >> beam.Flatten(), result[DEAD_LETTER_TAG], sketched


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
        self.sketched = set()  # sli_ids counted from latency sketches

    def add(self, kind, value):
        """kind: "status" (a status row), "alert" (a transition), "seed" (the SLO's target: it exists, with
        or without data) or "sketch" (an sli_id of the SLO counted from latency sketches)."""
        if kind == "seed":
            self.target = value
        elif kind == "sketch":
            self.sketched.add(value)
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
        self.sketched |= other.sketched
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
            "latency_from_sketches": sorted(self.sketched),
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


MAX_POINTS = 2000  # per config and SLO in the series for the HTML page


class ReplaySeries:
    """One config's SLO over the replay in at most MAX_POINTS points, for the HTML page: minutes in buckets of
    `stride` minutes (a power of two, doubled while there are more buckets), per bucket its last minute's
    evaluated_at and budget consumed and each burn-rate window's highest rate, so a threshold crossing stays
    visible. The same rows give the same points in any order and split."""

    def __init__(self):
        self.stride = 1
        self.buckets = {}  # bucket -> [evaluated_at, budget_consumed, {window_minutes: highest burn rate}]
        self.last = ("", None)  # (evaluated_at, window_days) of the latest row: the thresholds' period

    def add(self, row):
        minute = int(datetime.datetime.fromisoformat(row["evaluated_at"]).timestamp() // 60)
        rates = {b["window_minutes"]: b["burn_rate"] for b in row["burn_rates"]}
        self._put(minute // self.stride, [row["evaluated_at"], row["budget_consumed"], rates])
        self.last = max(self.last, (row["evaluated_at"], row["window_days"]))
        self._coarsen(self.stride)
        return self

    def _put(self, bucket, point):
        held = self.buckets.get(bucket)
        if held is None:
            self.buckets[bucket] = [point[0], point[1], dict(point[2])]
            return
        if point[0] > held[0]:
            held[0], held[1] = point[0], point[1]
        for window, rate in point[2].items():
            if held[2].get(window) is None or (rate is not None and rate > held[2][window]):
                held[2][window] = rate

    def _coarsen(self, stride):
        """Buckets of at least `stride` minutes, and no more than MAX_POINTS of them."""
        while stride > self.stride or len(self.buckets) > MAX_POINTS:
            self.stride *= 2
            old, self.buckets = self.buckets, {}
            for bucket, point in old.items():
                self._put(bucket // 2, point)

    def merge(self, other):
        self.last = max(self.last, other.last)
        self._coarsen(other.stride)
        factor = self.stride // other.stride
        for bucket, point in other.buckets.items():
            self._put(bucket // factor, point)
        self._coarsen(self.stride)
        return self

    def extract(self, config, slo):
        return {
            "config": config,
            "slo": slo,
            "stride_minutes": self.stride,
            "window_days": self.last[1],
            "points": [
                {"evaluated_at": at, "budget_consumed": consumed, "burn_rates": {str(w): r for w, r in rates.items()}}
                for at, consumed, rates in sorted(self.buckets.values(), key=lambda p: p[0])
            ],
        }


class _SeriesCombineFn(MergingCombineFn):
    def create_accumulator(self):
        return ReplaySeries()

    def add_input(self, acc, row):
        return acc.add(row)


class ReplayOutputs(NamedTuple):
    comparison: beam.PCollection  # one row per config and SLO
    alerts: beam.PCollection  # alert transitions, each with its config
    dead_letters: list  # of LatencyFromSketches, per config
    series: beam.PCollection | None  # with series=True: one `ReplaySeries` row per config and SLO


class ReplaySlos(beam.PTransform):
    """{config name: parsed SLI rows} -> `ReplayOutputs`, under each of `configs` ({name: SliConfig}) side by
    side. Status rows and alerts after `period.end` (the minutes the evaluator runs on until the SLO goes
    idle) are left out, so an alert open at the end stays open."""

    def __init__(self, configs, period, pipeline_name, series=False):
        super().__init__()
        self._configs, self._period, self._pipeline, self._series = configs, period, pipeline_name, series

    def expand(self, rows):
        end = None if self._period.end is None else datetime.datetime.fromtimestamp(self._period.end, datetime.UTC)
        keyed, alerts, dead_letters, statuses = [], [], [], []
        for name, config in self._configs.items():
            config_rows = rows[name]
            if sketched_latency_slis(config):
                config_rows, sketch_dead_letters, sketched = config_rows | f"SketchedLatency[{name}]" >> (
                    WithSketchedLatency(config, name, self._pipeline)
                )
                dead_letters.append(sketch_dead_letters)
                slos_of = {}
                for slo in config.slos:
                    for sli_id, _ in slo.slis():
                        slos_of.setdefault(sli_id, []).append(slo.name)
                keyed.append(
                    sketched
                    | f"KeySketched[{name}]"
                    >> beam.FlatMap(lambda s, n=name, of=slos_of: [((n, slo), ("sketch", s)) for slo in of[s]])
                )
            slos = config_rows | f"Evaluate[{name}]" >> ComputeSloStatus(config, True, self._pipeline)
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
            if self._series:
                statuses.append(status | f"KeySeries[{name}]" >> beam.Map(lambda r, n=name: ((n, r["slo"]), r)))
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
        series = None
        if self._series:
            series = (
                statuses
                | "FlattenStatus" >> beam.Flatten()
                | "Series" >> beam.CombinePerKey(_SeriesCombineFn())
                | "SeriesRows" >> beam.Map(_extract)
            )
        return ReplayOutputs(comparison, alerts | "FlattenAlerts" >> beam.Flatten(), dead_letters, series)
