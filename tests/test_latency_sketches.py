"""Latency sketches in SLI rows: the text form round-trips, merging parsed parts gives the sketch of the
whole, counts over a threshold are within the documented band, and the replay step that counts a new
threshold from them (`LatencyFromSketches`) takes any rows without stopping."""

import base64
import math

import pytest
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.io.deadletter import RecordError
from transforms.sli.stats import LATENCY_RELATIVE_ACCURACY, count_above, sketch_from_text, sketch_to_text
from transforms.slo.replay import LatencyFromSketches, parse_sli_row

ALPHA = LATENCY_RELATIVE_ACCURACY
latencies = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=1e7, allow_nan=False),
        st.floats(min_value=0, max_value=1e-300),  # the zero bin and tiny values
        st.sampled_from([0.0, 1.0, 99.0, 100.0, 100.5, 101.0, 500.0]),
    ),
    max_size=300,
)
thresholds = st.floats(min_value=1e-3, max_value=1e6)


def sketch_of(values):
    sketch = DDSketch(relative_accuracy=ALPHA)  # as JourneyWindowStats makes it
    for v in values:
        sketch.add(v)
    return sketch


def bounds(values, threshold):
    """Requests surely over the threshold (latency over T/(1-a)) and possibly over it (over T/(1+a)), with
    a hair of float slack on each side."""
    surely = sum(v > threshold / (1 - ALPHA) * (1 + 1e-12) for v in values)
    possibly = sum(v > threshold / (1 + ALPHA) * (1 - 1e-12) for v in values)
    return surely, possibly


@settings(max_examples=60, deadline=None)
@given(latencies)
def test_text_round_trip(values):
    sketch = sketch_of(values)
    text = sketch_to_text(sketch)
    parsed = sketch_from_text(text)
    assert sketch_to_text(parsed) == text
    assert parsed.count == len(values)
    for q in (0.0, 0.5, 0.99, 1.0):
        assert parsed.get_quantile_value(q) == sketch.get_quantile_value(q)


@settings(max_examples=150, deadline=None)
@given(latencies, st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_merging_parsed_parts_gives_the_sketch_of_the_whole(values, cuts):
    edges = [0, *sorted(c for c in cuts if c <= len(values)), len(values)]
    parts = [sketch_to_text(sketch_of(values[a:b])) for a, b in zip(edges, edges[1:], strict=False)]
    merged = sketch_from_text(parts[-1])
    for text in parts[:-1]:
        merged.merge(sketch_from_text(text))
    assert sketch_to_text(merged) == sketch_to_text(sketch_of(values))


@settings(max_examples=200, deadline=None)
@given(latencies, thresholds)
def test_count_above_is_exact_outside_one_percent_of_the_threshold(values, threshold):
    got = count_above(sketch_from_text(sketch_to_text(sketch_of(values))), threshold)
    surely, possibly = bounds(values, threshold)
    assert surely <= got <= possibly
    if surely == possibly:  # no latency within 1% of the threshold
        assert got == sum(v > threshold for v in values)


def test_count_above_by_hand():
    # 1% bins: 99 and 101 lie 1% or more from 100; 100.5 is within it
    values = [0.0, 50.0, 99.0, 101.0, 250.0]
    assert count_above(sketch_of(values), 100.0) == 2
    assert count_above(sketch_of([]), 100.0) == 0
    assert count_above(sketch_of([0.0] * 5), 1e-3) == 0


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())))
def test_any_text_parses_or_is_a_value_error(text):
    try:
        sketch = sketch_from_text(text)
    except ValueError:
        return
    assert sketch_from_text(sketch_to_text(sketch)).count == sketch.count


def _row(sli_id, values, pane=0, sketch=True, **extra):
    return {
        "sli_id": sli_id,
        "sli_kind": "latency",
        "window_start": "2026-11-22T10:00:00+00:00",
        "window_seconds": 60,
        "good": len(values),
        "total": len(values),
        "pane_index": pane,
        **({"latency_sketch": sketch_to_text(sketch_of(values))} if sketch else {}),
        **extra,
    }


SLIS = {("web", "all"): (("web/all/latency_100ms", 100.0), ("web/all/latency_300ms", 300.0))}


@settings(max_examples=100, deadline=None)
@given(st.lists(latencies.filter(bool), min_size=1, max_size=3), st.booleans())
def test_latency_from_sketches_counts_the_missing_thresholds_from_the_latest_pane(panes, has_100):
    """Panes of one minute (each accumulating); the 300 ms SLI is never in the rows, the 100 ms one maybe."""
    rows = [
        parse_sli_row(_row("web/all/availability" if not has_100 else "web/all/latency_100ms", v, pane=i))
        for i, v in enumerate(panes)
    ]
    step = LatencyFromSketches("test", "c", SLIS)
    outputs = list(step.process((("web", "all", rows[0]["window_start"]), rows)))
    main = [o for o in outputs if not hasattr(o, "tag")]
    tagged = {o.tag for o in outputs if hasattr(o, "tag")}
    assert tagged == {"sketched"}
    missing = [("web/all/latency_300ms", 300.0)] + ([] if has_100 else [("web/all/latency_100ms", 100.0)])
    assert sorted(r["sli_id"] for r in main) == sorted(s for s, _ in missing)
    latest = panes[-1]
    for row in main:
        threshold = dict(missing)[row["sli_id"]]
        surely, possibly = bounds(latest, threshold)
        assert row["total"] == len(latest) and row["pane_index"] == len(panes) - 1
        assert surely <= row["total"] - row["good"] <= possibly


def test_rows_without_sketches_cannot_give_a_new_threshold():
    rows = [parse_sli_row(_row("web/all/latency_100ms", [5.0, 500.0], sketch=False))]
    (dead,) = LatencyFromSketches("test", "c", SLIS).process((("web", "all", rows[0]["window_start"]), rows))
    letter = dead.value
    assert dead.tag == "dead_letters" and letter["step"] == "LatencyFromSketches[c]"
    assert letter["reason"] == "missing_field"
    assert (
        "field 'latency_sketch' is missing" in letter["error_message"]
        and "web/all/latency_300ms" in letter["error_message"]
    )
    assert "run pipelines.sli again" in letter["error_message"]


@pytest.mark.parametrize(
    "sketch, reason, words",
    [
        ("not base64!", "bad_field", "not base64"),
        (sketch_to_text(sketch_of([1.0, 2.0])), "bad_field", "holds 2 requests, the row's total is 3"),
        (12, "wrong_type", "latency_sketch"),
        ("AgAA", "bad_field", "not a version 1"),
    ],
)
def test_bad_sketches_are_rejected_with_a_reason(sketch, reason, words):
    row = {**_row("web/all/latency_100ms", [1.0, 2.0, 3.0], sketch=False), "latency_sketch": sketch}
    with pytest.raises(RecordError) as e:
        parse_sli_row(row)
    assert e.value.reason == reason and words in str(e.value)


def test_sketch_text_is_a_quarter_of_ddsketchs_protobuf_form():
    # a minute of 10,000 requests spread over 1 ms - 10 s: about 460 bins of 1%
    sketch = sketch_of(math.exp(i / 10_000 * math.log(10_000)) for i in range(10_000))
    text = sketch_to_text(sketch)
    assert len(base64.b64decode(text)) * 4 < len(DDSketchProto.to_proto(sketch).SerializeToString())
