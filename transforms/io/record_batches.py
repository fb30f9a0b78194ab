"""Inputs as Arrow tables, for the columnar pipelines: a batch of rows per element instead of a record.

Parquet is read by Beam's `ReadFromParquetBatched` (a table per row group). CSV, JSONL and TFRecord files are
read as chunks of records (CSV: `CsvChunk`, a header and about BATCH_BYTES of lines; JSONL: lists of lines;
TFRecord: lists of serialized examples), every format split by Beam across workers (byte ranges for CSV and
JSONL, the same line-claiming as sources.JsonFileSource), and turned into a table a chunk at a time by
`decode_csv`, `decode_jsonl` or `decode_tfrecord`, which leave out, with their reasons, the records they cannot
convert. Each element counts its
records into `<pipeline>:records_in`."""

import csv
import io
from functools import partial
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from apache_beam.io.filebasedsource import FileBasedSource
from apache_beam.metrics import Metrics

import transforms.core.columnar  # noqa: F401 - the coder of pa.Table
from transforms.core.records import MAX_RECORD_BYTES, SerializedExample, is_missing, record_dict
from transforms.io.deadletter import RecordError
from transforms.io.sources import BATCH_BYTES, BatchRecords, Input, ReadRecords, claimed_line_batches, detect_format

BATCHED_FORMATS = ("parquet", "csv", "jsonl", "tfrecord")
# A CSV cell of a numeric feature that is a number: decimal, exponent optional, or nan/inf (then missing/wrong)
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(?i:nan|inf|infinity)$"


def batched_format(source, file_format=None):
    """The format of the input when it can be read as Arrow tables (one of BATCHED_FORMATS), else None."""
    if not source.input_files:
        return None
    fmt = file_format or detect_format(source.input_files)
    return fmt if fmt in BATCHED_FORMATS else None


class CsvChunk(NamedTuple):
    """Lines of one CSV file (bytes, without line endings) and the file's header line."""

    header: bytes
    records: list


class JsonChunk(NamedTuple):
    records: list  # JSON records as bytes


class TfRecordChunk(NamedTuple):
    records: list  # serialized tf.train.Examples


class CsvChunkSource(FileBasedSource):
    """CSV files with a header -> CsvChunks of about `batch_bytes`, split into byte ranges like Beam's text
    source (a range owns the lines that start in it). Empty lines are skipped; a quoted value cannot span
    lines (such a row arrives as two bad rows). `.gz` files are read whole."""

    def __init__(self, file_pattern, batch_bytes=BATCH_BYTES):
        super().__init__(file_pattern)
        self._batch_bytes = batch_bytes

    def read_records(self, file_name, range_tracker):
        start = range_tracker.start_position()
        with self.open_file(file_name) as f:
            header = f.readline().removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
            f.seek(max(start - 1, 0))
            batches = claimed_line_batches(
                iter(partial(f.read, self._batch_bytes), b""), start, range_tracker, MAX_RECORD_BYTES
            )
            for n, lines in enumerate(batches):
                lines = [line for line in (lines[1:] if start == 0 and n == 0 else lines) if line]
                if lines:
                    yield CsvChunk(header, lines)

    def default_output_coder(self):
        return beam.coders.PickleCoder()


def chunk_records(chunk):
    """A chunk -> its records, one by one, as the per-record path reads them (payloads of dead letters)."""
    if isinstance(chunk, TfRecordChunk):
        return [SerializedExample(r) for r in chunk.records]
    return chunk.records


class Decoded(NamedTuple):
    """A chunk as a table: `table` holds the records at chunk positions `rows`; `errors` {position: RecordError}
    are records that cannot be read (bad JSON, a CSV row of the wrong width, bytes that are not UTF-8); `odd`
    are positions the columnar rules do not cover, for the per-record path; `shown` {column: values} is what an
    error message shows of a value, where the table holds it converted."""

    table: pa.Table
    rows: np.ndarray
    errors: dict
    odd: list
    shown: dict


def _text(column):
    """Binary -> string, and the positions whose bytes are not UTF-8 (as empty strings)."""
    try:
        return pc.cast(column, pa.string()), []
    except pa.ArrowInvalid:
        values = column.to_pylist()
        bad = []
        for i, value in enumerate(values):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
                values[i] = b""
        return pc.cast(pa.array(values, pa.binary()), pa.string()), bad


def decode_csv(chunk, key, numeric, columns):
    """CsvChunk -> Decoded. Cells are text: the key and string features as they are (empty: missing); a numeric
    feature's cell is a number in decimal or exponent notation, read round-trip exact (empty or `nan`:
    missing; `inf`, `1e400` or any other text: wrong_type). A row of the wrong width is `invalid_json`."""
    _, bad = _text(pa.array(chunk.records, pa.binary()))
    errors = {i: RecordError("invalid_utf8", f"CSV line {i} of the chunk is not valid UTF-8 text") for i in bad}
    good = [i for i in range(len(chunk.records)) if i not in errors]
    lines = [chunk.records[i] for i in good]
    names = next(csv.reader([chunk.header.decode("utf-8", "replace")]), [])
    if not lines:
        return Decoded(pa.table({key: pa.nulls(0, pa.string())}), np.zeros(0, np.int64), errors, [], {})
    invalid = []

    def skip(row):
        invalid.append(row.number - 2)  # numbers count lines from 1, the header first
        return "skip"

    wanted = [name for name in names if name in columns]
    table = pcsv.read_csv(
        io.BytesIO(b"\n".join([chunk.header, *lines])),
        read_options=pcsv.ReadOptions(use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=skip),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(wanted, pa.string()), include_columns=wanted, strings_can_be_null=False
        ),
    )
    if table.num_rows + len(invalid) != len(lines):
        raise ValueError("the CSV rows do not match the lines (a quoted value spans lines)")
    good = np.asarray(good, np.int64)
    for i in invalid:
        errors[int(good[i])] = RecordError(
            "invalid_json", f"a CSV line does not have the {len(names)} columns of the header; check its commas"
        )
    out, shown = {}, {}
    for name in wanted:
        text = table.column(name).combine_chunks()
        if name in numeric:
            number = pc.match_substring_regex(text, _NUMBER)
            values = pc.cast(pc.if_else(number, text, None), pa.float64())
            out[name] = pc.if_else(pc.and_(pc.invert(number), pc.not_equal(text, "")), np.inf, values)
            shown[name] = text
        else:
            out[name] = text
    if key not in out:
        out[key] = pa.nulls(table.num_rows, pa.string())
    rows = np.setdiff1d(good, good[np.asarray(invalid, np.int64)]) if invalid else good
    return Decoded(pa.table(out), rows, errors, [], shown)


def decode_jsonl(chunk, key, numeric, columns):
    """JSON records (bytes) -> Decoded: each record decoded as the per-record path does (its RecordError kept),
    the key as its text, every other column an Arrow array of the values as they are. A column whose values
    Arrow cannot hold in one array (mixed kinds), or that would turn whole numbers into floats for a string
    feature, fails the chunk (then its records go one by one)."""
    dicts, rows, errors = [], [], {}
    for i, line in enumerate(chunk.records):
        try:
            dicts.append(record_dict(line))
            rows.append(i)
        except RecordError as e:
            errors[i] = e
    out = {key: pa.array([None if is_missing(d.get(key)) else str(d[key]) for d in dicts], pa.string())}
    for name in columns:
        if name == key:
            continue
        values = pa.array([d.get(name) for d in dicts])
        if name not in numeric and pa.types.is_floating(values.type):
            raise ValueError(f"column '{name}' mixes whole numbers and floats")
        out[name] = values
    return Decoded(pa.table(out), np.asarray(rows, np.int64), errors, [], {})


def _first_values(column):
    """A list column -> its first values (null for empty or null lists)."""
    has = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False) > 0
    firsts = pc.list_element(column.filter(pa.array(has)), 0)
    return firsts.take(pa.array(np.cumsum(has) - 1, mask=~has))


def decode_tfrecord(chunk, key, numeric, columns, decoder):
    """Serialized tf.train.Examples -> Decoded by tfx-bsl's C++ decoder: each feature's first value (text for
    UTF-8 bytes, float32 widened exactly). A corrupt example fails the chunk (then its records go one by one);
    examples with a non-finite float or bytes that are not UTF-8 are left to the per-record path."""
    batch = decoder.DecodeBatch(chunk.records)
    odd = np.zeros(batch.num_rows, bool)
    out = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        values = _first_values(column)
        if pa.types.is_floating(values.type):
            odd |= ~np.isfinite(values.to_numpy(zero_copy_only=False)) & values.is_valid().to_numpy(
                zero_copy_only=False
            )
        if name not in columns:
            continue
        if pa.types.is_large_binary(values.type) or pa.types.is_binary(values.type):
            values, bad = _text(pc.cast(values, pa.large_binary()))
            odd[bad] = True
        out[name] = values
    keys = out[key].to_pylist() if key in out else [None] * batch.num_rows
    out[key] = pa.array([None if is_missing(k) else str(k) for k in keys], pa.string())  # str() as per record
    rows = np.flatnonzero(~odd)
    indices = pa.array(rows)
    return Decoded(pa.table({k: v.take(indices) for k, v in out.items()}), rows, {}, np.flatnonzero(odd).tolist(), {})


def _count_rows(element, counter):
    counter.inc(element.num_rows if isinstance(element, pa.Table) else len(element.records))
    return element


class ReadRecordBatches(beam.PTransform):
    """Arrow tables (Parquet) or chunks of records (CSV, JSONL, TFRecord) from the files of `pattern` in `fmt`
    (see batched_format), counted as records read."""

    def __init__(self, pattern, fmt, pipeline_name):
        super().__init__()
        self._pattern, self._format, self._pipeline = pattern, fmt, pipeline_name

    def expand(self, pbegin):
        fmt = self._format
        if fmt == "parquet":
            read = pbegin | "ReadParquetBatched" >> beam.io.ReadFromParquetBatched(self._pattern).with_output_types(
                pa.Table
            )
        elif fmt == "csv":
            read = pbegin | "ReadCsvChunks" >> beam.io.Read(CsvChunkSource(self._pattern))
        elif fmt == "jsonl":
            read = (
                pbegin
                | "ReadJsonChunks" >> ReadRecords(Input(input_files=self._pattern), "jsonl", batched=True)
                | "AsJsonChunks" >> beam.Map(JsonChunk)
            )
        else:
            read = (
                pbegin
                | "ReadTfRecord" >> beam.io.ReadFromTFRecord(self._pattern, coder=beam.coders.BytesCoder())
                | "BatchTfRecords" >> BatchRecords()
                | "AsTfRecordChunks" >> beam.Map(TfRecordChunk)
            )
        counter = Metrics.counter(self._pipeline, "records_in")
        return read | "CountRecordsIn" >> beam.Map(_count_rows, counter).with_output_types(read.element_type)
