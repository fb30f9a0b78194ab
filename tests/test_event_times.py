"""Event times keep full precision: nanosecond RFC 3339 text, log4j2 `instant {epochSecond, nanoOfSecond}` and
epoch numbers are truncated to Beam's microsecond in integer arithmetic, so the last nanosecond before a window
boundary stays in its window, in the SLI parser (whose window keys MatchJourneys computes from the event's
seconds) and in window features (ParseEvents), and the element's Beam timestamp is that microsecond."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import window_features
from pipelines.samples import SLI_DIR
from transforms.core.records import MAX_EVENT_SECONDS, event_timestamp
from transforms.sli.config import load_sli_config
from transforms.sli.parsing import ParseLogRecords, parse_log_record
from transforms.sli.rows import MatchJourneys
from transforms.window_features.aggregate import ParseEvents, event_seconds
from transforms.window_features.spec import load_window_spec

CONFIG = load_sli_config(SLI_DIR / "profile_service.yaml")
WINDOW_SPEC = load_window_spec(window_features.SAMPLE_SPEC)  # 10m every 1m, 1h, 1d
MINUTE_0 = 1795341600  # 2026-11-22T10:00:00Z
FUZZ = settings(max_examples=150, deadline=None)


def _app_log(time_fields):
    return {
        **time_fields,
        "level": "INFO",
        "loggerName": "web.Access",
        "contextMap": {"http.method": "GET", "http.path": "/login", "http.status": 200, "http.latency_ms": 5},
    }


def _sli_window_and_micros(record, window_seconds=60):
    """(window start MatchJourneys keys the event by, the micros of its Beam timestamp)."""
    [out] = ParseLogRecords(CONFIG.formats, "sli").process(record)
    match = MatchJourneys(CONFIG, window_seconds, "sli")
    match.setup()
    [((_, _, window_start), _)] = match.process(out.value)
    return window_start, out.timestamp.micros


@pytest.mark.parametrize(
    "time_fields, window_start, micros",
    [
        ({"instant": {"epochSecond": MINUTE_0 + 59, "nanoOfSecond": 999_999_999}}, MINUTE_0, 59_999_999),
        ({"instant": {"epochSecond": MINUTE_0 + 60, "nanoOfSecond": 0}}, MINUTE_0 + 60, 60_000_000),
        ({"instant": {"epochSecond": MINUTE_0 + 59, "nanoOfSecond": 999_999}}, MINUTE_0, 59_000_999),
        ({"@timestamp": "2026-11-22T10:00:59.999999999Z"}, MINUTE_0, 59_999_999),
        ({"@timestamp": "2026-11-22T10:01:00.000000000Z"}, MINUTE_0 + 60, 60_000_000),
        ({"@timestamp": "2026-11-22T11:00:59.999999999+01:00"}, MINUTE_0, 59_999_999),
        ({"timeMillis": (MINUTE_0 + 59) * 1000 + 999}, MINUTE_0, 59_999_000),
        ({"timeMillis": (MINUTE_0 + 60) * 1000}, MINUTE_0 + 60, 60_000_000),
    ],
)
def test_sli_event_in_the_last_nanosecond_before_a_boundary_stays_in_its_minute(time_fields, window_start, micros):
    assert _sli_window_and_micros(_app_log(time_fields)) == (window_start, MINUTE_0 * 1_000_000 + micros)


def test_cloud_logging_nanosecond_timestamp_at_the_end_of_an_hour():
    entry = {
        "timestamp": "2026-11-22T10:59:59.999999999Z",
        "httpRequest": {"requestMethod": "GET", "requestUrl": "/login", "status": 200, "latency": "0.1s"},
    }
    assert _sli_window_and_micros(entry, 3600) == (MINUTE_0, (MINUTE_0 + 3600) * 1_000_000 - 1)


@pytest.mark.parametrize(
    "value, unit, micros",
    [
        ("2026-11-22T10:00:59.999999999Z", "s", 59_999_999),
        ("2026-11-22T10:01:00Z", "s", 60_000_000),
        ((MINUTE_0 + 59) * 1_000_000 + 999_999, "us", 59_999_999),
        ((MINUTE_0 + 59) * 1000 + 999, "ms", 59_999_000),
        (MINUTE_0 + 59.999999, "s", 59_999_999),
    ],
)
def test_window_features_event_before_a_boundary_stays_in_its_windows(value, unit, micros):
    spec = WINDOW_SPEC.model_copy(update={"epoch_unit": unit})
    record = {"card_id": "c1", "event_time": value, "amount": 1.0}
    outs = list(ParseEvents(spec, "window_features", by_entity=False).handle(record))  # the streaming form
    assert {out.timestamp.micros for out in outs} == {MINUTE_0 * 1_000_000 + micros}
    starts = {(name, start) for out in outs for (_, name, start), _ in [out.value]}
    minute = MINUTE_0 + micros // 60_000_000 * 60  # the minute holding the event
    expected = {("10m", minute - 60 * k) for k in range(10)} | {("1h", MINUTE_0)} | {("1d", MINUTE_0 - 36000)}
    assert starts == expected


def _oracle_start(nanos, size):
    return nanos // (size * 10**9) * size


@FUZZ
@given(
    seconds=st.integers(0, int(MAX_EVENT_SECONDS) - 1),
    nanos=st.integers(0, 10**9 - 1) | st.sampled_from([0, 999_999_999, 999_999, 1000]),
    size=st.sampled_from([1, 60, 3600, 86400]),
    form=st.sampled_from(["instant", "rfc3339"]),
)
def test_window_assignment_equals_an_integer_oracle(seconds, nanos, size, form):
    """The window start of any event time, in either form, is the integer-arithmetic one; the Beam timestamp is
    the microsecond (exact up to 2**33 s, the year 2242, where floats get coarser than 1 us; never later after it)."""
    if form == "instant":
        time_fields = {"instant": {"epochSecond": seconds, "nanoOfSecond": nanos}}
    else:
        time_fields = {"@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"}
    event = parse_log_record(_app_log(time_fields), CONFIG.formats)
    total_nanos = seconds * 10**9 + nanos
    assert int(event.timestamp // size) * size == _oracle_start(total_nanos, size)
    micros = event_timestamp(event.timestamp).micros
    assert micros // (size * 1_000_000) * size == _oracle_start(total_nanos, size)
    if seconds < 2**33:
        assert micros == total_nanos // 1000
    else:
        assert micros <= total_nanos // 1000


@FUZZ
@given(micros=st.integers(0, int(MAX_EVENT_SECONDS) * 10**6), unit=st.sampled_from(["us", "ms", "s"]))
def test_window_features_starts_equal_an_integer_oracle(micros, unit):
    per_second = {"us": 10**6, "ms": 10**3, "s": 1}[unit]
    value = micros * per_second // 10**6
    exact = value * 10**6 // per_second  # the event time in micros the value stands for
    seconds = event_seconds(value, unit)
    for w in WINDOW_SPEC.windows:
        last = exact // (w.step * 10**6) * w.step
        expected = [s for s in range(last - w.size, last + 1, w.step) if s * 10**6 <= exact < (s + w.size) * 10**6]
        assert sorted(w.starts(seconds)) == expected
