"""Window-aggregation features per entity in event time, the same transforms for streaming and backfill.

Batches of events (dicts, JSON text or Pub/Sub messages) -> per entity, window spec and window end, one row:

  entity        the entity id (text)
  window        the spec's window name, e.g. "10m"
  window_start  start of the event-time window
  time_index    end of the window: the first moment its value is known (point-in-time joins use it)
  valid_until   time_index + the window's period (size for fixed windows): when the next window ends
                and replaces it; after that, with no newer row, the entity had no events in the window
  features      [{name: "<field>_<aggregate>_<window>", value}], value NULL where undefined (a mean of
                no values)
  pane_timing, pane_index, emitted_at   as in the SLI rows: readers take the highest pane_index
                (emitted_at: when the bundle that formatted the row started)

Each batch is parsed in one call (ParseEvents) and its events reduced, before anything is shuffled, to one
partial per entity and time bucket, in numpy columns (`columns.BucketColumns`; a bucket is gcd(size,
period) seconds, so each window is a whole number of buckets). A backfill shuffles those columns per entity
shard and reduces them again; each entity's buckets then become `Aggregates` lists, and a window's
aggregates are the merge of its buckets (`WindowBuckets`).

Bigtable online store: row key = entity, one column per feature (family "features"), cell timestamp =
window end, every version kept until the column family's max age; `lookup_features` reads them back.
"""

import datetime
import json
import math
from operator import itemgetter
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.core.records import (
    datetime_micros,
    epoch_micros,
    event_micros,
    finite,
    is_missing,
    micros_seconds,
    record_dict,
)
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedBatchDoFn, RecordError, payload_and_attributes
from transforms.io.sinks import to_json_line
from transforms.window_features.columns import BucketColumns

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
    micros: int  # event time, whole microseconds since the epoch
    values: dict  # aggregated field -> value (missing fields left out)


def event_time_micros(value, epoch_unit):
    """Event time in whole microseconds since the epoch (truncated, never rounded into a later window) from
    RFC 3339 text, a datetime (naive: UTC) or an epoch number (in `epoch_unit`), within 1970-9000 (a larger
    number is usually a wrong epoch_unit)."""
    if isinstance(value, str):
        try:  # fromisoformat truncates digits after the microsecond
            micros = datetime_micros(datetime.datetime.fromisoformat(value))
        except ValueError:
            raise RecordError(
                "invalid_event_time",
                f"event time {value!r:.60} is neither RFC 3339 text nor an epoch number ({epoch_unit})",
            ) from None
    elif isinstance(value, datetime.datetime):
        micros = datetime_micros(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        micros = epoch_micros(value, _EPOCH_UNITS[epoch_unit], "event_time")
    else:
        raise RecordError(
            "invalid_event_time",
            f"event time {value!r:.60} is neither RFC 3339 text nor an epoch number ({epoch_unit})",
        )
    try:
        return event_micros(micros, "event_time")
    except RecordError:
        raise RecordError(
            "invalid_event_time",
            f"event time {value!r:.60} is not between 1970 and 9000: check the spec's epoch_unit (s, ms or us)",
        ) from None


def event_seconds(value, epoch_unit):
    """`event_time_micros` as seconds (records.micros_seconds: never after the microsecond)."""
    return micros_seconds(event_time_micros(value, epoch_unit))


def parse_event(record, spec):
    """A record (dict or JSON text) -> Event; RecordError for a missing entity or time, or a non-number
    where a numeric aggregate needs one."""
    row = record_dict(record)
    entity = row.get(spec.entity_field)
    if is_missing(entity) or isinstance(entity, (dict, list)):
        raise RecordError("missing_entity", f"the entity field '{spec.entity_field}' is missing or not a value")
    entity = str(entity)
    if len(entity) * 4 > MAX_ENTITY_BYTES and len(entity.encode("utf-8")) > MAX_ENTITY_BYTES:
        raise RecordError(
            "entity_too_long",
            f"the entity '{entity[:40]}...' is over {MAX_ENTITY_BYTES} bytes, the most a Bigtable row key holds",
        )
    if is_missing(row.get(spec.time_field)):
        raise RecordError("missing_event_time", f"the event time field '{spec.time_field}' is missing")
    micros = event_time_micros(row[spec.time_field], spec.epoch_unit)
    values = {}
    for field in spec.fields:
        value = row.get(field)
        if is_missing(value):
            continue
        if field in spec.numeric_fields:
            value = finite(value, field)  # a float: sums of huge integers overflow to inf, never raise
        elif not isinstance(value, (str, int, float)):
            raise RecordError("wrong_type", f"field '{field}' must be a single value, got {type(value).__name__}")
        values[field] = value
    return Event(entity, micros, values)


class Aggregates:
    """The aggregates of one entity's events in one window, as one flat list (cheap to build, merge and
    ship): [latest event time (micros), the count of values of each field, for each numeric field its sum,
    min, max and last value with its time (None while it has none; last by event time, ties by value), for
    each distinct-count field the set of its values (None while empty)]. Partial lists of any events
    merge into the list of all of them."""

    def __init__(self, spec):
        self._fields = list(spec.fields)
        self._count_at = {f: 1 + i for i, f in enumerate(self._fields)}
        numeric_start = 1 + len(self._fields)
        self._numeric_at = {f: numeric_start + 5 * i for i, f in enumerate(spec.numeric_fields)}
        distinct_start = numeric_start + 5 * len(self._numeric_at)
        self._distinct_at = {f: distinct_start + i for i, f in enumerate(spec.distinct_fields)}
        self._size = distinct_start + len(self._distinct_at)
        self._empty = [-1] + [0] * len(self._fields) + [None] * (self._size - 1 - len(self._fields))

    def empty(self):
        return self._empty.copy()

    def copy(self, acc):
        """A list of its own (its sets copied), which `merge` may change."""
        acc = acc.copy()
        for at in self._distinct_at.values():
            if acc[at] is not None:
                acc[at] = set(acc[at])
        return acc

    def merge(self, acc, other):
        """Folds `other` into `acc`, which owns its sets (from `empty`, `copy` or decoding); `other` is
        left as it was."""
        if other[0] > acc[0]:
            acc[0] = other[0]
        for i in range(1, 1 + len(self._fields)):
            acc[i] += other[i]
        for at in self._numeric_at.values():
            if other[at] is None:
                continue
            if acc[at] is None:
                acc[at : at + 5] = other[at : at + 5]
                continue
            acc[at] += other[at]
            if other[at + 1] < acc[at + 1]:
                acc[at + 1] = other[at + 1]
            if other[at + 2] > acc[at + 2]:
                acc[at + 2] = other[at + 2]
            if (other[at + 3], other[at + 4]) > (acc[at + 3], acc[at + 4]):
                acc[at + 3], acc[at + 4] = other[at + 3], other[at + 4]
        for at in self._distinct_at.values():
            if other[at]:
                if acc[at] is None:
                    acc[at] = set(other[at])
                else:
                    acc[at] |= other[at]
        return acc

    def value(self, acc, field, aggregate):
        """The aggregate over the window's values of `field`; 0 or None (see _EMPTY) when it had none."""
        return self.reader(field, aggregate)(acc)

    def reader(self, field, aggregate):
        """A function of an Aggregates list giving `aggregate` of `field` (see `value`)."""
        if aggregate == "count":
            return itemgetter(self._count_at[field])
        if aggregate == "distinct_count":
            at = self._distinct_at[field]
            return lambda acc: len(acc[at] or ())
        numbers, empty = self._numeric_at[field], _EMPTY.get(aggregate)
        if aggregate == "mean":
            count = self._count_at[field]
            return lambda acc: empty if acc[numbers] is None else float(acc[numbers] / acc[count])
        at = numbers + {"sum": 0, "min": 1, "max": 2, "last": 4}[aggregate]
        return lambda acc: empty if acc[numbers] is None else float(acc[at])


class WindowAggregatesFn(beam.CombineFn):
    """Merges the partial `Aggregates` lists of a key."""

    def __init__(self, aggregates):
        self._aggregates = aggregates

    def create_accumulator(self):
        return self._aggregates.empty()

    def add_input(self, acc, partial):
        return self._aggregates.merge(acc, partial)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            self._aggregates.merge(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


class WindowBuckets:
    """Window assignment through time buckets. An event is merged into one bucket per granularity of the
    spec's windows (gcd(size, period) seconds, shared by the windows of that granularity), not into each
    of the size/period sliding windows that hold it; a window's aggregates are the merge of the nonempty
    buckets it covers, and consecutive windows covering the same buckets share one merged list."""

    def __init__(self, spec, aggregates):
        self._aggregates = aggregates
        self._windows = [(w.name, w.size, w.step, math.gcd(w.size, w.step)) for w in spec.windows]
        self.widths = sorted({width for *_, width in self._windows})

    def windows(self, buckets):
        """(window name, starts, Aggregates list) of the windows holding events of `buckets`, in order of the
        spec's windows, then of start: `starts` is a range of window starts (seconds) whose windows hold the
        same buckets, hence one list. The lists may be buckets or shared: read them only."""
        by_width = {}
        for (width, start), acc in buckets.items():
            by_width.setdefault(width, []).append((start, acc))
        for part in by_width.values():
            part.sort(key=itemgetter(0))
        for name, size, step, width in self._windows:
            if width in by_width:
                for starts, acc in self._sweep(size, step, by_width[width]):
                    yield name, starts, acc

    def _sweep(self, size, step, part):
        """(starts, merged list) over one spec window's sorted buckets: the windows from `starts.start` on
        hold buckets [first, end) until the next window drops bucket `first` or takes bucket `end`."""
        starts, copy, merge = [start for start, _ in part], self._aggregates.copy, self._aggregates.merge
        first = end = 0
        window_start = None
        while first < len(part):
            earliest = (starts[first] - size) // step * step + step  # the first window holding bucket `first`
            if window_start is None or window_start < earliest:
                window_start = earliest
            while end < len(part) and starts[end] < window_start + size:
                end += 1
            acc = part[first][1]
            if end - first > 1:
                acc = copy(acc)
                for _, other in part[first + 1 : end]:
                    merge(acc, other)
            # the last window of the run: the one before the next that drops bucket `first` or takes `end`
            last = starts[first] // step * step
            if end < len(part):
                last = min(last, (starts[end] - size) // step * step)
            yield range(window_start, last + 1, step), acc
            window_start = last + step
            while first < len(part) and starts[first] < window_start:
                first += 1


class ParseEvents(GuardedBatchDoFn):
    """A batch of raw records -> the partial aggregates of its events, and a dead letter with the reason per
    bad record. The events of a batch are reduced together in columns (`BucketColumns`: one row per entity
    and time bucket). `by_entity` (a backfill): one (shard, BucketColumns) per entity shard of the batch;
    else (streaming) one ((entity, window name, window start), Aggregates list) per window, timestamped
    with its latest event, so that Beam windows it by the key (WindowFromKey). One record (`handle`) gives
    the partials of its own event."""

    STEP = "ParseEvents"

    def __init__(self, spec, pipeline_name, by_entity):
        super().__init__(pipeline_name)
        self._spec, self._by_entity = spec, by_entity
        self._buckets = WindowBuckets(spec, Aggregates(spec))
        self._events = Metrics.counter(pipeline_name, "events")

    def _event(self, record):
        return parse_event(payload_and_attributes(record)[0], self._spec)

    def _outputs(self, events):
        self._events.inc(len(events))
        if not events:
            return
        columns = BucketColumns.of_events(events, self._spec, self._buckets.widths)
        if self._by_entity:
            yield from columns.by_shard()
            return
        for entity, buckets in columns.entity_buckets(self._spec):
            for name, starts, acc in self._buckets.windows(buckets):
                for start in starts:
                    yield window.TimestampedValue(((entity, name, start), acc), Timestamp(micros=acc[0]))

    def handle(self, record):
        yield from self._outputs([self._event(record)])

    def handle_batch(self, records):
        events = []
        for record in records:
            try:
                events.append(self._event(record))
            except Exception as e:  # noqa: BLE001 - as GuardedDoFn: RecordError or a bug, a dead letter
                payload, attributes = self.dead_letter_payload(record)
                yield self.dead_letter(payload, e, attributes)
        yield from self._outputs(events)


def entity_buckets_of_shard(keyed, spec):
    """(shard, its partials: BucketColumns) -> (entity, {(bucket width, start): Aggregates list}) per entity
    of the shard, its buckets merged over all of its events."""
    _, parts = keyed
    return BucketColumns.merged(parts).entity_buckets(spec)


class WindowFromKey(window.NonMergingWindowFn):
    """Assigns ((entity, window name, start), aggregates) to [start, start + the window's size)."""

    def __init__(self, sizes):
        self._sizes = dict(sizes)  # window name -> seconds

    def assign(self, context):
        _, name, start = context.element[0]
        return [window.IntervalWindow(start, start + self._sizes[name])]

    def get_window_coder(self):
        return coders.IntervalWindowCoder()


_PANE_TIMING = {0: "EARLY", 1: "ON_TIME", 2: "LATE", 3: "UNKNOWN"}


class FormatFeatureRows(beam.DoFn):
    """The aggregates of an entity -> the list of its feature rows (see the module doc), one per window. A
    backfill: (entity, {(bucket width, start): Aggregates list}) of all its events, one final pane per
    window; streaming: (entity, (window name, start, Aggregates list)) in a pane.

    `json_lines` (a backfill whose only sink is files): the rows' JSONL text instead, the text
    `to_json_lines` gives for the list, without building the rows: each run of windows encodes its features
    once, and each row's line is spliced from pieces encoded once per entity, window and bundle."""

    def __init__(self, spec, bounded_input, pipeline_name, json_lines=False):
        self._spec, self._pipeline = spec, pipeline_name
        self._bounded_input = bounded_input  # a backfill: one final pane per window, not windowed by Beam
        self._json_lines = json_lines and bounded_input

    def setup(self):
        self._aggregates = Aggregates(self._spec)
        self._buckets = WindowBuckets(self._spec, self._aggregates)
        self._windows = {
            w.name: (
                w.size,
                w.step,
                [(f, self._aggregates.reader(field, agg)) for f, field, agg in self._spec.aggregations_in(w)],
            )
            for w in self._spec.windows
        }
        self._rows = Metrics.counter(self._pipeline, "feature_rows")
        names = [w.name for w in self._spec.windows]
        self._window_rows = {name: Metrics.counter(self._pipeline, f"feature_rows_{name}") for name in names}
        # a backfill formats each entity once: its windows' entity counts (the local report prints them)
        self._window_entities = {name: Metrics.counter(self._pipeline, f"entities_{name}") for name in names}
        # json_lines: per window, its features' JSON with %s for each value
        self._features_json = {
            name: "["
            + ",".join('{"name":%s,"value":%%s}' % to_json_line(f).replace("%", "%%") for f, _ in readers)
            + "]"
            for name, (_, _, readers) in self._windows.items()
        }
        # window start -> its bounds as ISO text, or (json_lines) the end of its rows' line (few a bundle)
        self._bounds = {name: {} for name in names}

    def start_bundle(self):
        self._emitted_at = datetime.datetime.now(datetime.UTC).isoformat()
        if sum(map(len, self._bounds.values())) > 100_000:
            for bounds in self._bounds.values():
                bounds.clear()

    def process(self, keyed, pane=beam.DoFn.PaneInfoParam):
        entity, aggregates = keyed
        if self._bounded_input:
            runs, timing, index = self._buckets.windows(aggregates), "ON_TIME", 0
        else:
            name, start, acc = aggregates
            runs, timing, index = [(name, (start,), acc)], _PANE_TIMING.get(pane.timing, "UNKNOWN"), pane.index
        rows, per_window = [], {}
        if self._json_lines:
            head = f'{{"emitted_at":{to_json_line(self._emitted_at)},"entity":{to_json_line(entity)},"features":'
        for name, starts, acc in runs:
            size, step, readers = self._windows[name]
            if self._json_lines:
                values = [read(acc) for _, read in readers]
                self._add_lines(rows, head, name, size, step, starts, values, timing, index)
            else:
                features = [{"name": f, "value": read(acc)} for f, read in readers]  # shared by the run
                self._add_rows(rows, entity, name, size, step, starts, features, timing, index)
            per_window[name] = per_window.get(name, 0) + len(starts)
        self._rows.inc(sum(per_window.values()))
        for name, count in per_window.items():
            self._window_rows[name].inc(count)
            if self._bounded_input:
                self._window_entities[name].inc()
        if self._json_lines:
            yield "".join(rows[:-1])  # the lines' pieces, without the last newline
        else:
            yield rows

    def _add_rows(self, rows, entity, name, size, step, starts, features, timing, index):
        cached = self._bounds[name]
        for start in starts:
            bounds = cached.get(start)
            if bounds is None:
                bounds = cached[start] = tuple(_iso(t) for t in (start, start + size, start + size + step))
            rows.append(
                {
                    "entity": entity,
                    "window": name,
                    "window_start": bounds[0],
                    "time_index": bounds[1],
                    "valid_until": bounds[2],
                    "features": features,
                    "pane_timing": timing,
                    "pane_index": index,
                    "emitted_at": self._emitted_at,
                }
            )

    def _add_lines(self, pieces, head, name, size, step, starts, values, timing, index):
        """The JSON lines of `_add_rows`' rows of a backfill (keys in to_json_line's sorted order), as pieces
        joined once per entity, each line followed by a newline: `head` (the entity's), the features (the
        window's names around its values' JSON, in one orjson call), the end of the line (per window
        start)."""
        # values are floats, counts or None, so their JSON holds no comma of its own
        head += self._features_json[name] % tuple(orjson.dumps(values).decode()[1:-1].split(","))
        cached = self._bounds[name]
        for start in starts:
            tail = cached.get(start)
            if tail is None:
                window_start, time_index, valid_until = (_iso(t) for t in (start, start + size, start + size + step))
                tail = cached[start] = (
                    f',"pane_index":{index},"pane_timing":{to_json_line(timing)},"time_index":{to_json_line(time_index)},'
                    f'"valid_until":{to_json_line(valid_until)},"window":{to_json_line(name)},'
                    f'"window_start":{to_json_line(window_start)}}}'
                )
            pieces += (head, tail, "\n")


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


class WindowFeatures(NamedTuple):
    # lists of feature rows: per entity in a backfill (or their JSONL text, `json_lines`), per window pane in
    # streaming
    row_batches: beam.PCollection
    dead_letters: beam.PCollection


class ComputeWindowFeatures(beam.PTransform):
    """Batches (lists) of raw records -> WindowFeatures: lists of feature rows (per entity and window of the
    spec), and the dead letters of ParseEvents.

    A backfill needs no Beam windows: each batch's partial aggregates of an entity (per time bucket) go
    through one GroupByKey per entity (fewer, smaller elements than one per window: the local runner holds
    the whole shuffle) and are merged there into its windows. In streaming the window is in the key and Beam
    windows by it: the watermark pane is ON_TIME, then every late batch within `allowed_lateness_seconds`
    fires a LATE pane with the updated (accumulated) aggregates; later events are dropped by Beam (the
    runner counts them). The tests check both paths give the same values. `json_lines`: a backfill gives each
    entity's rows as their JSONL text (FormatFeatureRows), for a run whose only sink is files."""

    def __init__(self, spec, pipeline_name, allowed_lateness_seconds=3600, json_lines=False):
        super().__init__()
        self._spec, self._pipeline = spec, pipeline_name
        self._allowed_lateness, self._json_lines = allowed_lateness_seconds, json_lines

    def expand(self, batches):
        bounded, aggregates = batches.is_bounded, Aggregates(self._spec)
        parsed = batches | "ParseEvents" >> beam.ParDo(ParseEvents(self._spec, self._pipeline, bounded)).with_outputs(
            DEAD_LETTER_TAG, main="partials"
        )
        if bounded:
            per_entity = (
                parsed.partials
                | "GroupPerShard" >> beam.GroupByKey()
                | "MergePerShard" >> beam.FlatMap(entity_buckets_of_shard, self._spec)
            )
        else:
            per_entity = (
                parsed.partials
                | "Windows"
                >> beam.WindowInto(
                    WindowFromKey({w.name: w.size for w in self._spec.windows}),
                    trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self._allowed_lateness),
                )
                | "AggregatePerEntity" >> beam.CombinePerKey(WindowAggregatesFn(aggregates))
                | "ByEntity" >> beam.MapTuple(lambda key, acc: (key[0], (key[1], key[2], acc)))
            )
        rows = per_entity | "FormatFeatureRows" >> beam.ParDo(
            FormatFeatureRows(self._spec, bounded, self._pipeline, self._json_lines)
        )
        if not bounded:
            # Rows carry their window in their columns; WindowFromKey could not assign windows to them later.
            rows = rows | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        return WindowFeatures(rows, parsed[DEAD_LETTER_TAG])


def bigtable_cells(row):
    """The online store's cells of a feature row: one per feature with a value."""
    return {f["name"]: f["value"] for f in row["features"] if f["value"] is not None}


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def as_of_filter(as_of_micros):
    """The newest cell of each feature at or before `as_of_micros` (Bigtable's timestamps are whole
    milliseconds; the range's end is exclusive)."""
    from google.cloud.bigtable import row_filters

    return row_filters.RowFilterChain(
        [
            row_filters.FamilyNameRegexFilter(BIGTABLE_COLUMN_FAMILY),
            row_filters.TimestampRangeFilter(
                row_filters.TimestampRange(end=_EPOCH + (as_of_micros // 1000 + 1) * 1000 * _MICROSECOND)
            ),
            row_filters.CellsColumnLimitFilter(1),
        ]
    )


def features_at(cells, spec, as_of_micros, missing_value=None):
    """{feature: [(value JSON, cell time)]} (the newest cell at or before `as_of_micros`, as `as_of_filter`
    reads it) -> ({feature: value}, [{window_name, time_index}]): stale or absent features get the
    value of no events (`missing_value` where that is no value); a window's time_index is None when none
    of its features was current."""
    features, times = {}, []
    for w in spec.windows:
        window_time = None
        for name, _, aggregate in spec.aggregations_in(w):
            cell = cells.get(name)
            cell_micros = (cell[0][1] - _EPOCH) // _MICROSECOND if cell else None
            if cell_micros is not None and as_of_micros < cell_micros + w.step * 1_000_000:
                features[name] = json.loads(cell[0][0])
                window_time = cell_micros if window_time is None else max(window_time, cell_micros)
            else:
                features[name] = _EMPTY.get(aggregate, missing_value)
        at = None if window_time is None else datetime.datetime.fromtimestamp(window_time / 1e6, datetime.UTC)
        times.append({"window_name": w.name, "time_index": at and at.isoformat()})
    return features, times


def lookup_features(table, entity, spec, as_of=None):
    """The features of `entity` current at `as_of` (a datetime; default now) from the online store:
    {feature: value}. A feature's value is its newest cell at or before `as_of` while that window is still
    the latest one (as_of < time_index + period); past that the entity had no events in the window since,
    and the value is that of no events: 0 for count, distinct_count and sum, None otherwise. For callers:

        table = bigtable.Client(project=P).instance("features").table("online")
        lookup_features(table, "card-42", load_window_spec("spec.yaml"))["amount_sum_10m"]
    """
    as_of = as_of or datetime.datetime.now(datetime.UTC)
    as_of_micros = (as_of - _EPOCH) // _MICROSECOND
    row = table.read_row(entity.encode("utf-8"), filter_=as_of_filter(as_of_micros))
    cells = row.cells.get(BIGTABLE_COLUMN_FAMILY, {}) if row else {}
    newest = {name.decode(): [(c.value, c.timestamp) for c in column] for name, column in cells.items()}
    return features_at(newest, spec, as_of_micros)[0]


def entity_row_key(row):
    """The online store's row key: the entity id, one row per entity."""
    return row["entity"]
