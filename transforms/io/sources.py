"""Every source of the project: one composite, `ReadRecords`, reads the one input a pipeline was given.

What each input yields (the raw records the pipelines' parse steps take):
- Pub/Sub subscription or topic: `PubsubMessage` (body bytes, attributes, message id, publish time).
- Files (local or gs:// globs; `.gz` decompressed): JSON records as bytes (decoded per record by the parse
  step, so one invalid UTF-8 line is one dead letter, not a failed read): JSONL lines, or, in a file whose
  first line is not a whole JSON object, each of its concatenated or array-wrapped JSON values (log4j2
  `JsonLayout` complete=true, logback pretty-printed; see files.JsonValueSplitter); CSV rows as dicts (header
  names), Parquet rows as dicts, TFRecords as `SerializedExample` (decoded by the parse step).
- A text manifest (one line per image): lines as bytes.
- A BigQuery table (Storage Read API) or query: dict rows.
- A folder of images `<root>/<label>/<file>`: `ImageInput`, each file read only up to its size limit.
"""

import codecs
import posixpath
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms.core.records import MAX_RECORD_BYTES, SerializedExample
from transforms.io.files import JsonValueSplitter, is_json_lines

FORMATS = ("csv", "jsonl", "parquet", "tfrecord")
_JSON_LINES_FILES = "json_lines_files"
_JSON_CHUNK_BYTES = 1 << 20  # the first chunk decides JSONL or multi-line JSON


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
    image step can dead-letter it as too_large without holding it whole)."""

    def __init__(self, source, file_format=None, max_file_bytes=None):
        super().__init__()
        if len(source.given()) != 1:
            raise ValueError(f"give exactly one input flag, got {source.given() or 'none'}")
        self._source, self._format, self._max_file_bytes = source, file_format, max_file_bytes

    def expand(self, pbegin):
        s = self._source
        if s.input_subscription or s.input_topic:
            return pbegin | "ReadPubsub" >> beam.io.ReadFromPubSub(
                subscription=s.input_subscription, topic=s.input_topic, with_attributes=True
            )
        if s.input_table or s.input_query:
            return pbegin | "ReadBigQuery" >> beam.io.ReadFromBigQuery(
                table=s.input_table,
                query=s.input_query,
                use_standard_sql=True,
                method=beam.io.ReadFromBigQuery.Method.DIRECT_READ
                if s.input_table
                else beam.io.ReadFromBigQuery.Method.EXPORT,
            )
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
        files = (
            pbegin
            | "MatchJsonFiles" >> fileio.MatchFiles(s.input_files, fileio.EmptyMatchTreatment.DISALLOW)
            | "ReadJsonMatches" >> fileio.ReadMatches()
            | "SplitJsonValues" >> beam.ParDo(_JsonFileRecords()).with_outputs(_JSON_LINES_FILES, main="records")
        )
        lines = files[_JSON_LINES_FILES] | "ReadJsonl" >> beam.io.ReadAllFromText(coder=beam.coders.BytesCoder())
        return (files.records, lines) | "FlattenJsonRecords" >> beam.Flatten()


class _JsonFileRecords(beam.DoFn):
    """A JSON file -> its records when it holds multi-line JSON values (see files.JsonValueSplitter), read as a
    stream; a JSONL file -> its path, to the `_JSON_LINES_FILES` output (read by lines, splittable)."""

    def process(self, readable_file):
        with readable_file.open() as f:
            chunk = f.read(_JSON_CHUNK_BYTES).removeprefix(codecs.BOM_UTF8)
            if is_json_lines(chunk):
                yield beam.pvalue.TaggedOutput(_JSON_LINES_FILES, readable_file.metadata.path)
                return
            splitter = JsonValueSplitter(MAX_RECORD_BYTES)
            while chunk:
                yield from splitter.feed(chunk)
                chunk = f.read(_JSON_CHUNK_BYTES)
            yield from splitter.close()


def _folder_input(readable_file, root, max_bytes=None):
    path = readable_file.metadata.path
    relative = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
    label = relative.split("/")[0] if "/" in relative else None  # a file directly under the root has none
    with readable_file.open() as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    return ImageInput(relative, path, label, data)
