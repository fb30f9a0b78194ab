"""CSV, JSONL and TFRecord chunks cleansed a chunk at a time (record_batches.decode_* then cleanse_table) against
a second method record by record: JSON lines and examples through the per-record path (CleanseRecords), CSV
lines through Python's csv module and the documented cell rules, then `cleanse`. Arbitrary lines and bytes
give every record the same outcome (row values, split, dead-letter reason and payload)."""

import csv
import json
import re

import apache_beam as beam
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_feature_splits import TABLE_SPEC
from transforms.core.records import SerializedExample
from transforms.core.splits import streaming_split
from transforms.features.cleanse import CleanseChunks, CleansedBatch, CleanseRecords, batch_of_rows, cleanse
from transforms.io.deadletter import RecordError, make_dead_letter
from transforms.io.record_batches import CsvChunk, CsvChunkSource, JsonChunk, TfRecordChunk

PROPERTY = settings(max_examples=60, deadline=None)
SPEC = TABLE_SPEC  # the table tests' spec: a default, a clip, a required feature, a label
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def outcomes(outputs):
    """CleanseChunks' or CleanseRecords' outputs -> (sorted rows, sorted (reason, payload) of dead letters)."""
    dead, rows, clean = [], [], []
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            dead.append((out.value["reason"], out.value["payload_string"], out.value["payload_bytes"]))
        elif isinstance(out, CleansedBatch):
            rows.extend(zip(out.raw.to_pylist(), out.filled.to_pylist(), out.split.tolist(), strict=True))
        else:
            clean.append(out)
    if clean:
        batch = batch_of_rows(clean, SPEC)
        rows.extend(zip(batch.raw.to_pylist(), batch.filled.to_pylist(), batch.split.tolist(), strict=True))
    return sorted(rows, key=repr), sorted(dead, key=repr)


def chunked(chunk):
    dofn = CleanseChunks(SPEC, "test")
    dofn.setup()
    return outcomes(dofn.process(chunk))


def one_by_one(records):
    dofn = CleanseRecords(SPEC, "test")
    return outcomes(out for record in records for out in dofn.process(record))


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "a", "7", "Zürich", "1.5"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["k"]), st.integers(0, 3), max_size=1),
)
JSON_LINES = st.one_of(
    st.dictionaries(st.sampled_from(["id", "x", "n", "c", "y", "other"]), JSON_VALUES).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=12),
    st.sampled_from([b"", b"[1]", b'{"id": NaN}', b'{"id": "a", "n": 1e400, "y": "no"}', b"\xff{}"]),
)


@PROPERTY
@given(st.lists(JSON_LINES, min_size=1, max_size=12))
def test_any_json_lines_get_the_outcome_of_the_per_record_path(lines):
    assert chunked(JsonChunk(lines)) == one_by_one(lines)


def example(features):
    feature = {}
    for name, value in features.items():
        if isinstance(value, float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif isinstance(value, int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        elif isinstance(value, bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[name] = tf.train.Feature()  # no value: missing
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


EXAMPLE_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(width=32),
    st.sampled_from([b"", b"a", b"7", "Zürich".encode(), b"\xff\xfe", b"1.5"]),
)
EXAMPLES = st.one_of(
    st.dictionaries(st.sampled_from(["id", "x", "n", "c", "y", "other"]), EXAMPLE_VALUES).map(example),
    st.binary(max_size=12),
)


@PROPERTY
@given(st.lists(EXAMPLES, min_size=1, max_size=10))
def test_any_tfrecord_payloads_get_the_outcome_of_the_per_record_path(payloads):
    assert chunked(TfRecordChunk(payloads)) == one_by_one([SerializedExample(p) for p in payloads])


def csv_reference(header, lines):
    """The documented CSV rules, with Python's csv module and float(): each line's outcome."""
    names = next(csv.reader([header.decode()]))
    outputs = []
    for line in lines:
        try:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError("invalid_utf8", "not UTF-8") from None
            cells = next(csv.reader([text]))
            if len(cells) != len(names):
                raise RecordError("invalid_json", "wrong width")
            record = {}
            for name, cell in zip(names, cells, strict=True):
                if name in ("x", "n"):
                    cell = (float(cell) if NUMBER.fullmatch(cell) else cell) if cell else None
                    cell = None if isinstance(cell, float) and cell != cell else cell
                    cell = float("inf") if isinstance(cell, str) else cell  # any other text: wrong type
                record[name] = cell
            row = cleanse(record, SPEC)
            outputs.append(row._replace(split=streaming_split(row.split_hash, SPEC.split_fractions)))
        except RecordError as e:
            outputs.append(beam.pvalue.TaggedOutput("dead_letters", make_dead_letter("test", "s", line, e)))
    return outputs


CELLS = st.one_of(
    st.sampled_from(["", "a", "7", "-1.5e3", "nan", "inf", "1e400", " 1", "0x10", "+.5", "Zürich", "007"]),
    st.floats(allow_nan=False).map(repr),
    st.text(alphabet="ab1,. ", max_size=4),
)
CSV_LINES = st.one_of(
    st.lists(CELLS, min_size=5, max_size=5).map(lambda cells: ",".join(cells).encode()),
    st.binary(max_size=8).filter(lambda b: b"\n" not in b and b"\r" not in b and b'"' not in b and b != b""),
)


@PROPERTY
@given(st.lists(CSV_LINES, min_size=1, max_size=12))
def test_any_csv_lines_get_the_outcome_of_the_csv_rules(lines):
    header = b"id,x,n,c,y"
    assert chunked(CsvChunk(header, lines)) == outcomes(csv_reference(header, lines))


CSV_FILE_LINES = st.lists(st.text(alphabet="ab1,é", max_size=6).map(str.encode), max_size=12)


@PROPERTY
@given(lines=CSV_FILE_LINES, cuts=st.lists(st.integers(1, 80), max_size=4), batch_bytes=st.integers(1, 16))
def test_csv_byte_ranges_give_every_line_once_with_the_header(tmp_path_factory, lines, cuts, batch_bytes):
    """A CSV file cut into byte ranges anywhere, read in chunks of any size: every chunk carries the header,
    and the ranges' chunks, in order, are the file's lines after the header, each once, empty ones left out
    (a reference by bytes.split)."""
    from apache_beam.io.range_trackers import OffsetRangeTracker

    data = b"\xef\xbb\xbfid,x\r\n" + b"\n".join(lines) + (b"\n" if lines else b"")
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_bytes(data)
    source = CsvChunkSource(str(path), batch_bytes)
    offsets = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [
        chunk
        for lo, hi in zip(offsets, offsets[1:], strict=False)
        for chunk in source.read_records(str(path), OffsetRangeTracker(lo, hi))
    ]
    assert {chunk.header for chunk in chunks} <= {b"id,x"}
    assert [line for chunk in chunks for line in chunk.records] == [line for line in lines if line]


def test_a_chunk_that_fails_as_a_whole_is_redone_record_by_record_and_counted():
    """A string feature whose JSON values mix whole numbers and floats cannot be one Arrow column: the chunk
    falls back to the per-record path (one `batch_fallbacks`), every record with its per-record outcome."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    lines = [b'{"id": "a", "n": 1, "c": 1, "y": 0}', b'{"id": "b", "n": 2, "c": 2.5, "y": 1}', b'{"id": "c"}']
    expected = one_by_one(lines)
    assert [raw["c"] for raw, _, _ in expected[0]] == ["1"]
    assert [reason for reason, *_ in expected[1]] == ["missing_required", "wrong_type"]
    assert chunked(JsonChunk(lines)) == expected
    pipeline = TestPipeline()
    _ = pipeline | beam.Create([JsonChunk(lines)]) | beam.ParDo(CleanseChunks(SPEC, "test"))
    result = pipeline.run()
    result.wait_until_finish()
    [counter] = result.metrics().query(MetricsFilter().with_name("batch_fallbacks"))["counters"]
    assert counter.committed == 1
