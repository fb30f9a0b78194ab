"""Every source of the project: one composite, `ReadRecords`, reads the one input a pipeline was given.

What each input yields (the raw records the pipelines' parse steps take):
- Pub/Sub subscription or topic: `PubsubMessage` (body bytes, attributes, message id, publish time).
- Files (local or gs:// globs; `.gz` decompressed): JSON records as bytes (decoded per record by the parse
  step, so one invalid UTF-8 line is one dead letter, not a failed read): JSONL lines, or, in a file whose
  first line is not a whole JSON object, each of its concatenated or array-wrapped JSON values (log4j2
  `JsonLayout` complete=true, logback pretty-printed; see files.JsonValueSplitter), read by `JsonFileSource`;
  CSV rows as dicts (header names), Parquet rows as dicts, TFRecords as `SerializedExample` (decoded by the
  parse step).
- A text manifest (one line per image): lines as bytes.
- A BigQuery table (Storage Read API; several comma-separated, such as date shards, read side by side) or
  query (an export job): dict rows.
- A folder of images `<root>/<label>/<file>`: `ImageInput`, each file read only up to its size limit.

With `batched=True`, every input yields `list`s of those records instead (batched paths parse a batch in one
call): JSON files in batches of about `BATCH_BYTES` straight from the file source, anything else grouped
by `BatchRecords`.
"""

import codecs
import posixpath
import queue
import threading
from contextlib import closing
from functools import partial
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filebasedsource import FileBasedSource
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.core.records import MAX_RECORD_BYTES, SerializedExample
from transforms.io.files import JsonValueSplitter, is_json_lines

FORMATS = ("csv", "jsonl", "parquet", "tfrecord")
BATCH_BYTES = 1 << 20  # records per batch of a JSON file, about; also the read size
MAX_BATCH_RECORDS = 4096  # BatchRecords' largest batch
_DETECT_BYTES = 1 << 20  # a JSON file's first bytes decide JSONL or multi-line JSON
_COMPRESSED_READ_BYTES = 1 << 17  # a compressed file's bytes decompressed at a time


class Input(NamedTuple):
    """The one input of a run, by flag name (exactly one is set)."""

    input_files: str | None = None
    input_table: str | None = None
    input_query: str | None = None
    input_subscription: str | None = None
    input_topic: str | None = None
    input_dir: str | None = None
    input_manifest: str | None = None

    def given(self):
        return [f"--{name}" for name, value in self._asdict().items() if value]


class ImageInput(NamedTuple):
    """One image as it arrived: its bytes and where they came from."""

    source_id: str  # the caller's id, else the file path or `<message id>/<instance index>`
    source: str  # file path, or `pubsub:<message id>`
    label: str | None
    data: bytes


def detect_format(pattern):
    name = pattern.lower().removesuffix(".gz")
    for suffix, fmt in (
        (".csv", "csv"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
        (".tfrecord", "tfrecord"),
        (".tfrecords", "tfrecord"),
    ):
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"--input_files: cannot tell the format of {pattern} from its extension; "
        f"give --input_format ({', '.join(FORMATS)})"
    )


class ReadRecords(beam.PTransform):
    """Raw records from exactly one `Input` (see the module docstring for what each yields). `file_format`
    names the format of input_files (default: from the extension); `max_file_bytes` bounds how much of
    each image file in input_dir is read (a file over it arrives cut to max_file_bytes + 1 bytes, so the
    image step can dead-letter it as too_large without holding it whole). `batched=True`: lists of records."""

    def __init__(self, source, file_format=None, max_file_bytes=None, batched=False):
        super().__init__()
        if len(source.given()) != 1:
            raise ValueError(f"give exactly one input flag, got {source.given() or 'none'}")
        self._source, self._format, self._max_file_bytes = source, file_format, max_file_bytes
        self._batched = batched

    def expand(self, pbegin):
        s = self._source
        if not (s.input_files and (self._format or detect_format(s.input_files)) == "jsonl"):
            records = pbegin | "Read" >> _ReadRecordsOneByOne(s, self._format, self._max_file_bytes)
            return records | "BatchRecords" >> BatchRecords() if self._batched else records
        try:
            json_files = JsonFileSource(s.input_files)
        except OSError:
            raise ValueError(f"--input_files: no file matches {s.input_files}; check the path or glob") from None
        batches = pbegin | "ReadJsonFiles" >> beam.io.Read(json_files)
        return batches if self._batched else batches | "Unbatch" >> beam.FlatMap(lambda batch: batch)


class BatchRecords(beam.PTransform):
    """Records -> lists of records, within each window and bundle (Beam's BatchElements: a streaming batch
    never waits for a later bundle, and never mixes windows)."""

    def __init__(self, max_batch_size=MAX_BATCH_RECORDS):
        super().__init__()
        self._max = max_batch_size

    def expand(self, records):
        return records | "BatchElements" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._max)


class _ReadRecordsOneByOne(beam.PTransform):
    """Every input but JSON files, one record per element."""

    def __init__(self, source, file_format, max_file_bytes):
        super().__init__()
        self._source, self._format, self._max_file_bytes = source, file_format, max_file_bytes

    def expand(self, pbegin):
        s = self._source
        if s.input_subscription or s.input_topic:
            return pbegin | "ReadPubsub" >> beam.io.ReadFromPubSub(
                subscription=s.input_subscription, topic=s.input_topic, with_attributes=True
            )
        if s.input_query:
            return pbegin | "ReadBigQuery" >> beam.io.ReadFromBigQuery(
                query=s.input_query, use_standard_sql=True, method=beam.io.ReadFromBigQuery.Method.EXPORT
            )
        if s.input_table:
            tables = s.input_table.split(",")  # date shards, as pipelines.options.check_input lists them
            reads = [
                pbegin
                | (f"ReadBigQuery[{table}]" if len(tables) > 1 else "ReadBigQuery")
                >> beam.io.ReadFromBigQuery(table=table, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ)
                for table in tables
            ]
            return reads[0] if len(reads) == 1 else reads | "FlattenShards" >> beam.Flatten()
        if s.input_manifest:
            return pbegin | "ReadManifest" >> beam.io.ReadFromText(s.input_manifest, coder=beam.coders.BytesCoder())
        if s.input_dir:
            root = s.input_dir.rstrip("/")
            return (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(FileSystems.join(root, "**"))
                | "ReadMatches" >> fileio.ReadMatches()
                | "ToImageInput" >> beam.Map(_folder_input, root, self._max_file_bytes)
            )
        fmt = self._format or detect_format(s.input_files)
        if fmt == "csv":
            return (
                pbegin
                # pandas' default float parser can be a few ulp off on 17-digit values; round_trip is exact
                | "ReadCsv" >> beam.io.ReadFromCsv(s.input_files, float_precision="round_trip")
                | "RowsToDicts" >> beam.Map(lambda row: row._asdict())
            )
        if fmt == "parquet":
            return pbegin | "ReadParquet" >> beam.io.ReadFromParquet(s.input_files)
        if fmt == "tfrecord":
            return (
                pbegin
                | "ReadTfRecord" >> beam.io.ReadFromTFRecord(s.input_files, coder=beam.coders.BytesCoder())
                | "AsExamples" >> beam.Map(SerializedExample)
            )
        raise ValueError(f"--input_files: unknown format {fmt!r}; give --input_format ({', '.join(FORMATS)})")


class JsonFileSource(FileBasedSource):
    """JSON log files -> batches (lists) of records as bytes, about BATCH_BYTES each, decided per file: a JSONL
    file gives its lines (without line endings, blank ones included), any other JSON file its values
    (files.JsonValueSplitter). JSONL files are split into byte ranges like Beam's text source: a range owns
    the lines that start in it, and claims one position per batch (its last line's start), so dynamic
    splits never cut a batch. A multi-line JSON file is read whole by the range that starts at 0 (the others
    find it is not JSONL and yield nothing). `.gz` files are read whole. A JSONL range is read and
    decompressed by a thread a few chunks ahead of its batches (`read_ahead`). A record over MAX_RECORD_BYTES
    is cut to MAX_RECORD_BYTES + 1 bytes while reading (the parse step dead-letters it as too_large)."""

    def __init__(self, file_pattern, batch_bytes=BATCH_BYTES, max_record_bytes=MAX_RECORD_BYTES):
        super().__init__(file_pattern)
        self._batch_bytes, self._max = batch_bytes, max_record_bytes

    def open_file(self, file_name):
        """Beam's file, but a compressed one decompresses a little at a time (Beam's decompresses 16 MiB of
        compressed bytes per refill, which would stall `read_ahead`'s reader behind one long decompression)."""
        compression = CompressionTypes.detect_compression_type(file_name)
        if compression == CompressionTypes.UNCOMPRESSED:
            return super().open_file(file_name)
        raw = FileSystems.open(file_name, "application/octet-stream", CompressionTypes.UNCOMPRESSED)
        return CompressedFile(raw, compression, read_size=_COMPRESSED_READ_BYTES)

    def read_records(self, file_name, range_tracker):
        start = range_tracker.start_position()
        with self.open_file(file_name) as f:
            head = f.read(_DETECT_BYTES)
            if not is_json_lines(head.removeprefix(codecs.BOM_UTF8)):
                if start == 0 and range_tracker.try_claim(0):
                    yield from self._json_values(head.removeprefix(codecs.BOM_UTF8), f)
                return
            f.seek(max(start - 1, 0))  # from start - 1: the line holding that byte belongs to the range before
            with closing(read_ahead(partial(f.read, self._batch_bytes))) as chunks:
                yield from claimed_line_batches(chunks, start, range_tracker, self._max)

    def _json_values(self, chunk, f):
        splitter, batch, size = JsonValueSplitter(self._max), [], 0
        while chunk:
            for record in splitter.feed(chunk):
                batch.append(record)
                size += len(record)
            if size >= self._batch_bytes:
                yield batch
                batch, size = [], 0
            chunk = f.read(self._batch_bytes)
        batch.extend(splitter.close())
        if batch:
            yield batch

    def default_output_coder(self):
        return beam.coders.PickleCoder()


def read_ahead(read, depth=4):
    """The chunks `read()` returns up to its first b"", read by a thread up to `depth` chunks ahead, so that
    reading and decompressing a file (zlib, bz2 and lzma release the GIL) overlap the work on the chunks
    before. A read's error is raised here, in its turn. Closing the generator stops and joins the thread."""
    chunks, stop = queue.Queue(depth), threading.Event()

    def fill():
        try:
            while not stop.is_set():
                chunk = read()
                chunks.put(chunk)
                if not chunk:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reader, raised there
            chunks.put(e)

    thread = threading.Thread(target=fill, name="read_ahead", daemon=True)
    thread.start()
    try:
        while (chunk := chunks.get()) and not isinstance(chunk, BaseException):
            yield chunk
        if chunk:
            raise chunk
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put on a full queue; the thread then sees `stop`
            try:
                chunks.get(timeout=0.01)
            except queue.Empty:
                pass
        thread.join()


def claimed_line_batches(chunks, start, range_tracker, max_line_bytes):
    """The lines of a byte range as batches, each batch the lines of one chunk. `chunks` is the file read from
    offset `start` (or `start - 1` when start > 0: the first line there, up to its newline, belongs to the
    previous range). Positions are claimed through `range_tracker` (one claim per batch: its last line's
    start; line by line only when that claim fails, at the range's end). A line over `max_line_bytes` is cut
    to max_line_bytes + 1 bytes, never held whole."""
    pos = start - 1 if start > 0 else 0  # file offset of buf[0]
    buf, skipping = b"", start > 0
    long_line = None  # [start, size, head] of a line over the limit while its rest is skipped
    for chunk in chunks:
        if skipping or long_line:
            nl = chunk.find(b"\n")
            if long_line:
                long_line[1] += len(chunk) if nl < 0 else nl
                long_line[2] += chunk[: max(0, max_line_bytes + 2 - len(long_line[2]))]
            if nl < 0:
                pos += len(chunk)
                continue
            if long_line:
                if not range_tracker.try_claim(long_line[0]):
                    return
                yield [_long_line(*long_line, max_line_bytes)]
                long_line = None
            skipping, pos, chunk = False, pos + nl + 1, chunk[nl + 1 :]
        buf += chunk
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0:
            if not (yield from _claimed(buf[:last_nl], pos, range_tracker, max_line_bytes)):
                return
            pos, buf = pos + last_nl + 1, buf[last_nl + 1 :]
        if len(buf) > max_line_bytes + 1:  # + 1: a line ending \r\n is not part of the record
            long_line, pos, buf = [pos, len(buf), buf[: max_line_bytes + 2]], pos + len(buf), b""
    if long_line:
        if range_tracker.try_claim(long_line[0]):
            yield [_long_line(*long_line, max_line_bytes)]
    elif buf:
        yield from _claimed(buf, pos, range_tracker, max_line_bytes)


def _long_line(_start, size, head, max_line_bytes):
    """A line read as its first max_line_bytes + 2 bytes and its size: whole if it fits, else cut to max + 1."""
    if size <= len(head) and head.endswith(b"\r"):
        head = head[:-1]
    return head[: max_line_bytes + 1]


def _lines(raw, max_line_bytes):
    lines = raw.split(b"\n")
    if b"\r" in raw:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if len(raw) > max_line_bytes:
        lines = [line[: max_line_bytes + 1] for line in lines]
    return lines


def _claimed(raw, pos, range_tracker, max_line_bytes):
    """Yields the lines of `raw` (whole lines starting at file offset `pos`, without the last line ending) that
    the range owns, as one batch; returns whether it owns them all. Claims must rise strictly, failed ones
    included, so the batch's last line is claimed only when the range's end lies beyond it; else line by
    line up to the end."""
    last_start = pos + raw.rfind(b"\n") + 1
    if last_start < range_tracker.stop_position():
        if range_tracker.try_claim(last_start):
            yield _lines(raw, max_line_bytes)
            return True
        # A dynamic split moved the end below last_start just now: the lines before the new end are this
        # range's all the same (the residual starts at the first line at or after it).
        owned, stop = [], range_tracker.stop_position()
    else:
        owned, stop = [], None
    for line in raw.split(b"\n"):
        if pos >= stop if stop is not None else not range_tracker.try_claim(pos):
            break
        owned.extend(_lines(line, max_line_bytes))
        pos += len(line) + 1
    if owned:
        yield owned
    return False


def _folder_input(readable_file, root, max_bytes=None):
    path = readable_file.metadata.path
    relative = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
    label = relative.split("/")[0] if "/" in relative else None  # a file directly under the root has none
    with readable_file.open() as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    return ImageInput(relative, path, label, data)
