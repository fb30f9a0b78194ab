"""The SLI batch step against the per-event path it replaces in pipelines.sli: the same dead letters, and
partials that merge into the same statistics per journey window; the vectorized sketch against DDSketch's
own add, bin for bin."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipelines import sli
from tests.oracle import sample_truth
from transforms.core.records import event_micros, event_time
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedDoFn, RecordError
from transforms.sli.batch import AggregateLogBatches
from transforms.sli.config import load_sli_config
from transforms.sli.parsing import ParseLogRecords
from transforms.sli.rows import JourneyWindowStatsFn, MatchJourneys
from transforms.sli.stats import JourneyWindowStats, sketch_to_text

CONFIG = load_sli_config(sli.SAMPLE_CONFIG)


def _ready(dofn):
    dofn.setup()
    return dofn


BATCH = _ready(AggregateLogBatches(CONFIG, 60, "sli"))
PARSE = _ready(ParseLogRecords(CONFIG.formats, "sli"))
MATCH = _ready(MatchJourneys(CONFIG, 60, "sli"))


def _per_event(records):
    """The per-event path: ParseLogRecords, MatchJourneys, JourneyWindowStatsFn -> ({key: stats}, dead letters)."""
    combine, stats, dead = JourneyWindowStatsFn(), {}, []
    for record in records:
        for out in PARSE.process(record):
            if getattr(out, "tag", None) == DEAD_LETTER_TAG:
                dead.append(out.value)
                continue
            for key, value in MATCH.process(out.value):
                stats[key] = combine.add_input(stats.get(key) or combine.create_accumulator(), value)
    return stats, dead


def _batched(batches):
    """AggregateLogBatches over the batches, partials merged per key -> ({key: stats}, dead letters,
    output timestamps by key)."""
    return _merged(out for batch in batches for out in BATCH.process(batch))


def _merged(outputs):
    stats, dead, times = {}, [], {}
    for out in outputs:
        if getattr(out, "tag", None) == DEAD_LETTER_TAG:
            dead.append(out.value)
            continue
        key, partial = out.value
        stats[key] = stats.get(key, JourneyWindowStats()).merge(partial)
        times.setdefault(key, set()).add(out.timestamp.micros)
    return stats, dead, times


def _summary(stats):
    return (stats.count, stats.bad, stats.latency_max_ms, sketch_to_text(stats.sketch))


def _letters(dead):
    # repr: a letter's payload is text or base64, the other None, and None does not order against text
    return sorted(((d["reason"], d["error_message"], d["payload_string"], d["payload_bytes"]) for d in dead), key=repr)


def test_sample_in_batches_equals_the_per_event_path():
    lines, _ = sample_truth()
    records = [line.encode() for line in lines[:6000]]
    expected, expected_dead = _per_event(records)
    actual, dead, times = _batched([records[i : i + 700] for i in range(0, len(records), 700)])
    assert {k: _summary(s) for k, s in actual.items()} == {k: _summary(s) for k, s in expected.items()}
    for key, stats in actual.items():
        assert abs(stats.latency_sum_ms - expected[key].latency_sum_ms) <= 1e-9 * expected[key].latency_sum_ms
        assert times[key] == {key[2] * 1_000_000}  # timestamped at the window start: in its window
    assert _letters(dead) == _letters(expected_dead) and len(dead) == 1  # one malformed line in 6,000
    assert {d["step"] for d in dead} == {"ParseLogRecords"}


_RECORDS = st.one_of(
    st.sampled_from([line.encode() for line in sample_truth()[0][:200]]),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.dictionaries(st.sampled_from(["time", "method", "uri", "status", "request_time"]), st.integers()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_RECORDS, max_size=30))
@example([b"\x00", b"\x01"])  # two dead letters of one reason, one payload as text and one as base64
def test_any_batch_gives_what_its_records_give_one_by_one(records):
    expected, expected_dead = _per_event(records)
    actual, dead, _ = _batched([records])
    assert {k: _summary(s) for k, s in actual.items()} == {k: _summary(s) for k, s in expected.items()}
    assert _letters(dead) == _letters(expected_dead)
    # what the batch boundary falls back to when a batch raises: `handle` per record under the guard
    fallback, fallback_dead, _ = _merged(out for record in records for out in GuardedDoFn.process(BATCH, record))
    assert {k: _summary(s) for k, s in fallback.items()} == {k: _summary(s) for k, s in expected.items()}
    assert _letters(fallback_dead) == _letters(expected_dead)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1e12, allow_nan=False),
            st.sampled_from([0.0, 5e-324, 1.0, 2.0, 1.0202**7, 100.0]),
        ),
        min_size=1,
        max_size=300,
    ),
    st.integers(min_value=1, max_value=5),
)
def test_add_batch_fills_the_sketch_exactly_as_add(latencies, parts):
    one_by_one = JourneyWindowStats()
    for latency in latencies:
        one_by_one.add(latency, (latency > 100,))
    batched = JourneyWindowStats()
    for part in np.array_split(np.array(latencies), parts):
        if len(part):
            batched.add_batch(part, [int(np.count_nonzero(part > 100))])
    a, b = one_by_one.sketch, batched.sketch
    assert sketch_to_text(a) == sketch_to_text(b)
    assert (a.count, a._zero_count, a._min, a._max) == (b.count, b._zero_count, b._min, b._max)
    assert [a.get_quantile_value(q) for q in np.linspace(0, 1, 21)] == [
        b.get_quantile_value(q) for q in np.linspace(0, 1, 21)
    ]
    assert (one_by_one.count, one_by_one.bad, one_by_one.latency_max_ms) == (
        batched.count,
        batched.bad,
        batched.latency_max_ms,
    )


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2, 31, -31])
@pytest.mark.parametrize("bound", [0, 221845392000 * 1_000_000, 221845392000 * 1_000_000 + 30])
def test_event_micros_accepts_exactly_what_event_time_accepts(bound, offset):
    micros = bound + offset
    try:
        event_time(micros, "t")
        accepted = True
    except RecordError:
        accepted = False
    if accepted:
        assert event_micros(micros, "t") == micros
    else:
        with pytest.raises(RecordError, match="outside 1970-9000"):
            event_micros(micros, "t")
