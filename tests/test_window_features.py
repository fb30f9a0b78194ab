"""Window features: the spec's validation, event parsing, the accumulator (one, merged, against the standard
library), late panes with TestStream, and the bundled sample end to end against tests/window_oracle.py,
with the Bigtable online store's lookup and the BigQuery offline store's point-in-time join."""

import datetime
import json
import math
import statistics
import zlib
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from google.cloud import bigtable
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines import window_features
from pipelines.launch import metric_counts
from sql import window_features_join
from tests.test_sli_e2e import ROOT, bq_client
from tests.window_oracle import expected_features, valid_events
from transforms.core.config import ConfigError
from transforms.io.deadletter import GuardedDoFn, RecordError
from transforms.io.sinks import to_json_lines
from transforms.window_features.aggregate import (
    Aggregates,
    ComputeWindowFeatures,
    Event,
    FormatFeatureRows,
    ParseEvents,
    WindowAggregatesFn,
    WindowBuckets,
    entity_buckets_of_shard,
    lookup_features,
    parse_event,
)
from transforms.window_features.columns import ENTITY_SHARDS, BucketColumns
from transforms.window_features.spec import WindowFeatureSpec, load_window_spec

SAMPLE_LINES = Path(window_features.SAMPLE_EVENTS).read_text().splitlines()
SAMPLE_WINDOWS = [("10m", 600, 60), ("1h", 3600, 3600), ("1d", 86400, 86400)]
SPEC = WindowFeatureSpec.model_validate(
    {
        "entity_field": "card_id",
        "time_field": "event_time",
        "windows": [{"name": "1m", "size": "1m"}, {"name": "2m", "size": 120, "period": "1m"}],
        "aggregations": [
            {"field": "amount", "aggregates": ["count", "sum", "mean", "min", "max", "last"]},
            {"field": "merchant", "aggregates": ["distinct_count"]},
        ],
    }
)
T0 = 1795341600  # 2026-11-22T10:00:00Z, a window boundary


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def _buckets(spec, *batches):
    """{entity: {(bucket width, start): Aggregates list}} of lists of events, as a backfill gets them: each
    batch reduced in columns and cut per entity shard, the partials grouped per shard and merged there."""
    widths, shards = WindowBuckets(spec, Aggregates(spec)).widths, {}
    for events in batches:
        if events:
            for shard, partial in BucketColumns.of_events(events, spec, widths).by_shard():
                shards.setdefault(shard, []).append(partial)
    return {
        entity: buckets
        for shard, parts in shards.items()
        for entity, buckets in entity_buckets_of_shard((shard, parts), spec)
    }


def row_values(rows):
    """{(entity, window, window end seconds): {feature: value}}, the highest pane of each window."""
    latest = {}
    for row in rows:
        key = (row["entity"], row["window"], datetime.datetime.fromisoformat(row["time_index"]).timestamp())
        if key not in latest or row["pane_index"] > latest[key]["pane_index"]:
            latest[key] = row
    return {k: {f["name"]: f["value"] for f in r["features"]} for k, r in latest.items()}


def assert_same_features(actual, expected):
    assert actual.keys() == expected.keys()
    for key, features in expected.items():
        assert actual[key] == pytest.approx(features, rel=1e-9), key


@pytest.mark.parametrize(
    "change, words",
    [
        ({"windows": [{"name": "w", "size": "10x"}]}, "windows[0].size"),
        ({"windows": [{"name": "w", "size": "1m", "period": "2m"}]}, "period (120s) must not exceed size (60s)"),
        ({"windows": [{"name": "w", "size": 60}, {"name": "w", "size": 120}]}, "window names must be distinct"),
        ({"aggregations": [{"field": "amount", "aggregates": ["sum"], "windows": ["1y"]}]}, "unknown windows ['1y']"),
        ({"aggregations": [{"field": "amount", "aggregates": ["median"]}]}, "aggregations[0].aggregates[0]"),
        ({"aggregations": [{"field": "card_id", "aggregates": ["count"]}]}, "'card_id' is the entity or time field"),
        ({"entity": "card_id"}, "entity: Extra inputs are not permitted"),
    ],
)
def test_spec_errors_name_the_field(change, words, tmp_path):
    spec = {**SPEC.model_dump(exclude_none=True), **change}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError) as error:
        load_window_spec(path)
    assert str(path) in str(error.value) and words in str(error.value)


def test_sample_spec_durations_and_features():
    spec = load_window_spec(window_features.SAMPLE_SPEC)
    assert [(w.name, w.size, w.step) for w in spec.windows] == SAMPLE_WINDOWS
    assert [name for name, _, _ in spec.aggregations_in(spec.windows[1])] == [
        "amount_count_1h",
        "amount_sum_1h",
        "amount_mean_1h",
        "amount_min_1h",
        "amount_max_1h",
        "amount_last_1h",
        "merchant_distinct_count_1h",
    ]


@pytest.mark.parametrize(
    "value, unit, seconds",
    [
        ("2026-11-22T10:00:00Z", "s", T0),
        ("2026-11-22T11:00:00.5+01:00", "s", T0 + 0.5),
        ("2026-11-22T10:00:00", "s", T0),  # no offset: UTC
        (datetime.datetime(2026, 11, 22, 10, 0, tzinfo=datetime.UTC), "s", T0),
        (T0, "s", T0),
        (T0 * 1000 + 250, "ms", T0 + 0.25),
        (T0 * 1_000_000, "us", T0),
    ],
)
def test_event_times(value, unit, seconds):
    spec = SPEC.model_copy(update={"epoch_unit": unit})
    event = parse_event({"card_id": 7, "event_time": value, "amount": 1}, spec)
    assert event == Event("7", int(seconds * 1_000_000), {"amount": 1})  # exact: the floats above are


@pytest.mark.parametrize(
    "record, reason",
    [
        ('{"card_id": "c", "event_time": 1', "invalid_json"),
        ({"event_time": T0, "amount": 1}, "missing_entity"),
        ({"card_id": "", "event_time": T0}, "missing_entity"),
        ({"card_id": "c" * 4097, "event_time": T0}, "entity_too_long"),
        ({"card_id": "c", "amount": 1}, "missing_event_time"),
        ({"card_id": "c", "event_time": "last tuesday"}, "invalid_event_time"),
        ({"card_id": "c", "event_time": T0 * 1000 * 1000}, "invalid_event_time"),  # microseconds read as seconds
        ({"card_id": "c", "event_time": -5}, "invalid_event_time"),
        ({"card_id": "c", "event_time": float("nan")}, "missing_event_time"),
        ({"card_id": "c", "event_time": T0, "amount": "12"}, "wrong_type"),
        ({"card_id": "c", "event_time": T0, "amount": True}, "wrong_type"),
        ({"card_id": "c", "event_time": T0, "merchant": ["a", "b"]}, "wrong_type"),
    ],
)
def test_bad_events_are_record_errors(record, reason):
    with pytest.raises(RecordError) as error:
        parse_event(record, SPEC)
    assert error.value.reason == reason


def test_integer_amounts_near_the_float_limit_sum_to_infinity_not_an_error():
    """Two amounts just under 2**1023 each (valid, finite) sum past the largest float: the window's sum is
    inf (null in JSON) and the job goes on; as integers their sum would not convert to a float at all."""
    aggregates = Aggregates(SPEC)
    event = parse_event({"card_id": "c", "event_time": T0, "amount": 2**1023 - 1}, SPEC)
    assert event.values["amount"] == float(2**1023 - 1)
    [acc] = _buckets(SPEC, [event, event])["c"].values()
    assert aggregates.value(acc, "amount", "sum") == math.inf
    assert aggregates.value(acc, "amount", "max") == float(2**1023 - 1)


def test_accumulator_in_columns_merged_and_shuffled_against_the_standard_library():
    events = [
        Event("c", (T0 + i) * 10**6, {"amount": a, "merchant": m})
        for i, (a, m) in enumerate([(5.0, "x"), (1.5, "y"), (9.25, "x"), (2.0, "z"), (7.0, "y")])
    ]
    events.append(Event("c", (T0 + 10) * 10**6, {"merchant": "w"}))  # no amount
    events.append(Event("c", (T0 + 2) * 10**6, {"amount": 3.0}))  # out of order, same time as 9.25
    aggregates = Aggregates(SPEC)
    one = _buckets(SPEC, events)["c"][(60, T0)]  # the events reduced in columns, one batch
    parts = [_buckets(SPEC, events[i::3])["c"][(60, T0)] for i in range(3)]  # three batches, as Aggregates
    combine = WindowAggregatesFn(aggregates)  # merged, then merged with an empty accumulator
    merged = combine.merge_accumulators([parts[2], parts[0], combine.create_accumulator(), parts[1]])
    shuffled = _buckets(SPEC, events[::2], events[1::2])["c"][(60, T0)]  # two columnar partials merged
    amounts = [5.0, 1.5, 9.25, 2.0, 7.0, 3.0]
    expected = {
        ("amount", "count"): 6,
        ("amount", "sum"): sum(amounts),
        ("amount", "mean"): sum(amounts) / 6,
        ("amount", "min"): 1.5,
        ("amount", "max"): 9.25,
        ("amount", "last"): 7.0,  # latest time: T0 + 4
        ("merchant", "count"): 6,
        ("merchant", "distinct_count"): 4,
    }
    assert shuffled == one
    for acc in (one, merged):
        assert {k: aggregates.value(acc, *k) for k in expected} == pytest.approx(expected)
        assert acc[0] == (T0 + 10) * 10**6  # the latest event, which stamps a streaming partial
    empty = aggregates.empty()
    assert [aggregates.value(empty, "amount", a) for a in ("count", "sum", "mean", "last")] == [0, 0.0, None, None]
    assert aggregates.value(empty, "merchant", "distinct_count") == 0


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
_TIMES = st.one_of(
    st.integers(T0 - 300, T0 + 300),
    st.floats(T0 - 300, T0 + 300),
    st.integers(T0 - 300, T0 + 300).map(_iso),
    _FIELD_VALUES,
)
_RECORDS = st.fixed_dictionaries(
    {"card_id": st.one_of(st.sampled_from(["a", "b", 7]), _FIELD_VALUES), "event_time": _TIMES},
    optional={"amount": st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5), _FIELD_VALUES), "merchant": _FIELD_VALUES},
)
_RAW = st.one_of(
    _RECORDS,
    _RECORDS.map(json.dumps),
    _RECORDS.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=20),
    st.text(max_size=20),
)


def _merged_outputs(outputs, by_entity):
    """(merged aggregates {(entity, window, start): list}, dead letters without their time) of ParseEvents."""
    aggregates, merged, dead = Aggregates(SPEC), {}, []
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            dead.append({k: v for k, v in out.value.items() if k != "failed_at"})
            continue
        windows = {}
        if by_entity:
            shard, columns = out
            for entity, buckets in entity_buckets_of_shard((shard, [columns]), SPEC):
                assert isinstance(entity, str) and shard == zlib.crc32(entity.encode()) % ENTITY_SHARDS
                for name, starts, acc in WindowBuckets(SPEC, aggregates).windows(buckets):
                    for start in starts:
                        assert (entity, name, start) not in windows
                        windows[(entity, name, start)] = acc
        else:
            assert isinstance(out, TimestampedValue) and out.timestamp.micros == out.value[1][0]
            (entity, name, start), acc = out.value
            assert start <= out.timestamp.micros / 10**6 < start + {"1m": 60, "2m": 120}[name]
            windows[(entity, name, start)] = acc
        for key, acc in windows.items():
            merged[key] = aggregates.merge(merged.get(key, aggregates.empty()), acc)
    return merged, dead


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_RAW, max_size=12), st.booleans())
def test_a_batch_gives_what_its_records_give_one_by_one(records, by_entity):
    """Arbitrary records: the batch step never raises, gives every bad record its dead letter, and the
    aggregates of the good ones, merged, equal those of the records one at a time."""
    step = ParseEvents(SPEC, "window_features", by_entity)
    batch = _merged_outputs(step.process(list(records)), by_entity)
    one_by_one = _merged_outputs([out for r in records for out in GuardedDoFn.process(step, r)], by_entity)
    assert batch == one_by_one


def test_partials_of_an_entity_merge_per_window():
    aggregates = Aggregates(SPEC)
    step = ParseEvents(SPEC, "window_features", by_entity=True)
    first = list(step.handle({"card_id": "c", "event_time": T0 + 30, "amount": 2}))
    second = list(step.handle({"card_id": "c", "event_time": T0 + 90, "amount": 5}))
    assert len(first) == len(second) == 1 and first[0][0] == second[0][0]  # one shard, the entity's
    [(entity, buckets)] = entity_buckets_of_shard((first[0][0], [first[0][1], second[0][1]]), SPEC)
    assert entity == "c" and sorted(buckets) == [(60, T0), (60, T0 + 60)]  # whole minutes: a bucket a minute
    merged = {
        (name, start): acc for name, starts, acc in WindowBuckets(SPEC, aggregates).windows(buckets) for start in starts
    }
    # 1m: [T0, T0+60) and [T0+60, T0+120); 2m every 1m: [T0-60, T0+60), [T0, T0+120), [T0+60, T0+180)
    assert sorted(merged) == [("1m", T0), ("1m", T0 + 60), ("2m", T0 - 60), ("2m", T0), ("2m", T0 + 60)]
    assert aggregates.value(merged[("2m", T0)], "amount", "sum") == 7.0
    assert aggregates.value(merged[("2m", T0)], "amount", "last") == 5.0
    assert aggregates.value(merged[("1m", T0 + 60)], "amount", "count") == 1


_BUCKET_WINDOWS = [("1m", 60, 60), ("150s", 150, 60), ("10m", 600, 60), ("1h", 3600, 3600), ("5m", 300, 120)]
_BUCKET_SPEC = WindowFeatureSpec.model_validate(
    {
        "entity_field": "card_id",
        "time_field": "event_time",
        "windows": [{"name": n, "size": size, "period": step} for n, size, step in _BUCKET_WINDOWS],
        "aggregations": SPEC.model_dump()["aggregations"],
    }
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([f"card-{i}" for i in range(40)]),  # spread over many of the 256 shards
            st.integers(-4_000_000, 4_000_000),  # milliseconds from T0
            st.one_of(st.none(), st.integers(-50, 50).map(float)),
            st.one_of(st.none(), st.sampled_from("xyz")),
        ),
        max_size=40,
    ),
    st.integers(1, 4),
)
def test_windows_from_buckets_are_the_windows_of_each_event(events, parts):
    """Events of many entities reduced into buckets (in `parts` batches, cut per entity shard and merged as
    after the shuffle) give exactly the windows and values of the oracle, which adds each event to every
    window holding it; the windows include sliding ones whose size is no multiple of their period (buckets
    of gcd(size, period))."""
    aggregates, windowing = Aggregates(_BUCKET_SPEC), WindowBuckets(_BUCKET_SPEC, Aggregates(_BUCKET_SPEC))
    batches = [[] for _ in range(parts)]
    for i, (entity, ms, amount, merchant) in enumerate(events):
        values = {k: v for k, v in (("amount", amount), ("merchant", merchant)) if v is not None}
        batches[i % parts].append(Event(entity, (T0 * 1000 + ms) * 1000, values))
    actual = {}
    for entity, buckets in _buckets(_BUCKET_SPEC, *batches).items():
        for name, starts, acc in windowing.windows(buckets):
            size = dict((n, s) for n, s, _ in _BUCKET_WINDOWS)[name]
            for start in starts:
                assert (entity, name, start + size) not in actual
                actual[(entity, name, start + size)] = {
                    feature: aggregates.value(acc, field, agg)
                    for feature, field, agg in _BUCKET_SPEC.aggregations_in(
                        next(w for w in _BUCKET_SPEC.windows if w.name == name)
                    )
                }
    expected = {}  # each event added to every window holding it (EventWindow.starts), values as the oracle's
    for w in _BUCKET_SPEC.windows:
        groups = {}
        for entity, ms, amount, merchant in events:
            for start in w.starts(T0 + ms / 1000):
                groups.setdefault((entity, start), []).append((T0 * 1000 + ms, amount, merchant))
        for (entity, start), members in groups.items():
            amounts = sorted((t, a) for t, a, _ in members if a is not None)
            values = [a for _, a in amounts]
            expected[(entity, w.name, start + w.size)] = {
                f"amount_count_{w.name}": len(values),
                f"amount_sum_{w.name}": math.fsum(values),
                f"amount_mean_{w.name}": statistics.fmean(values) if values else None,
                f"amount_min_{w.name}": min(values, default=None),
                f"amount_max_{w.name}": max(values, default=None),
                f"amount_last_{w.name}": amounts[-1][1] if amounts else None,
                f"merchant_distinct_count_{w.name}": len({m for _, _, m in members if m is not None}),
            }
    assert_same_features(actual, expected)


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=8),  # quotes, backslashes, '%' and any Unicode included
    st.lists(
        st.tuples(
            st.integers(-4_000_000, 4_000_000),
            st.one_of(st.none(), st.floats(-1.7e308, 1.7e308)),  # parse_event gives floats
            st.one_of(st.none(), st.text(max_size=3)),
        ),
        max_size=12,
    ),
)
@example("\x85\u2028", [(0, None, None)])  # line separators to str.splitlines, not to JSON lines
def test_backfill_json_lines_are_the_json_of_the_rows(entity, events):
    """FormatFeatureRows' JSON lines (a backfill writing files only) are what to_json_lines gives for its
    rows, byte for byte: sums that overflow to infinity (null) and any entity text included."""
    aggregates = Aggregates(_BUCKET_SPEC)
    events = [
        Event(entity, (T0 * 1000 + ms) * 1000, {k: v for k, v in (("amount", a), ("merchant", m)) if v is not None})
        for ms, a, m in events
    ]
    buckets = _buckets(_BUCKET_SPEC, events).get(entity, {})
    outputs = []
    for json_lines in (False, True):
        fn = FormatFeatureRows(_BUCKET_SPEC, True, "window_features", json_lines)
        fn.setup()
        fn.start_bundle()
        fn._emitted_at = "2026-12-03T10:00:00+00:00"
        [out] = fn.process((entity, {k: aggregates.copy(v) for k, v in buckets.items()}))
        outputs.append(out)
    rows, text = outputs
    # one line per row, lines cut at "\n" only, as JSON-lines readers do: an entity's U+0085 or U+2028 stays
    # inside its line (str.splitlines would cut there)
    lines = text.split("\n") if text else []
    assert text == to_json_lines(rows) and len(rows) == len(lines) >= (1 if events else 0)


def test_late_events_update_their_windows_and_too_late_ones_are_dropped():
    def event(t, amount, merchant):  # a batch of one record
        return TimestampedValue([{"card_id": "c", "event_time": t, "amount": amount, "merchant": merchant}], t)

    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([event(T0 + 10, 4.0, "a"), event(T0 + 50, 6.0, "b")])
        .advance_watermark_to(T0 + 60)  # [T0, T0+60) of 1m and [T0-60, T0+60) of 2m fire
        .add_elements([event(T0 + 30, 20.0, "a")])  # late, within 90 s: both windows updated
        .advance_watermark_to(T0 + 60 + 91)  # 1m window [T0, T0+60) expires
        .add_elements([event(T0 + 59, 1.0, "c")])  # too late for [T0, T0+60), in time for [T0, T0+120)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(runner="BundleBasedDirectRunner", streaming=True)
    with beam.Pipeline(options=options) as p:
        features = p | stream | ComputeWindowFeatures(SPEC, "window_features", allowed_lateness_seconds=90)
        rows = features.row_batches | beam.FlatMap(lambda batch: batch)
        projected = rows | beam.Map(
            lambda r: (
                r["window"],
                r["time_index"],
                r["pane_timing"],
                r["pane_index"],
                *(f["value"] for f in r["features"]),
            )
        )
        assert_that(
            projected,
            equal_to(
                [
                    ("1m", _iso(T0 + 60), "ON_TIME", 0, 2, 10.0, 5.0, 4.0, 6.0, 6.0, 2),
                    ("2m", _iso(T0 + 60), "ON_TIME", 0, 2, 10.0, 5.0, 4.0, 6.0, 6.0, 2),
                    ("1m", _iso(T0 + 60), "LATE", 1, 3, 30.0, 10.0, 4.0, 20.0, 6.0, 2),
                    ("2m", _iso(T0 + 60), "LATE", 1, 3, 30.0, 10.0, 4.0, 20.0, 6.0, 2),
                    # [T0, T0+120) fires when the watermark passes T0+120, with the three events so far; the one at
                    # T0+59 is late for it but within 90 s: a LATE pane, where it is also the last by event time
                    ("2m", _iso(T0 + 120), "ON_TIME", 0, 3, 30.0, 10.0, 4.0, 20.0, 6.0, 2),
                    ("2m", _iso(T0 + 120), "LATE", 1, 4, 31.0, 7.75, 1.0, 20.0, 1.0, 3),
                ]
            ),
        )


def _run(output, project, *flags):
    result = window_features.run(["--output_dir", str(output), "--progress", "off", "--project", project, *flags])
    rows = [json.loads(line) for path in output.glob("feature_rows*.jsonl") for line in path.read_text().splitlines()]
    return result, rows


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, services, project):
    """The bundled sample into local files and the Bigtable online store (its 25,000 rows are not also
    streamed into BigQuery: Beam sizes each streamed row with objsize, milliseconds a row in a process that
    has imported TensorFlow; the offline store gets its own smaller run below)."""
    flags = ["--bigtable_instance", "features", "--bigtable_table", "sample_online", "--feature_ttl_hours", "36"]
    return _run(tmp_path_factory.mktemp("window_features"), project, *flags)


def test_sample_rows_match_the_oracle_and_counts_reconcile(sample_run):
    result, rows = sample_run
    counts = metric_counts(result, "window_features")
    events = valid_events(SAMPLE_LINES)
    assert counts["records_in"] == len(SAMPLE_LINES) == counts["events"] + counts["dead_letters"]
    assert counts["events"] == len(events) and counts["dead_letters"] == 4
    expected = expected_features(events, SAMPLE_WINDOWS)
    assert_same_features(row_values(rows), expected)
    assert counts["feature_rows"] == len(rows) == len(expected)
    for row in rows:
        step = dict((n, s) for n, _, s in SAMPLE_WINDOWS)[row["window"]]
        end = datetime.datetime.fromisoformat(row["time_index"])
        assert datetime.datetime.fromisoformat(row["valid_until"]) - end == datetime.timedelta(seconds=step)


def test_online_store_lookup_is_point_in_time(sample_run, project):
    expected = expected_features(valid_events(SAMPLE_LINES), SAMPLE_WINDOWS)
    spec = load_window_spec(window_features.SAMPLE_SPEC)
    table = bigtable.Client(project=project, admin=True).instance("features").table("sample_online")
    family = table.list_column_families()["features"]
    assert family.gc_rule.max_age == datetime.timedelta(hours=36)
    burst = datetime.datetime(2026, 11, 24, 14, 10, 30, tzinfo=datetime.UTC)  # c-007's burst
    for as_of in (
        burst,
        burst + datetime.timedelta(minutes=40),
        datetime.datetime(2026, 11, 25, 0, 0, 1, tzinfo=datetime.UTC),
    ):
        got = lookup_features(table, "c-007", spec, as_of=as_of)
        for name, _size, step in SAMPLE_WINDOWS:
            end = as_of.timestamp() // step * step  # the latest window ended at or before as_of
            current = expected.get(("c-007", name, end))
            empty = {f"amount_count_{name}": 0, f"amount_sum_{name}": 0.0, f"merchant_distinct_count_{name}": 0}
            for feature in current or empty:
                want = current[feature] if current else empty[feature]
                assert got[feature] == pytest.approx(want), (as_of, feature)
    assert lookup_features(table, "c-never", spec)["amount_count_1h"] == 0


def _card(line):
    try:
        return json.loads(line).get("card_id")
    except (ValueError, AttributeError):
        return None


def test_offline_store_point_in_time_join(services, project, tmp_path, capsys):
    """The BigQuery offline store written by the pipeline (the sample's events of the two cards labelled
    below, malformed lines included), and the generated join (python -m sql.window_features_join) on the
    BigQuery emulator: each label row gets, per feature, the value of the latest window that ended at or
    before its time and is still current."""
    lines = [line for line in SAMPLE_LINES if _card(line) in ("c-007", "c-001") or _card(line) is None]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    client = bq_client(services, project)
    client.create_dataset("features", exists_ok=True)
    result, rows = _run(
        tmp_path / "out", project, "--input_files", str(events), "--output_table", f"{project}:features.sample_windows"
    )
    assert metric_counts(result, "window_features")["feature_rows"] == len(rows)
    (stored,) = client.query("SELECT COUNT(*) AS n FROM features.sample_windows").result()
    assert stored["n"] == len(rows)
    capsys.readouterr()  # the run's report; the join's SQL is printed next
    labels = [
        ("c-007", "2026-11-24T14:10:30+00:00"),
        ("c-007", "2026-11-24T14:50:00+00:00"),
        ("c-001", "2026-11-24T09:00:00+00:00"),
    ]
    client.query("CREATE OR REPLACE TABLE features.labels (entity STRING, label_time TIMESTAMP, label INT64)").result()
    client.insert_rows_json(
        "features.labels", [{"entity": e, "label_time": t, "label": 1} for e, t in labels], retry=None
    )
    window_features_join.main(
        ["--features_table", f"{project}:features.sample_windows", "--labels_table", "features.labels"]
    )
    sql = capsys.readouterr().out
    got = {(r["entity"], r["label_time"].isoformat()): r for r in client.query(sql).result()}
    expected = expected_features(valid_events(lines), SAMPLE_WINDOWS)
    for entity, label_time in labels:
        t = datetime.datetime.fromisoformat(label_time).timestamp()
        row = got[(entity, label_time)]
        for name, _, step in SAMPLE_WINDOWS:
            current = expected.get((entity, name, t // step * step), {})
            assert row[f"amount_count_{name}"] == current.get(f"amount_count_{name}", 0)
            assert row[f"amount_sum_{name}"] == pytest.approx(current.get(f"amount_sum_{name}", 0.0))
            assert row[f"amount_max_{name}"] == pytest.approx(current.get(f"amount_max_{name}"))


def test_join_sql_file_is_the_generated_one_for_the_sample_spec(capsys):
    window_features_join.main([])
    assert capsys.readouterr().out == (ROOT / "sql" / "window_features_point_in_time_join.sql").read_text()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--labels_table", "labels"], "--labels_table: 'labels' is not a table"),
        (
            ["--features_table", "p:d.t` UNION ALL SELECT 1 --"],
            "--features_table: 'p:d.t` UNION ALL SELECT 1 --' is not",
        ),
        (["--labels_table", "my-project:ml.labels\nDROP"], "--labels_table: 'my-project:ml.labels\\nDROP' is not"),
        (["--window_spec", "no-such-spec.yaml"], "--window_spec: cannot read no-such-spec.yaml"),
    ],
)
def test_join_sql_errors_name_the_flag(argv, words):
    with pytest.raises(SystemExit) as failed:
        window_features_join.main(argv)
    assert words in str(failed.value)


def test_join_sql_rejects_features_that_are_not_column_names(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "entity_field: e\ntime_field: t\nwindows: [{name: 1h, size: 1h}]\n"
        "aggregations: [{field: merchant-id, aggregates: [count]}]\n"
    )
    with pytest.raises(SystemExit) as failed:
        window_features_join.main(["--window_spec", str(spec)])
    assert "['merchant-id_count_1h'] are not BigQuery column names" in str(failed.value)


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        window_features.run(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--window_spec",
        "--feature_ttl_hours",
        "--allowed_lateness_seconds",
        "--input_subscription",
        "--input_topic",
        "--input_files",
        "--input_table",
        "--input_query",
        "--input_format",
        "--output_table",
        "--bigtable_instance",
        "--bigtable_table",
        "--udf_path",
        "--output_dir",
        "--dead_letter_table",
        "--dead_letter_topic",
        "--runner",
        "--project",
    ):
        assert flag in text, flag


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--input_files", "a.jsonl", "--input_subscription", "projects/p/subscriptions/s"],
            "--input_files and --input_subscription",
        ),
        (["--feature_ttl_hours", "0"], "--feature_ttl_hours must be positive"),
        (["--allowed_lateness_seconds", "-1"], "--allowed_lateness_seconds must be >= 0"),
        (["--bigtable_instance", "i"], "--bigtable_instance and --bigtable_table"),
        (["--output_table", "p:d.t"], "dead letters need a destination"),
        (["--window_spec", "/no/such.yaml"], "--window_spec: cannot read /no/such.yaml"),
    ],
)
def test_bad_flags_fail_naming_the_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as done:
        window_features.run(argv)
    assert words in str(done.value.code) + capsys.readouterr().err
