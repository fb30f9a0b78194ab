import datetime
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.samples import SLI_DIR
from pipelines.samples.request_logs import MALFORMED
from transforms.core.records import MAX_EVENT_MICROS, datetime_micros, event_micros
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.sli.config import Formats, load_sli_config
from transforms.sli.parsing import (
    ParseLogRecords,
    _event_micros,
    _timestamp_micros,
    _utc_rfc3339_micros,
    parse_log_record,
)

FORMATS = load_sli_config(SLI_DIR / "profile_service.yaml").formats

# 2026-11-22T10:00:00Z
T0 = 1795341600.0


def test_cloud_logging_entry():
    entry = {
        "timestamp": "2026-11-22T10:00:00.123456789Z",
        "httpRequest": {
            "requestMethod": "get",
            "requestUrl": "https://profile.example.com/profile/al?x=1",
            "status": 503,
            "latency": "0.231s",
        },
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": "profile-web"}},
    }
    e = parse_log_record(json.dumps(entry).encode(), FORMATS)
    assert (e.service, e.host, e.method, e.path, e.status, e.log_format) == (
        "profile-web",
        "profile.example.com",
        "GET",
        "/profile/al",
        503,
        "cloud_logging",
    )
    assert e.latency_ms == pytest.approx(231.0)
    assert e.timestamp == pytest.approx(T0 + 0.123456)


def test_cloud_logging_from_bigquery_export_row():
    import datetime

    row = {
        "timestamp": datetime.datetime(2026, 11, 22, 10, 0, tzinfo=datetime.UTC),
        "httpRequest": {
            "requestMethod": "POST",
            "requestUrl": "/login",
            "status": 200,
            "latency": {"seconds": 1, "nanos": 500000000},
        },
        "resource": {"labels": {"module_id": "profile-web"}},
    }
    e = parse_log_record(row, FORMATS)
    assert (e.timestamp, e.service, e.path, e.latency_ms) == (T0, "profile-web", "/login", 1500.0)


def test_log4j2_json_layout_with_context_map():
    record = {
        "timeMillis": int(T0 * 1000) + 250,
        "level": "INFO",
        "loggerName": "web.Access",
        "message": "m",
        "contextMap": {
            "http.method": "PUT",
            "http.path": "/api/v1/profile/a",
            "http.status": "204",
            "http.latency_ms": 12.5,
            "service": "profile-web",
        },
    }
    e = parse_log_record(json.dumps(record), FORMATS)
    assert (e.timestamp, e.method, e.path, e.status, e.latency_ms, e.service, e.log_format) == (
        T0 + 0.25,
        "PUT",
        "/api/v1/profile/a",
        204,
        12.5,
        "profile-web",
        "app_log",
    )


def test_logstash_encoder_nested_fields_and_log4j2_instant():
    logstash = {
        "@timestamp": "2026-11-22T10:00:00.500+00:00",
        "level": "WARN",
        "logger_name": "web",
        "message": "m",
        "http": {"method": "GET", "path": "/login", "status": 500, "latency_ms": 3},
    }
    e = parse_log_record(logstash, FORMATS)
    assert (e.timestamp, e.status, e.latency_ms, e.service) == (T0 + 0.5, 500, 3.0, "unknown")
    instant = {
        "instant": {"epochSecond": int(T0), "nanoOfSecond": 7_000_000},
        "level": "INFO",
        "loggerName": "web",
        "message": "m",
        "mdc": {"http.method": "GET", "http.path": "/login", "http.status": 200, "http.latency_ms": 1},
    }
    assert parse_log_record(instant, FORMATS).timestamp == pytest.approx(T0 + 0.007)


def test_log_entry_wrapping_an_app_log_uses_entry_time_when_payload_has_none():
    entry = {
        "timestamp": "2026-11-22T10:00:00Z",
        "jsonPayload": {
            "level": "INFO",
            "logger": "web",
            "message": "m",
            "http": {"method": "GET", "path": "/login", "status": 200, "latency_ms": 9},
        },
    }
    e = parse_log_record(entry, FORMATS)
    assert (e.timestamp, e.log_format) == (T0, "app_log")


def test_flat_json_with_configured_mapping_in_seconds():
    line = '{"time": "2026-11-22T10:00:00+00:00", "method": "GET", "uri": "/profile/x", "status": 200, "request_time": 0.05, "service": "profile-web"}'
    e = parse_log_record(line, FORMATS)
    assert (e.timestamp, e.path, e.latency_ms, e.log_format) == (T0, "/profile/x", 50.0, "flat")


def test_flat_json_default_mapping():
    e = parse_log_record({"timestamp": T0, "method": "GET", "path": "/a", "status": 200, "latency_ms": 7}, Formats())
    assert (e.timestamp, e.latency_ms) == (T0, 7.0)


@pytest.mark.parametrize(
    "payload, reason, words",
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "invalid_utf8", "not valid UTF-8"),
        ("[1, 2]", "not_an_object", "JSON object"),
        (
            '{"httpRequest": {"requestMethod": "GET", "requestUrl": "/a", "status": 200, "latency": "1s"}}',
            "missing_field",
            "receiveTimestamp",
        ),
        (
            '{"timestamp": "2026-11-22T10:00:00Z", "httpRequest": {"requestMethod": "GET", "status": 200, "latency": "1s"}}',
            "missing_field",
            "requestUrl",
        ),
        (
            '{"timestamp": "soon", "httpRequest": {"requestMethod": "GET", "requestUrl": "/a", "status": 200, "latency": "1s"}}',
            "bad_timestamp",
            "soon",
        ),
        (
            '{"timestamp": "2026-11-22T10:00:00Z", "httpRequest": {"requestMethod": "GET", "requestUrl": "/a", "status": 700, "latency": "1s"}}',
            "bad_status",
            "700",
        ),
        (
            '{"timestamp": "2026-11-22T10:00:00Z", "httpRequest": {"requestMethod": "GET", "requestUrl": "/a", "status": true, "latency": "1s"}}',
            "bad_status",
            "True",
        ),
        (  # a digit int() does not read (it used to escape the parser as a ValueError)
            '{"timeMillis": 1795305600122, "level": "INFO", "loggerName": "w", "contextMap": {"http.method": "GET",'
            ' "http.path": "/a", "http.status": "\u00b2", "http.latency_ms": 1}}',
            "bad_status",
            "http.status",
        ),
        (
            '{"timestamp": "2026-11-22T10:00:00Z", "httpRequest": {"requestMethod": "GET", "requestUrl": "/a", "status": 200, "latency": "-1s"}}',
            "bad_latency",
            "negative",
        ),
        (
            '{"time": "2026-11-22T10:00:00Z", "method": "GET", "uri": "/a", "status": 200, "request_time": "fast"}',
            "bad_latency",
            "request_time",
        ),
        (
            '{"@timestamp": "2026-11-22T10:00:00Z", "level": "INFO", "logger_name": "w", "message": "hello"}',
            "missing_field",
            "formats.app_log.method_field",
        ),
        ('{"hello": "world"}', "missing_field", "'time'"),
    ],
)
def test_malformed_records_raise_with_reason_and_field(payload, reason, words):
    from transforms.io.deadletter import RecordError

    with pytest.raises(RecordError) as err:
        parse_log_record(payload, FORMATS)
    assert err.value.reason == reason
    assert words in str(err.value)


def test_dofn_routes_every_sample_malformed_kind_to_dead_letters_with_payload():
    fn = ParseLogRecords(FORMATS, "sli")
    for line in MALFORMED:
        outputs = list(fn.process(line))
        assert len(outputs) == 1 and outputs[0].tag == DEAD_LETTER_TAG
        dead = outputs[0].value
        assert dead["payload_string"] == line
        assert dead["step"] == "ParseLogRecords" and dead["pipeline"] == "sli"
        assert dead["reason"] and dead["error_message"]


def test_dofn_keeps_pubsub_attributes_and_bytes_in_dead_letters():
    import base64

    from apache_beam.io.gcp.pubsub import PubsubMessage

    fn = ParseLogRecords(FORMATS, "sli")
    [out] = list(fn.process(PubsubMessage(b"\xff not utf8", {"origin": "lb"})))
    dead = out.value
    assert dead["payload_string"] is None
    assert base64.b64decode(dead["payload_bytes"]) == b"\xff not utf8"
    assert dead["attributes"] == [{"key": "origin", "value": "lb"}]


_UTC_TEXT = st.builds(
    lambda moment, digits, suffix: (
        moment.strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[: digits + 1] if digits else "")
        + suffix
    ),
    st.datetimes(datetime.datetime(1970, 1, 1), datetime.datetime(9000, 1, 1)),
    st.integers(0, 9),
    st.sampled_from(["Z", "+00:00"]),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_UTC_TEXT, _UTC_TEXT.map(lambda t: t.replace("T", " ")), st.text(max_size=35)))
def test_the_fast_rfc3339_path_reads_what_fromisoformat_reads(value):
    """The usual UTC form is read without datetime; any text it takes gives fromisoformat's microseconds, and
    the general parser decides the rest (here: the same time or the same error as fromisoformat alone)."""
    fast = _utc_rfc3339_micros(value)
    try:
        expected = datetime_micros(datetime.datetime.fromisoformat(value.strip().replace(" UTC", "Z")))
    except ValueError:
        expected = None
    if fast is not None:
        assert fast == expected
    if _UTC_TEXT_FORM.fullmatch(value):
        assert fast == expected
    if expected is not None and 0 <= expected <= 221845392000 * 10**6:
        assert _timestamp_micros(value, "t") == expected


_UTC_TEXT_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|\+00:00)", re.ASCII)


_RAW = st.one_of(
    st.sampled_from(["GET", "post", "/a", "https://h.example.com/p/1?q", "svc", "", "http://[::1", "a#b"]),
    st.none(),
    st.integers(-2, 2),
    st.booleans(),
    st.floats(allow_nan=False, max_value=2.0, min_value=-2.0),
    st.lists(st.just("GET"), max_size=1),
    st.dictionaries(st.just("k"), st.just("v"), max_size=1),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_RAW, _RAW, _RAW, st.sampled_from(["cloud_logging", "flat"])), min_size=1, max_size=12))
def test_a_parser_that_remembers_requests_answers_as_a_fresh_one(requests):
    """A LogParser remembers each (service, method, URL) it has seen; records repeating them, with values of
    any JSON type (1 and True, lists, dicts), give what a parser that has seen nothing gives: the same
    fields, journey and error."""
    from transforms.io.deadletter import RecordError
    from transforms.sli.config import JourneyMatcher
    from transforms.sli.parsing import LogParser

    config = load_sli_config(SLI_DIR / "profile_service.yaml")

    def record(service, method, url, fmt):
        if fmt == "flat":
            return {
                "time": "2026-11-22T10:00:00Z",
                "service": service,
                "method": method,
                "uri": url,
                "status": 200,
                "request_time": 0.5,
            }
        return {
            "timestamp": "2026-11-22T10:00:00Z",
            "resource": {"labels": {"service_name": service}},
            "httpRequest": {"requestMethod": method, "requestUrl": url, "status": 200, "latency": "0.5s"},
        }

    def outcome(parser, payload):
        try:
            return parser.fields(payload)
        except RecordError as e:
            return e.reason, str(e)

    shared = LogParser(config.formats, JourneyMatcher(config))
    for raw in requests + requests:  # each request again, once remembered
        payload = record(*raw)
        assert outcome(shared, payload) == outcome(LogParser(config.formats, JourneyMatcher(config)), payload)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _UTC_TEXT,
        st.integers(-(2**64), 2**64),
        st.integers(MAX_EVENT_MICROS // 1000 - 2, MAX_EVENT_MICROS // 1000 + 2),
        st.integers(10**11 - 2, 10**11 + 2),
        st.text(max_size=35),
    )
)
def test_event_times_read_by_the_fast_paths_are_the_general_parsers(value):
    """`_event_micros` reads the usual forms (cached UTC seconds, epoch milliseconds) by shortcuts: each value
    gives what the general parser and the range check give, the same microseconds or the same error."""
    from transforms.io.deadletter import RecordError

    def outcome(read):
        try:
            return read()
        except RecordError as e:
            return e.reason
        except ValueError:  # not expected of either: makes the assert below report it
            return "ValueError"

    for _ in range(2):  # the second time from the caches
        assert outcome(lambda: _event_micros(value, "t")) == outcome(
            lambda: event_micros(_timestamp_micros(value, "t"), "t")
        )
