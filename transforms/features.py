"""The preprocessing pipeline's steps around tf.Transform: reading records in any supported format,
cleansing them against the feature spec, splitting deterministically, and the statistics rows."""
import hashlib
import json
import math
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.deadletter import DEAD_LETTER_TAG, RecordError, make_dead_letter
from transforms.images import assign_splits, streaming_split

PIPELINE = "feature_stats"
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


class Cleansed(NamedTuple):
    split: Optional[str]  # None until AssignSplits when stratified
    raw: dict  # the feature values as read (None for missing): what the statistics describe
    filled: dict  # defaults filled, numbers clipped: what tf.Transform gets
    split_hash: str  # MD5 of the key


def is_missing(value):
    """None, NaN or empty text: a value the record does not have."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def clean_value(feature, value, required_reason="missing_required"):
    """(value as read or None, value for tf.Transform): defaults filled, numbers clipped; RecordError for a
    wrong type or a missing required value. The same function prepares training and serving inputs."""
    numeric = feature.type == "numeric" or (feature.type == "label" and feature.label_dtype == "float")
    if is_missing(value):
        if feature.required or feature.type == "label":
            raise RecordError(required_reason, f"required feature '{feature.name}' is missing")
        return None, feature.default
    if numeric:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isinf(value):
            raise RecordError("wrong_type", f"feature '{feature.name}' must be a finite number, got {value!r}")
        value = float(value)
        return value, min(max(value, feature.clip[0]), feature.clip[1]) if feature.clip else value
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RecordError("wrong_type", f"feature '{feature.name}' must be a string, got {value!r}")
    return str(value), str(value)


def cleanse(record, spec):
    """One record -> Cleansed, or RecordError: wrong type, missing required value, missing key."""
    if is_missing(record.get(spec.key)):
        raise RecordError("missing_key", f"the key column '{spec.key}' is missing")
    raw, filled = {}, {}
    for f in spec.inputs:
        raw[f.name], filled[f.name] = clean_value(f, record.get(f.name))
    key = str(record[spec.key])
    filled[spec.key] = key
    return Cleansed(None, raw, filled, hashlib.md5(key.encode("utf-8")).hexdigest())


def serving_raw_values(record, spec):
    """A serving record -> {feature: value as read, None when missing} (the label aside), for skew checks:
    a missing value is counted, a wrong type is a RecordError."""
    return {f.name: None if is_missing(record.get(f.name)) else clean_value(f, record[f.name])[0]
            for f in spec.inputs if f.type != "label"}


def serving_features(features, spec):
    """A scoring request's features -> what tf.Transform got in training (defaults, clipping, types);
    the label is not needed, and missing required features are `missing_feature`."""
    return {f.name: clean_value(f, features.get(f.name), "missing_feature")[1]
            for f in spec.inputs if f.type != "label"}


def record_dict(record):
    """A record as read (dict, or JSON text/bytes) -> dict; RecordError("invalid_json") otherwise."""
    if isinstance(record, dict):
        return record
    try:
        row = json.loads(record)
    except ValueError as e:
        raise RecordError("invalid_json", f"not JSON: {e}") from None
    if not isinstance(row, dict):
        raise RecordError("invalid_json", f"a record must be a JSON object, got {type(row).__name__}")
    return row


class CleanseRecords(beam.DoFn):
    """Raw record -> Cleansed with its split (by key hash; left to AssignSplits when stratified) or a
    dead letter with the reason."""

    STEP = "CleanseRecords"

    def __init__(self, spec):
        self._spec = spec

    def process(self, record):
        try:
            cleansed = cleanse(record_dict(record), self._spec)
        except RecordError as e:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, make_dead_letter(PIPELINE, self.STEP, record, e))
            return
        if not self._spec.stratify:
            cleansed = cleansed._replace(split=streaming_split(cleansed.split_hash, self._spec.split_fractions))
        yield cleansed


class _SplitOneLabel(beam.DoFn):
    def __init__(self, fractions):
        self._fractions = fractions

    def process(self, keyed):
        _, rows = keyed
        splits = assign_splits([row.split_hash for row in rows], self._fractions)
        for row in rows:  # a re-iteration: Dataflow's grouped values can be iterated again
            yield row._replace(split=splits[row.split_hash])


class AssignStratifiedSplits(beam.PTransform):
    """Within each label value, rows ordered by key hash and cut by rank: every split keeps the label's
    proportions exactly. Rows with one key share a hash, so they stay together."""

    def __init__(self, spec):
        super().__init__()
        self._label, self._fractions = spec.label, spec.split_fractions

    def expand(self, rows):
        label = self._label
        return (rows
                | "KeyByLabel" >> beam.Map(lambda row: (row.filled[label], row))
                | "GroupByLabel" >> beam.GroupByKey()
                | "SplitEachLabel" >> beam.ParDo(_SplitOneLabel(self._fractions)))


STATS_BQ_SCHEMA = {"fields": [
    {"name": "run_id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "computed_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    {"name": "split", "type": "STRING", "mode": "REQUIRED"},
    {"name": "feature", "type": "STRING", "mode": "REQUIRED"},
    {"name": "type", "type": "STRING", "mode": "REQUIRED"},
    {"name": "count", "type": "INTEGER", "mode": "REQUIRED"},
    {"name": "missing", "type": "INTEGER", "mode": "REQUIRED"},
    {"name": "min", "type": "FLOAT", "mode": "NULLABLE"},
    {"name": "max", "type": "FLOAT", "mode": "NULLABLE"},
    {"name": "mean", "type": "FLOAT", "mode": "NULLABLE"},
    {"name": "std", "type": "FLOAT", "mode": "NULLABLE"},
    {"name": "distinct", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "quantiles", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "q", "type": "FLOAT", "mode": "REQUIRED"}, {"name": "value", "type": "FLOAT", "mode": "REQUIRED"}]},
    {"name": "histogram", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "low", "type": "FLOAT", "mode": "REQUIRED"}, {"name": "high", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "count", "type": "INTEGER", "mode": "REQUIRED"}]},
    {"name": "top_values", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "value", "type": "STRING", "mode": "REQUIRED"}, {"name": "count", "type": "INTEGER", "mode": "REQUIRED"}]},
]}


def stats_rows(artifact, run_id, computed_at):
    """A split's statistics artifact -> one BigQuery row per feature."""
    for name, f in artifact["features"].items():
        yield {
            "run_id": run_id, "computed_at": computed_at, "split": artifact["split"], "feature": name,
            "type": f["type"], "count": f["count"], "missing": f["missing"],
            "min": f.get("min"), "max": f.get("max"), "mean": f.get("mean"), "std": f.get("std"),
            "distinct": f.get("distinct"),
            "quantiles": [{"q": float(q), "value": v} for q, v in f.get("quantiles", {}).items()],
            "histogram": f.get("histogram", []),
            "top_values": f.get("top_values", []),
        }


def read_statistics(output_dir):
    """{split: artifact} from a run's statistics.json (for the skew check, reports and tests)."""
    with FileSystems.open(FileSystems.join(str(output_dir), "statistics.json"), compression_type="uncompressed") as f:
        return json.loads(f.read())
