"""Multi-line JSON log files read as what they are: log4j2 `JsonLayout` (complete=true, compact=false: an array
of pretty-printed objects) and logback's pretty-printed JSON layout (concatenated objects) give one record
per event; JSONL stays one record per line; garbage gives one dead letter per bad record."""

import gzip
import json
import os
import tempfile
import threading

import apache_beam as beam
import orjson
import pytest
from apache_beam.io import source_test_utils
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.samples import SLI_DIR
from transforms.core.records import MAX_RECORD_BYTES, event_timestamp, parse_json
from transforms.io.deadletter import DEAD_LETTER_TAG, RecordError
from transforms.io.files import JsonValueSplitter, is_json_lines
from transforms.io.sources import Input, JsonFileSource, ReadRecords, read_ahead
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
def test_any_file_bytes_give_records_and_never_raise(data):
    """The file source on any bytes: a JSONL file gives its lines; otherwise every record is a non-empty piece
    of the file, no longer than the limit + 1, and the parse step gives an outcome for it."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.json")
        with open(path, "wb") as f:
            f.write(data)
        records = [r for batch in source_test_utils.read_from_source(JsonFileSource(path)) for r in batch]
    if is_json_lines(data.removeprefix(b"\xef\xbb\xbf")):
        assert records == _reference_lines(data)
        return
    parse = ParseLogRecords(FORMATS, "sli")
    for record in records:
        assert isinstance(record, bytes) and record and record in data
        assert len(list(parse.process(record))) == 1


def _reference_lines(data, max_bytes=MAX_RECORD_BYTES):
    """A line reader's records worked out with bytes.split: no empty record after a final newline, one `\\r`
    before each newline dropped, lines over the limit cut to limit + 1 bytes."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [(p[:-1] if p.endswith(b"\r") else p)[: max_bytes + 1] for p in pieces]


LINE_BYTES = st.lists(st.sampled_from([b"x", b"yz", b"\n", b"\r", b"\r\n", b"{", b"\xff"]), max_size=60).map(b"".join)


@FUZZ
@given(
    tail=LINE_BYTES,
    cuts=st.lists(st.integers(1, 90), max_size=4),
    batch_bytes=st.integers(1, 16),
    max_bytes=st.integers(1, 12),
)
def test_byte_ranges_give_every_line_once_in_order(tail, cuts, batch_bytes, max_bytes):
    """A JSONL file cut into byte ranges anywhere, read in chunks of any size: the ranges' batches, in order,
    are the file's lines, each once, long ones cut."""
    from apache_beam.io.range_trackers import OffsetRangeTracker

    data = b'{"a":1}\n' + tail
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        source = JsonFileSource(path, batch_bytes, max_bytes)
        offsets = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        batches = [
            b
            for lo, hi in zip(offsets, offsets[1:], strict=False)
            for b in source.read_records(path, OffsetRangeTracker(lo, hi))
        ]
    assert all(batches)
    assert [line for batch in batches for line in batch] == _reference_lines(data, max_bytes)


def test_dynamic_splits_anywhere_lose_or_repeat_no_line(tmp_path):
    """A split requested after any number of batches, at any byte: the primary's lines then the residual's are
    the file's lines, each once (the batches themselves may group differently)."""
    from apache_beam.io.range_trackers import OffsetRangeTracker

    data = b"".join(b'{"n": %d}\n' % i + (b"\r\n" if i % 3 else b"x" * 30 + b"\n") for i in range(12))
    path = str(tmp_path / "f.jsonl")
    (tmp_path / "f.jsonl").write_bytes(data)
    source = JsonFileSource(path, batch_bytes=40)
    whole = list(source.read_records(path, OffsetRangeTracker(0, len(data))))
    assert len(whole) > 5
    for batches_read in range(len(whole) + 1):
        for split_at in range(1, len(data)):
            tracker = OffsetRangeTracker(0, len(data))
            primary = source.read_records(path, tracker)
            lines = [line for _ in range(batches_read) for line in next(primary, [])]
            if tracker.try_split(split_at):
                lines += [line for b in primary for line in b]
                lines += [
                    line for b in source.read_records(path, OffsetRangeTracker(split_at, len(data))) for line in b
                ]
            else:
                lines += [line for b in primary for line in b]
            assert lines == _reference_lines(data), (batches_read, split_at)


def test_a_large_file_splits_into_ranges_that_read_it_once(tmp_path):
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"p" * (i % 50)) for i in range(3000))
    (tmp_path / "f.jsonl").write_bytes(data)
    source = JsonFileSource(str(tmp_path / "f.jsonl"), batch_bytes=1000)
    bundles = list(source.split(desired_bundle_size=10_000))
    assert len(bundles) > 5
    lines = [
        line
        for b in bundles
        for batch in source_test_utils.read_from_source(b.source, b.start_position, b.stop_position)
        for line in batch
    ]
    assert lines == _reference_lines(data)


@FUZZ
@given(chunks=st.lists(st.binary(min_size=1, max_size=8), max_size=12), taken=st.integers(0, 14), fails=st.booleans())
def test_read_ahead_gives_the_reads_in_order_and_stops_its_thread(chunks, taken, fails):
    """Reads come back in order up to the first b"", a read's error is raised in its turn, and closing the
    generator early (or reading it out) leaves no reader thread behind."""
    reads = iter(chunks + ([OSError("disk gone")] if fails else [b""]))

    def read():
        value = next(reads, b"")
        if isinstance(value, Exception):
            raise value
        return value

    got, raised = [], None
    ahead = read_ahead(read, depth=2)
    try:
        for _ in range(taken):
            got.append(next(ahead))
    except StopIteration:
        pass
    except OSError as e:
        raised = e
    ahead.close()
    n = min(taken, len(chunks))
    assert got == chunks[:n]
    assert (raised is not None) == (fails and taken > len(chunks))
    assert not any(t.name == "read_ahead" and t.is_alive() for t in threading.enumerate())


def test_a_gzip_file_reads_the_lines_of_its_members_in_small_steps(tmp_path, monkeypatch):
    """A .gz JSONL file of two members (as `cat a.gz b.gz` makes), decompressed a few bytes at a time while
    the lines are being read: the lines of both, in order."""
    from transforms.io import sources

    monkeypatch.setattr(sources, "_COMPRESSED_READ_BYTES", 7)
    first = b"".join(b'{"n": %d}\n' % i for i in range(300))
    second = b"".join(b'{"m": %d}\r\n' % i for i in range(200))
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(first) + gzip.compress(second))
    records = [r for batch in source_test_utils.read_from_source(JsonFileSource(str(path), 100)) for r in batch]
    assert records == _reference_lines(first + second)


_VALUES = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=4), _VALUES | st.lists(_VALUES, max_size=3), max_size=4), max_size=5))
def test_read_jsonl_gives_json_s_values_of_the_lines_sinks_write(rows):
    """read_jsonl decodes with orjson where that gives what json gives, so integers past 64 bits come back
    exact (orjson would read them as floats); the reference is json on the same lines."""
    from transforms.io.files import read_jsonl
    from transforms.io.sinks import to_json_line

    lines = [to_json_line(row) for row in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "rows.jsonl")
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        read = read_jsonl(path)
    expected = [json.loads(line) for line in lines]
    assert read == expected
    assert [[type(v) for v in row.values()] for row in read] == [[type(v) for v in row.values()] for row in expected]
