"""Window-aggregation features per entity in event time, the same transforms for streaming and backfill.

Events (dicts, JSON text or Pub/Sub messages) -> per entity, window spec and window end, one row:

  entity        the entity id (text)
  window        the spec's window name, e.g. "10m"
  window_start  start of the event-time window
  time_index    end of the window: the first moment its value is known (point-in-time joins use it)
  valid_until   time_index + the window's period (size for fixed windows): when the next window ends
                and replaces it; after that, with no newer row, the entity had no events in the window
  features      [{name: "<field>_<aggregate>_<window>", value}], value NULL where undefined (a mean of
                no values)
  pane_timing, pane_index, emitted_at   as in the SLI rows: readers take the highest pane_index

Bigtable online store: row key = entity, one column per feature (family "features"), cell timestamp =
window end, every version kept until the column family's max age; `lookup_features` reads them back.
"""

import datetime
import json
from typing import NamedTuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

from transforms.core.accumulators import MergingCombineFn
from transforms.core.records import (
    MAX_EVENT_SECONDS,
    MIN_EVENT_SECONDS,
    datetime_micros,
    epoch_micros,
    event_timestamp,
    finite,
    is_missing,
    micros_seconds,
    record_dict,
)
from transforms.io.deadletter import GuardedDoFn, RecordError, payload_and_attributes

BIGTABLE_COLUMN_FAMILY = "features"
MAX_ENTITY_BYTES = 4096  # the online store's row key is the entity
_EPOCH_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}
_EMPTY = {"count": 0, "distinct_count": 0, "sum": 0.0}  # the value of these over no events; others: None

WINDOW_FEATURES_BQ_SCHEMA = {
    "fields": [
        {"name": "entity", "type": "STRING", "mode": "REQUIRED"},
        {"name": "window", "type": "STRING", "mode": "REQUIRED"},
        {"name": "window_start", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "time_index", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "valid_until", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {
            "name": "features",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "name", "type": "STRING", "mode": "REQUIRED"},
                {"name": "value", "type": "FLOAT64", "mode": "NULLABLE"},
            ],
        },
        {"name": "pane_timing", "type": "STRING", "mode": "REQUIRED"},
        {"name": "pane_index", "type": "INT64", "mode": "REQUIRED"},
        {"name": "emitted_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    ]
}


class Event(NamedTuple):
    entity: str
    timestamp: float  # seconds since the epoch, from records.micros_seconds
    values: dict  # aggregated field -> value (missing fields left out)


def event_seconds(value, epoch_unit):
    """Event time in seconds since the epoch (see `micros_seconds`: truncated to the microsecond, never rounded
    into a later window) from RFC 3339 text, a datetime (naive: UTC) or an epoch number (in `epoch_unit`),
    within the range every window can represent (1970-9000: a larger number is usually a wrong epoch_unit)."""
    if isinstance(value, datetime.datetime):
        micros = datetime_micros(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        micros = epoch_micros(value, _EPOCH_UNITS[epoch_unit], "event_time")
    elif isinstance(value, str):
        try:  # fromisoformat truncates digits after the microsecond
            micros = datetime_micros(datetime.datetime.fromisoformat(value))
        except ValueError:
            raise RecordError(
                "invalid_event_time",
                f"event time {value!r:.60} is neither RFC 3339 text nor an epoch number ({epoch_unit})",
            ) from None
    else:
        raise RecordError(
            "invalid_event_time",
            f"event time {value!r:.60} is neither RFC 3339 text nor an epoch number ({epoch_unit})",
        )
    seconds = micros_seconds(micros)
    if not MIN_EVENT_SECONDS <= seconds <= MAX_EVENT_SECONDS:
        raise RecordError(
            "invalid_event_time",
            f"event time {value!r:.60} is not between 1970 and 9000: check the spec's epoch_unit (s, ms or us)",
        )
    return seconds


def parse_event(record, spec):
    """A record (dict or JSON text) -> Event; RecordError for a missing entity or time, or a non-number
    where a numeric aggregate needs one."""
    row = record_dict(record)
    entity = row.get(spec.entity_field)
    if is_missing(entity) or isinstance(entity, (dict, list)):
        raise RecordError("missing_entity", f"the entity field '{spec.entity_field}' is missing or not a value")
    entity = str(entity)
    if len(entity.encode("utf-8")) > MAX_ENTITY_BYTES:
        raise RecordError(
            "entity_too_long",
            f"the entity '{entity[:40]}...' is over {MAX_ENTITY_BYTES} bytes, the most a Bigtable row key holds",
        )
    if is_missing(row.get(spec.time_field)):
        raise RecordError("missing_event_time", f"the event time field '{spec.time_field}' is missing")
    timestamp = event_seconds(row[spec.time_field], spec.epoch_unit)
    values = {}
    for field in spec.fields:
        value = row.get(field)
        if is_missing(value):
            continue
        if field in spec.numeric_fields:
            finite(value, field)
        elif not isinstance(value, (str, int, float)):
            raise RecordError("wrong_type", f"field '{field}' must be a single value, got {type(value).__name__}")
        values[field] = value
    return Event(entity, timestamp, values)


class ParseEvents(GuardedDoFn):
    """Raw record -> Event timestamped with its event time, or a dead letter with the reason."""

    STEP = "ParseEvents"

    def __init__(self, spec, pipeline_name):
        super().__init__(pipeline_name)
        self._spec = spec
        self._events = Metrics.counter(pipeline_name, "events")

    def handle(self, record):
        event = parse_event(payload_and_attributes(record)[0], self._spec)
        self._events.inc()
        yield window.TimestampedValue(event, event_timestamp(event.timestamp))


class WindowAggregates:
    """The aggregates of one entity's events in one window: per field the count of values; for numeric
    fields the sum, min, max and last value (by event time, ties by value); for distinct-count fields the
    set of values."""

    def __init__(self):
        self.counts = {}  # field -> count
        self.numbers = {}  # field -> [sum, min, max, (time, value) of the last]
        self.distinct = {}  # field -> set of values

    def add(self, event, numeric_fields, distinct_fields):
        for field, value in event.values.items():
            self.counts[field] = self.counts.get(field, 0) + 1
            if field in numeric_fields:
                stats = self.numbers.get(field)
                if stats is None:
                    self.numbers[field] = [value, value, value, (event.timestamp, value)]
                else:
                    stats[0] += value
                    stats[1], stats[2] = min(stats[1], value), max(stats[2], value)
                    stats[3] = max(stats[3], (event.timestamp, value))
            if field in distinct_fields:
                self.distinct.setdefault(field, set()).add(value)
        return self

    def merge(self, other):
        for field, count in other.counts.items():
            self.counts[field] = self.counts.get(field, 0) + count
        for field, theirs in other.numbers.items():
            mine = self.numbers.get(field)
            if mine is None:
                self.numbers[field] = list(theirs)
            else:
                self.numbers[field] = [
                    mine[0] + theirs[0],
                    min(mine[1], theirs[1]),
                    max(mine[2], theirs[2]),
                    max(mine[3], theirs[3]),
                ]
        for field, values in other.distinct.items():
            self.distinct.setdefault(field, set()).update(values)
        return self

    def value(self, field, aggregate):
        """The aggregate over the window's values of `field`; 0 or None (see _EMPTY) when it had none."""
        if aggregate == "count":
            return self.counts.get(field, 0)
        if aggregate == "distinct_count":
            return len(self.distinct.get(field, ()))
        if field not in self.numbers:
            return _EMPTY.get(aggregate)
        total, low, high, (_, last) = self.numbers[field]
        return float(
            {"sum": total, "mean": total / self.counts[field], "min": low, "max": high, "last": last}[aggregate]
        )


class WindowAggregatesFn(MergingCombineFn):
    """Thin CombineFn over WindowAggregates."""

    def __init__(self, numeric_fields, distinct_fields):
        self._numeric, self._distinct = frozenset(numeric_fields), frozenset(distinct_fields)

    def create_accumulator(self):
        return WindowAggregates()

    def add_input(self, acc, event):
        return acc.add(event, self._numeric, self._distinct)


class KeyByWindow(beam.DoFn):
    """Event -> ((entity, window name, window start), event), once per window of every window spec that
    holds the event. With the window in the key each key has a single window: Beam's trigger driver
    handles the windows of one key in time quadratic in their number (see transforms/sli/rows.py)."""

    def __init__(self, spec):
        self._windows = spec.windows

    def process(self, event):
        for w in self._windows:
            for start in w.starts(event.timestamp):
                yield (event.entity, w.name, start), event


class WindowFromKey(window.NonMergingWindowFn):
    """Assigns ((entity, window name, start), event) to [start, start + the window's size)."""

    def __init__(self, sizes):
        self._sizes = dict(sizes)  # window name -> seconds

    def assign(self, context):
        _, name, start = context.element[0]
        return [window.IntervalWindow(start, start + self._sizes[name])]

    def get_window_coder(self):
        return coders.IntervalWindowCoder()


def _iso_seconds(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


_PANE_TIMING = {0: "EARLY", 1: "ON_TIME", 2: "LATE", 3: "UNKNOWN"}


class FormatFeatureRows(beam.DoFn):
    """((entity, window name, start), WindowAggregates) in a pane -> one feature row (see the module doc)."""

    def __init__(self, spec, bounded_input, pipeline_name):
        self._spec, self._pipeline = spec, pipeline_name
        self._bounded_input = bounded_input  # a backfill: one final pane per window, not windowed by Beam

    def setup(self):
        self._windows = {w.name: (w.size, w.step, self._spec.aggregations_in(w)) for w in self._spec.windows}
        self._rows = Metrics.counter(self._pipeline, "feature_rows")

    def process(self, keyed, pane=beam.DoFn.PaneInfoParam):
        (entity, name, start), aggregates = keyed
        size, step, features = self._windows[name]
        self._rows.inc()
        yield {
            "entity": entity,
            "window": name,
            "window_start": _iso_seconds(start),
            "time_index": _iso_seconds(start + size),
            "valid_until": _iso_seconds(start + size + step),
            "features": [{"name": feature, "value": aggregates.value(field, agg)} for feature, field, agg in features],
            "pane_timing": "ON_TIME" if self._bounded_input else _PANE_TIMING.get(pane.timing, "UNKNOWN"),
            "pane_index": 0 if self._bounded_input else pane.index,
            "emitted_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }


class ComputeWindowFeatures(beam.PTransform):
    """Event-timestamped Events -> feature rows per entity and window of the spec.

    In streaming the watermark pane is ON_TIME, then every late event within `allowed_lateness_seconds`
    fires a LATE pane with the updated (accumulated) aggregates; later events are dropped by Beam (the
    runner counts them). A backfill needs no Beam windows: the window is in the key, and combining per
    key in the global window skips Beam's trigger driver (about 2.5x faster in bench/window_features.py);
    the tests check both paths give the same values."""

    def __init__(self, spec, pipeline_name, allowed_lateness_seconds=3600):
        super().__init__()
        self._spec, self._pipeline = spec, pipeline_name
        self._allowed_lateness = allowed_lateness_seconds

    def expand(self, events):
        keyed = events | "KeyByWindow" >> beam.ParDo(KeyByWindow(self._spec))
        if not events.is_bounded:
            keyed = keyed | "Windows" >> beam.WindowInto(
                WindowFromKey({w.name: w.size for w in self._spec.windows}),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=Duration(seconds=self._allowed_lateness),
            )
        rows = (
            keyed
            | "AggregatePerEntity"
            >> beam.CombinePerKey(WindowAggregatesFn(self._spec.numeric_fields, self._spec.distinct_fields))
            | "FormatFeatureRows" >> beam.ParDo(FormatFeatureRows(self._spec, events.is_bounded, self._pipeline))
        )
        if events.is_bounded:
            return rows
        # Rows carry their window in their columns; WindowFromKey could not assign windows to them later.
        return rows | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())


def bigtable_cells(row):
    """The online store's cells of a feature row: one per feature with a value."""
    return {f["name"]: f["value"] for f in row["features"] if f["value"] is not None}


def lookup_features(table, entity, spec, as_of=None):
    """The features of `entity` current at `as_of` (a datetime; default now) from the online store:
    {feature: value}. A feature's value is its newest cell at or before `as_of` while that window is still
    the latest one (as_of < time_index + period); past that the entity had no events in the window since,
    and the value is that of no events: 0 for count, distinct_count and sum, None otherwise. For callers:

        table = bigtable.Client(project=P).instance("features").table("online")
        lookup_features(table, "card-42", load_window_spec("spec.yaml"))["amount_sum_10m"]
    """
    from google.cloud.bigtable import row_filters

    as_of = as_of or datetime.datetime.now(datetime.UTC)
    filters = row_filters.RowFilterChain(
        [
            row_filters.TimestampRangeFilter(
                row_filters.TimestampRange(end=as_of + datetime.timedelta(milliseconds=1))
            ),
            row_filters.CellsColumnLimitFilter(1),
        ]
    )
    row = table.read_row(entity.encode("utf-8"), filter_=filters)
    cells = row.cells.get(BIGTABLE_COLUMN_FAMILY, {}) if row else {}
    features = {}
    for w in spec.windows:
        for name, _, agg in spec.aggregations_in(w):
            cell = (cells.get(name.encode()) or [None])[0]
            fresh = cell is not None and as_of < cell.timestamp + datetime.timedelta(seconds=w.step)
            features[name] = json.loads(cell.value) if fresh else _EMPTY.get(agg)
    return features


def entity_row_key(row):
    """The online store's row key: the entity id, one row per entity."""
    return row["entity"]
