"""Multi-line JSON log files read as what they are: log4j2 `JsonLayout` (complete=true, compact=false: an array
of pretty-printed objects) and logback's pretty-printed JSON layout (concatenated objects) give one record
per event; JSONL stays one record per line; garbage gives one dead letter per bad record."""

import gzip
import json
import os
import tempfile

import apache_beam as beam
import orjson
import pytest
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.samples import SLI_DIR
from transforms.core.records import MAX_RECORD_BYTES, event_timestamp, parse_json
from transforms.io.deadletter import DEAD_LETTER_TAG, RecordError
from transforms.io.files import JsonValueSplitter, is_json_lines
from transforms.io.sources import Input, ReadRecords, _JsonFileRecords
from transforms.sli.config import load_sli_config
from transforms.sli.parsing import ParseLogRecords, parse_log_record

FORMATS = load_sli_config(SLI_DIR / "profile_service.yaml").formats
T0 = 1795341600  # 2026-11-22T10:00:00Z
FUZZ = settings(max_examples=100, deadline=None)

# log4j2 JsonLayout complete=true compact=false (its default line end is CRLF), three events.
LOG4J2 = """[
{
  "instant" : {
    "epochSecond" : 1795341601,
    "nanoOfSecond" : 250000000
  },
  "thread" : "http-nio-8080-exec-1",
  "level" : "INFO",
  "loggerName" : "com.example.web.AccessLog",
  "marker" : {
    "name" : "ACCESS",
    "parents" : [ {
      "name" : "HTTP"
    } ]
  },
  "message" : "GET /login -> 200, took 12.5 ms {ok}",
  "endOfBatch" : false,
  "loggerFqcn" : "org.apache.logging.log4j.spi.AbstractLogger",
  "contextMap" : {
    "http.latency_ms" : "12.5",
    "http.method" : "GET",
    "http.path" : "/login",
    "http.status" : "200",
    "service" : "profile-web"
  },
  "threadId" : 31,
  "threadPriority" : 5
}
, {
  "instant" : {
    "epochSecond" : 1795341659,
    "nanoOfSecond" : 999999999
  },
  "thread" : "http-nio-8080-exec-2",
  "level" : "ERROR",
  "loggerName" : "com.example.web.AccessLog",
  "message" : "POST /api/v1/profile/al -> 503",
  "thrown" : {
    "commonElementCount" : 0,
    "message" : "backend \\"db\\" down [pool exhausted]",
    "name" : "java.sql.SQLTransientConnectionException",
    "extendedStackTrace" : [ {
      "class" : "com.example.db.Pool",
      "method" : "get",
      "file" : "Pool.java",
      "line" : 88,
      "exact" : true,
      "location" : "app.jar",
      "version" : "?"
    } ]
  },
  "endOfBatch" : false,
  "contextMap" : {
    "http.latency_ms" : "1500",
    "http.method" : "POST",
    "http.path" : "/api/v1/profile/al",
    "http.status" : "503",
    "service" : "profile-web"
  }
}
, {
  "instant" : {
    "epochSecond" : 1795341660,
    "nanoOfSecond" : 0
  },
  "level" : "INFO",
  "loggerName" : "com.example.web.AccessLog",
  "message" : "GET /profile/bo -> 404",
  "contextMap" : {
    "http.latency_ms" : "3",
    "http.method" : "GET",
    "http.path" : "/profile/bo",
    "http.status" : "404",
    "service" : "profile-web"
  }
}
]
""".replace("\n", "\r\n").encode()

# logback JsonLayout (logback-contrib) with JacksonJsonFormatter prettyPrint=true, two events.
LOGBACK = b"""{
  "timestamp" : 1795341602500,
  "level" : "WARN",
  "thread" : "main",
  "mdc" : {
    "http.method" : "DELETE",
    "http.path" : "/api/v1/profile/cy",
    "http.status" : "500",
    "http.latency_ms" : "40"
  },
  "logger" : "com.example.web.AccessLog",
  "message" : "DELETE failed: {\\"error\\": \\"conflict\\"}",
  "context" : "default"
}
{
  "timestamp" : 1795341603000,
  "level" : "INFO",
  "thread" : "main",
  "mdc" : {
    "http.method" : "GET",
    "http.path" : "/login",
    "http.status" : "200",
    "http.latency_ms" : "7"
  },
  "logger" : "com.example.web.AccessLog",
  "message" : "ok",
  "context" : "default"
}
"""

# (event time in microseconds, service, method, path, status, latency_ms) of the events above, by hand
LOG4J2_EVENTS = [
    ((T0 + 1) * 10**6 + 250_000, "profile-web", "GET", "/login", 200, 12.5),
    ((T0 + 59) * 10**6 + 999_999, "profile-web", "POST", "/api/v1/profile/al", 503, 1500.0),
    ((T0 + 60) * 10**6, "profile-web", "GET", "/profile/bo", 404, 3.0),
]
LOGBACK_EVENTS = [
    ((T0 + 2) * 10**6 + 500_000, "unknown", "DELETE", "/api/v1/profile/cy", 500, 40.0),
    ((T0 + 3) * 10**6, "unknown", "GET", "/login", 200, 7.0),
]


def _split(data, chunk_bytes, max_bytes=MAX_RECORD_BYTES):
    splitter = JsonValueSplitter(max_bytes)
    records = []
    for i in range(0, len(data), chunk_bytes):
        records += splitter.feed(data[i : i + chunk_bytes])
    return records + splitter.close()


def _fields(event):
    return (
        event_timestamp(event.timestamp).micros,
        event.service,
        event.method,
        event.path,
        event.status,
        event.latency_ms,
    )


@pytest.mark.parametrize("chunk_bytes", [1, 2, 7, 1 << 20])
@pytest.mark.parametrize("data, events", [(LOG4J2, LOG4J2_EVENTS), (LOGBACK, LOGBACK_EVENTS)])
def test_pretty_printed_java_logs_give_one_record_per_event_in_any_chunking(data, events, chunk_bytes):
    assert not is_json_lines(data)
    records = _split(data, chunk_bytes)
    assert [_fields(parse_log_record(r, FORMATS)) for r in records] == events


def test_log4j2_strings_holding_brackets_and_commas_stay_whole():
    first, second, _ = _split(LOG4J2, 3)
    assert parse_json(first)["message"] == "GET /login -> 200, took 12.5 ms {ok}"
    assert parse_json(second)["thrown"]["message"] == 'backend "db" down [pool exhausted]'
    assert parse_json(second)["thrown"]["extendedStackTrace"][0]["line"] == 88


def test_one_line_compact_array_and_live_file_without_footer():
    compact = b'[{"timeMillis":1795341601000,"level":"INFO","loggerName":"a","contextMap":{"http.method":"GET",'
    compact += b'"http.path":"/a","http.status":200,"http.latency_ms":1}}, {"x": "], {"}, 7]'
    assert _split(compact, 5)[1:] == [b'{"x": "], {"}', b"7"]
    assert _fields(parse_log_record(_split(compact, 5)[0], FORMATS)) == (
        (T0 + 1) * 10**6,
        "unknown",
        "GET",
        "/a",
        200,
        1.0,
    )
    live = LOG4J2.removesuffix(b"]\r\n")  # log4j2 writes the footer only when the appender closes
    assert [_fields(parse_log_record(r, FORMATS)) for r in _split(live, 64)] == LOG4J2_EVENTS


def test_a_value_cut_short_is_one_bad_record_and_reading_resumes_at_the_next_line_starting_a_value():
    cut = LOGBACK[:60]  # the app died mid-write, then restarted and appended
    records = _split(cut + b"\n" + LOGBACK + b"oops, not JSON\n}\n", 3)
    assert records == [cut.rstrip(), *_split(LOGBACK, 1 << 20), b"oops, not JSON", b"}"]
    with pytest.raises(RecordError) as err:
        parse_json(records[0])
    assert err.value.reason == "invalid_json" and "a value of a multi-line JSON file" in str(err.value)
    restarted = LOG4J2[:300] + b"\r\n" + LOG4J2  # a crash inside the first event, then a new header "["
    assert [r[:40] for r in _split(restarted, 11)] == [LOG4J2[3:43]] + [r[:40] for r in _split(LOG4J2, 11)]


def test_a_record_over_the_limit_arrives_cut_and_is_too_large():
    assert _split(b'{"a": "' + b"x" * 50 + b'"}\n{"b": 1}', 4, max_bytes=10) == [b'{"a": "xxxx', b'{"b": 1}']
    [out] = ParseLogRecords(FORMATS, "sli").process(b"[" + b" " * MAX_RECORD_BYTES + b"]")
    assert out.tag == DEAD_LETTER_TAG and out.value["reason"] == "too_large"
    assert out.value["payload_size"] == MAX_RECORD_BYTES + 2


@pytest.mark.parametrize(
    "head, lines",
    [
        (b'{"a": 1}\n{"a": 2}\n', True),
        (b'  \n{"a": 1}\r\n', True),
        (b"not json\n{", True),
        (b"", True),
        (b'{\n  "a" : 1\n}\n', False),
        (b'[ {"a": 1}, {"a": 2} ]', False),
        (b'{"a": 1, "b\n{"a": 2}\n', False),
    ],
)
def test_layout_is_detected_from_the_first_line(head, lines):
    assert is_json_lines(head) is lines


def test_mixed_glob_through_read_records_and_the_sli_parser(tmp_path):
    jsonl = [
        {"timeMillis": (T0 + 5) * 1000, "level": "INFO", "loggerName": "w", "mdc": {}, "http.method": "GET"},
        {"time": "2026-11-22T10:00:06Z", "method": "GET", "uri": "/b", "status": 201, "request_time": 0.25},
    ]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(json.dumps(r).encode() for r in jsonl) + b"\n{broken\n")
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + LOG4J2))
    (tmp_path / "c.json").write_bytes(LOGBACK[:60] + b"\n" + LOGBACK)
    (tmp_path / "d.json").write_bytes(b"this is\nnot JSON at all\n")
    with TestPipeline("FnApiRunner") as p:
        records = p | ReadRecords(Input(input_files=str(tmp_path / "*")), "jsonl")
        parsed = records | beam.ParDo(ParseLogRecords(FORMATS, "sli")).with_outputs(DEAD_LETTER_TAG, main="events")
        assert_that(records | "Count" >> beam.combiners.Count.Globally(), equal_to([3 + 3 + 3 + 2]), label="In")
        assert_that(
            parsed.events | beam.Map(_fields),
            equal_to([((T0 + 6) * 10**6, "unknown", "GET", "/b", 201, 250.0), *LOG4J2_EVENTS, *LOGBACK_EVENTS]),
            label="Events",
        )
        assert_that(
            parsed[DEAD_LETTER_TAG] | beam.Map(lambda d: d["reason"]),
            equal_to(["missing_field"] + ["invalid_json"] * 4),
            label="DeadLetters",
        )


JSON_OBJECTS = st.lists(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=4,
    ),
    max_size=5,
)


@FUZZ
@given(objects=JSON_OBJECTS, layout=st.sampled_from(["lines", "array", "pretty"]), chunk_bytes=st.integers(1, 64))
def test_any_objects_in_any_layout_and_chunking_come_back(objects, layout, chunk_bytes):
    pretty = [json.dumps(o, indent=2) for o in objects]
    data = {
        "lines": "\n".join(json.dumps(o) for o in objects),
        "array": "[\n" + "\n, ".join(pretty) + "\n]\n",
        "pretty": "\n".join(pretty),
    }[layout].encode()
    assert [orjson.loads(r) for r in _split(data, chunk_bytes)] == objects


@FUZZ
@given(data=st.binary(max_size=300) | JSON_OBJECTS.map(lambda o: json.dumps(o, indent=1).encode()[:-3]))
def test_any_file_bytes_give_records_or_paths_and_never_raise(data):
    """The file reader on any bytes: JSONL files go to the line reader by path; otherwise every record is a
    non-empty piece of the file, no longer than the limit + 1, and the parse step gives an outcome for it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.json")
        with open(path, "wb") as f:
            f.write(data)
        outputs = list(_JsonFileRecords().process(fileio.ReadableFile(FileMetadata(path, len(data)))))
    if is_json_lines(data.removeprefix(b"\xef\xbb\xbf")):
        assert [o.value for o in outputs] == [path]
        return
    parse = ParseLogRecords(FORMATS, "sli")
    for record in outputs:
        assert isinstance(record, bytes) and record and record in data
        assert len(list(parse.process(record))) == 1
