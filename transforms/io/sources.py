import posixpath
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems


class ReadLogRecords(beam.PTransform):
    """Raw log records from exactly one source: Pub/Sub subscription or topic (PubsubMessage with
    attributes), newline-delimited JSON files (str lines; .gz read transparently; local or gs:// globs),
    or a BigQuery table holding a Cloud Logging export (dict rows)."""

    def __init__(self, subscription=None, topic=None, file_pattern=None, table=None):
        super().__init__()
        given = [x for x in (subscription, topic, file_pattern, table) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of --input_subscription, --input_topic, --input_files, --input_table")
        self._subscription, self._topic, self._files, self._table = subscription, topic, file_pattern, table

    def expand(self, pbegin):
        if self._subscription or self._topic:
            return pbegin | "ReadPubsub" >> beam.io.ReadFromPubSub(
                subscription=self._subscription, topic=self._topic, with_attributes=True)
        if self._files:
            return pbegin | "ReadFiles" >> beam.io.ReadFromText(self._files)
        return pbegin | "ReadBigQuery" >> beam.io.ReadFromBigQuery(
            table=self._table, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ)


FORMATS = ("csv", "jsonl", "parquet", "tfrecord")



def detect_format(pattern):
    name = pattern.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"),
                        (".tfrecord", "tfrecord"), (".tfrecords", "tfrecord")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"--input_files: cannot tell the format of {pattern} from its extension; "
                     f"give --input_format ({', '.join(FORMATS)})")



def example_to_dict(serialized):
    """A tf.train.Example -> {feature: first value} (UTF-8 bytes decoded to text, other bytes kept, such as
    encoded images; empty lists are missing)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    row = {}
    for name, feature in example.features.feature.items():
        values = feature.bytes_list.value or feature.float_list.value or feature.int64_list.value
        if values:
            value = values[0]
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            row[name] = value
    return row



class ReadFeatureRecords(beam.PTransform):
    """Records as dicts (JSONL lines stay text, parsed by CleanseRecords so bad JSON is a dead letter) from
    files (CSV with a header, JSONL, Parquet, TFRecord of tf.train.Example) or BigQuery (table or query)."""

    def __init__(self, files=None, file_format=None, table=None, query=None):
        super().__init__()
        if sum(bool(x) for x in (files, table, query)) != 1:
            raise ValueError("give exactly one of --input_files, --input_table, --input_query")
        self._files, self._format, self._table, self._query = files, file_format, table, query

    def expand(self, pbegin):
        if self._table or self._query:
            return pbegin | "ReadBigQuery" >> beam.io.ReadFromBigQuery(
                table=self._table, query=self._query, use_standard_sql=True,
                method=beam.io.ReadFromBigQuery.Method.DIRECT_READ if self._table else
                beam.io.ReadFromBigQuery.Method.EXPORT)
        fmt = self._format or detect_format(self._files)
        if fmt == "csv":
            return (pbegin
                    | "ReadCsv" >> beam.io.ReadFromCsv(self._files)
                    | "RowsToDicts" >> beam.Map(lambda row: row._asdict()))
        if fmt == "parquet":
            return pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self._files)
        if fmt == "tfrecord":
            return (pbegin
                    | "ReadTfRecord" >> beam.io.ReadFromTFRecord(self._files, coder=beam.coders.BytesCoder())
                    | "ExamplesToDicts" >> beam.Map(example_to_dict))
        return pbegin | "ReadJsonl" >> beam.io.ReadFromText(self._files)


class ImageInput(NamedTuple):
    """One image as it arrived: its bytes and where they came from."""
    source_id: str  # the caller's id, else the file path or `<message id>/<instance index>`
    source: str  # file path, or `pubsub:<message id>`
    label: Optional[str]
    data: bytes


class ReadImageSources(beam.PTransform):
    """Raw inputs from exactly one source: Pub/Sub (PubsubMessage), a folder tree `<root>/<label>/<file>`
    (ImageInput; label = first folder under the root) or a CSV/JSONL manifest of `uri,label` (text lines)."""

    def __init__(self, subscription=None, topic=None, input_dir=None, manifest=None):
        super().__init__()
        given = [x for x in (subscription, topic, input_dir, manifest) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of --input_subscription, --input_topic, --input_dir, --input_manifest")
        self._subscription, self._topic, self._dir, self._manifest = subscription, topic, input_dir, manifest

    def expand(self, pbegin):
        if self._subscription or self._topic:
            return pbegin | "ReadPubsub" >> beam.io.ReadFromPubSub(
                subscription=self._subscription, topic=self._topic, with_attributes=True)
        if self._manifest:
            return pbegin | "ReadManifest" >> beam.io.ReadFromText(self._manifest)
        root = self._dir.rstrip("/")
        return (pbegin
                | "MatchFiles" >> fileio.MatchFiles(FileSystems.join(root, "**"))
                | "ReadMatches" >> fileio.ReadMatches()
                | "ToImageInput" >> beam.Map(_folder_input, root))



def _folder_input(readable_file, root):
    path = readable_file.metadata.path
    relative = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
    label = relative.split("/")[0] if "/" in relative else None  # a file directly under the root has none
    return ImageInput(relative, path, label, readable_file.read())
