"""How the columnar feature pipeline moves and writes its batches: ColumnarCoder (pickle, with the size taken
from the buffers instead of a pickled copy, one-value list columns as their values), the examples encoded a
slice at a time, and the TFRecords' gzip: each slice a gzip member, compressed on threads at the level of
Beam's gzip writer, written in order, read back as one stream."""

import gzip
import io
import pickle
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.core.columnar import ColumnarCoder, columnar_nbytes
from transforms.features import examples
from transforms.features.cleanse import CleansedBatch


class _Closing(io.BytesIO):
    """A BytesIO that keeps its bytes after close, opened for writing as CompressedFile expects."""

    mode = "wb"

    def close(self):
        if not self.closed:
            self.kept = self.getvalue()
        super().close()


def _members(data):
    """A gzip file's members, decompressed one by one."""
    members = []
    while data:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        members.append(member.decompress(data))
        assert member.eof, "a member is cut short"
        data = member.unused_data
    return members


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12), st.integers(1, 3))
def test_each_write_is_a_gzip_member_in_order(chunks, threads):
    raw = _Closing()
    writer = examples._GzipMembers(raw, threads)
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
    assert _members(raw.kept) == chunks
    assert gzip.decompress(raw.kept) == b"".join(chunks)  # one stream to a gzip reader


def test_a_member_is_about_the_size_of_beams_gzip():
    rng = np.random.default_rng(0)
    data = b"".join(f"record {i} {x:.6f}".encode() for i, x in enumerate(rng.normal(size=50_000)))
    beams = _Closing()
    reference = CompressedFile(beams, CompressionTypes.GZIP)  # Beam's gzip writer, zlib's default level
    reference.write(data)
    reference.close()
    member = examples.gzip_member(data)
    assert _members(member) == [data]
    assert len(beams.kept) < len(member) < 1.1 * len(beams.kept)


class _FailingFile(_Closing):
    def write(self, data):
        raise OSError("disk full")


def test_a_failed_write_is_raised_and_the_file_closed():
    raw = _FailingFile()
    writer = examples._GzipMembers(raw, 1)
    with pytest.raises(OSError, match="disk full"):  # by the write, or by close if still compressing
        writer.write(b"x" * 100_000)
        writer.close()
    writer.close()  # nothing left to write: the file is closed
    assert raw.closed


def _batch(rows):
    """A RecordBatch as tf.Transform outputs them: one-value list columns."""
    rng = np.random.default_rng(rows)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32))
    values = [pa.array(rng.normal(size=rows).astype(np.float32)), pa.array([f"v{i % 7}".encode() for i in range(rows)])]
    return pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(offsets, v) for v in values], names=["x", "c"])


def test_examples_are_encoded_a_slice_at_a_time_in_order():
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

    batch = _batch(2 * examples.EXAMPLES_PER_WRITE + 5)
    schema = schema_pb2.Schema()
    for name, kind in (("x", schema_pb2.FLOAT), ("c", schema_pb2.BYTES)):
        schema.feature.add(name=name, type=kind)
    encode = examples.EncodeExamples(schema)
    encode.setup()
    slices = list(encode.process((batch, {})))
    assert [len(s) for s in slices] == [examples.EXAMPLES_PER_WRITE, examples.EXAMPLES_PER_WRITE, 5]
    parsed = [tf.train.Example.FromString(e) for s in slices for e in s]  # a map field's bytes vary in order
    assert parsed == [tf.train.Example.FromString(e) for e in RecordBatchToExamplesEncoder(schema).encode(batch)]


@pytest.mark.parametrize("compress", [True, False])
def test_example_batches_read_back_in_order(tmp_path, compress):
    records = [[f"record {i}-{j}".encode() * (1 + j % 5) for j in range(300)] for i in range(4)]
    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as pipeline:
        _ = (
            pipeline
            | beam.Create(records, reshuffle=False)
            | examples.WriteExampleBatches(str(tmp_path / "examples"), 1, compress)
        )
    (path,) = tmp_path.glob("examples-*")
    assert path.name.endswith(".tfrecord.gz" if compress else ".tfrecord")
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP" if compress else "")]
    assert sorted(read) == sorted(r for batch in records for r in batch)
    if compress:  # each batch's records are written together, in order
        for batch in records:
            start = read.index(batch[0])
            assert read[start : start + len(batch)] == batch


def test_columnar_coder_round_trips_and_sizes_by_buffers():
    table = pa.table({"a": [1.0, None, 3.0], "b": ["x", "yy", None]})
    batch = CleansedBatch(np.array(["train", "eval", "train"], object), table, table, np.array(["h1", "h2", "h3"]))
    coder = ColumnarCoder()
    for value in (table, _batch(10), ("train", table), batch):
        decoded = coder.decode(coder.encode(value))
        assert pickle.dumps(decoded) == pickle.dumps(value)
    size = table.get_total_buffer_size()
    assert columnar_nbytes(("train", table)) == len("train") + size
    assert columnar_nbytes(batch) == 2 * size + batch.split.nbytes + batch.split_hash.nbytes
    assert coder.get_impl().estimate_size(table) == size  # not the pickled size


_VALUES = {
    pa.float32(): st.floats(width=32, allow_nan=False) | st.none(),
    pa.binary(): st.binary(max_size=6) | st.none(),
    pa.int64(): st.integers(-(2**63), 2**63 - 1) | st.none(),
}


@st.composite
def record_batches(draw):
    """Arbitrary record batches of list columns (one value per row, or any number, null lists, null values)
    and plain columns, maybe sliced."""
    rows = draw(st.integers(0, 12))
    columns = {}
    for i in range(draw(st.integers(1, 4))):
        value_type = draw(st.sampled_from(list(_VALUES)))
        values = _VALUES[value_type]
        kind = draw(st.sampled_from(["one", "any", "plain"]))
        if kind == "plain":
            columns[f"c{i}"] = pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), value_type)
            continue
        sizes = st.just(1) if kind == "one" else st.integers(0, 3)
        cells = [
            draw(st.lists(values, min_size=n, max_size=n)) for n in draw(st.lists(sizes, min_size=rows, max_size=rows))
        ]
        if kind == "any":
            cells = [None if draw(st.booleans()) and i % 3 == 0 else cell for i, cell in enumerate(cells)]
        columns[f"c{i}"] = pa.array(cells, pa.list_(value_type))
    batch = pa.RecordBatch.from_pydict(columns)
    start = draw(st.integers(0, rows))
    return batch.slice(start, draw(st.integers(0, rows - start)))


@settings(max_examples=150, deadline=None)
@given(record_batches())
def test_columnar_coder_gives_back_every_record_batch(batch):
    decoded = ColumnarCoder().decode(ColumnarCoder().encode(batch))
    assert decoded.schema == batch.schema
    assert decoded.to_pylist() == batch.to_pylist()


def test_one_value_lists_travel_as_their_values():
    batch = _batch(10_000)
    flat = pa.RecordBatch.from_arrays([c.flatten() for c in batch.columns], names=batch.schema.names)
    encoded = ColumnarCoder().encode(batch)
    assert len(encoded) < len(pickle.dumps(flat, protocol=5)) + 2_000 < len(pickle.dumps(batch, protocol=5))
