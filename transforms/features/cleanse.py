"""The preprocessing pipeline's steps around tf.Transform: cleansing records against the feature spec
(one record at a time, or an Arrow table at a time with the same outcome row for row), and splitting
deterministically by a key hash, on batches of rows (CleansedBatch)."""

import hashlib
import math
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms.core.columnar import register_columnar
from transforms.core.records import is_missing, record_dict
from transforms.core.splits import assign_splits, streaming_split
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedDoFn, RecordError, make_dead_letter
from transforms.io.record_batches import (
    CsvChunk,
    JsonChunk,
    TfRecordChunk,
    chunk_records,
    decode_csv,
    decode_jsonl,
    decode_tfrecord,
)


class Cleansed(NamedTuple):
    split: str | None  # None until AssignSplits when stratified
    raw: dict  # the feature values as read (None for missing): what the statistics describe
    filled: dict  # defaults filled, numbers clipped: what tf.Transform gets
    split_hash: str  # MD5 of the key


def clean_value(feature, value, required_reason="missing_required"):
    """(value as read or None, value for tf.Transform): defaults filled, numbers clipped; RecordError for a
    wrong type or a missing required value. The same function prepares training and serving inputs."""
    numeric = feature.is_numeric
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
    return {
        f.name: None if is_missing(record.get(f.name)) else clean_value(f, record[f.name])[0]
        for f in spec.inputs
        if f.type != "label"
    }


def serving_features(features, spec):
    """A scoring request's features -> what tf.Transform got in training (defaults, clipping, types);
    the label is not needed, and missing required features are `missing_feature`."""
    return {
        f.name: clean_value(f, features.get(f.name), "missing_feature")[1] for f in spec.inputs if f.type != "label"
    }


class CleanseRecords(GuardedDoFn):
    """Raw record -> Cleansed with its split (by key hash; left to AssignSplits when stratified) or a
    dead letter with the reason."""

    STEP = "CleanseRecords"

    def __init__(self, spec, pipeline_name):
        super().__init__(pipeline_name)
        self._spec = spec

    def handle(self, record):
        cleansed = cleanse(record_dict(record), self._spec)
        if not self._spec.stratify:
            cleansed = cleansed._replace(split=streaming_split(cleansed.split_hash, self._spec.split_fractions))
        yield cleansed


@register_columnar
class CleansedBatch(NamedTuple):
    """Cleansed rows, a column per feature: `raw` (see statistics.raw_table) and `filled` (the key column and
    every input, defaults filled and numbers clipped) are Arrow tables, `split` (a numpy array of split
    names; None until AssignStratifiedSplits when stratified) and `split_hash` (MD5 hex of each key) are
    per row."""

    split: np.ndarray | None
    raw: pa.Table
    filled: pa.Table
    split_hash: np.ndarray

    @property
    def num_rows(self):
        return self.raw.num_rows

    def take(self, indices):
        indices = np.asarray(indices, np.int64)
        return CleansedBatch(
            None if self.split is None else self.split[indices],
            self.raw.take(indices),
            self.filled.take(indices),
            self.split_hash[indices],
        )


def batches_by_split(batch, splits) -> Iterator[tuple[str, CleansedBatch]]:
    """A CleansedBatch -> (split, the batch's rows of that split) for every split it has rows of."""
    for name in splits:
        rows = np.flatnonzero(batch.split == name)
        if len(rows):
            yield name, batch.take(rows)


def raw_of_split(split_batch) -> tuple[str, pa.Table]:
    """(split, CleansedBatch) -> (split, its raw table): what the statistics take."""
    return split_batch[0], split_batch[1].raw


def _schemas(spec):
    numeric = [f.name for f in spec.inputs if f.is_numeric]
    raw = pa.schema([(f.name, pa.float64() if f.name in numeric else pa.string()) for f in spec.inputs])
    return raw, pa.schema([(spec.key, pa.string()), *raw])


def batch_of_rows(rows, spec):
    """Cleansed rows (one by one, from `cleanse`) -> one CleansedBatch."""
    raw_schema, filled_schema = _schemas(spec)
    return CleansedBatch(
        None if spec.stratify else np.array([r.split for r in rows], object),
        pa.Table.from_pylist([r.raw for r in rows], raw_schema),
        pa.Table.from_pylist([r.filled for r in rows], filled_schema),
        np.array([r.split_hash for r in rows], object),
    )


def split_positions(hashes):
    """MD5 hex digests -> split_fraction of each, as an array (the first 15 hex digits as a fraction)."""
    digests = np.frombuffer(bytes.fromhex("".join(hashes)), ">u8").reshape(-1, 2)[:, 0] if len(hashes) else []
    return (np.asarray(digests, np.uint64) >> np.uint64(4)).astype(np.float64) / 16**15


def streaming_splits(hashes, fractions):
    """streaming_split of every hash at once."""
    cumulative, total = [], 0.0
    for _, fraction in fractions:
        total += fraction
        cumulative.append(total)
    index = np.minimum(np.searchsorted(cumulative, split_positions(hashes), side="right"), len(fractions) - 1)
    return np.array([name for name, _ in fractions], object)[index]


def _wrong_type(feature, value):
    if feature.is_numeric:
        return RecordError("wrong_type", f"feature '{feature.name}' must be a finite number, got {value!r}")
    return RecordError("wrong_type", f"feature '{feature.name}' must be a string, got {value!r}")


def _column(feature, column, n):
    """One input column -> (raw values, missing mask, wrong-type mask), by the rules of clean_value: raw
    values are a float64 numpy array (NaN where missing or wrong) for numeric features, else an Arrow
    string array."""
    numeric = feature.is_numeric
    if column is None or pa.types.is_null(column.type):
        missing = np.ones(n, bool)
        return (np.full(n, np.nan) if numeric else pa.nulls(n, pa.string())), missing, ~missing
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    null = column.is_null().to_numpy(zero_copy_only=False)
    kind = column.type
    is_number = (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not pa.types.is_boolean(kind)
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if numeric and is_number:
        values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        missing = np.isnan(values)
        wrong = np.isinf(values)
        return np.where(wrong, np.nan, values), missing, wrong
    if not numeric and (is_text or pa.types.is_integer(kind)):
        values = pc.cast(column, pa.string())
        missing = null | pc.equal(values, "").fill_null(True).to_numpy(zero_copy_only=False)
        return pc.if_else(pa.array(missing), None, values), missing, np.zeros(n, bool)
    if is_text:  # text for a numeric feature: only the empty text is missing
        missing = null | pc.equal(column, "").fill_null(True).to_numpy(zero_copy_only=False)
    elif pa.types.is_floating(kind):  # a float for a string feature: NaN is missing
        missing = null | pc.is_nan(column).fill_null(True).to_numpy(zero_copy_only=False)
    else:
        missing = null
    return (np.full(n, np.nan) if numeric else pa.nulls(n, pa.string())), missing, ~missing


def _arrow(values):
    """A numpy column (NaN for null) or an Arrow one -> Arrow."""
    return values if isinstance(values, pa.Array) else pa.array(values, from_pandas=True)


def cleanse_table(table, spec, shown=None):
    """A table of records -> (CleansedBatch of the rows that pass, {row index: RecordError} of those that do
    not), the same outcome for every row as `cleanse` of that row: the first failing check in the same order
    (the key, then each input in spec order) gives the reason. `shown` {column: values}: what a wrong-type
    message shows instead of the table's value (the text of a CSV cell)."""
    n = table.num_rows
    names = set(table.column_names)
    errors = {}
    keys = table.column(spec.key).to_pylist() if spec.key in names else [None] * n
    for i, key in enumerate(keys):
        if is_missing(key):
            errors[i] = RecordError("missing_key", f"the key column '{spec.key}' is missing")
    raw, filled = {}, {}
    for f in spec.inputs:
        column = table.column(f.name).combine_chunks() if f.name in names else None
        values, missing, wrong = _column(f, column, n)
        required = f.required or f.type == "label"
        for i in np.flatnonzero(wrong | (missing & required)):
            if i not in errors:
                errors[int(i)] = (
                    _wrong_type(f, (shown or {}).get(f.name, column)[int(i)].as_py())
                    if wrong[i]
                    else RecordError("missing_required", f"required feature '{f.name}' is missing")
                )
        raw[f.name] = values
        if f.is_numeric:
            value = np.where(missing, np.nan if f.default is None else float(f.default), values)
            filled[f.name] = np.clip(value, *f.clip) if f.clip else value
        else:
            filled[f.name] = values if f.default is None else pc.fill_null(values, str(f.default))
    ok = np.setdiff1d(np.arange(n), np.fromiter(errors, np.int64, len(errors)))
    raw_schema, filled_schema = _schemas(spec)
    key_strings = np.array([str(keys[i]) for i in ok], object)
    hashes = np.array([hashlib.md5(k.encode("utf-8")).hexdigest() for k in key_strings], object)
    indices = pa.array(ok)
    raw_table = pa.table({k: _arrow(v).take(indices) for k, v in raw.items()}, raw_schema)
    filled_table = pa.table(
        {spec.key: pa.array(key_strings, pa.string()), **{k: _arrow(v).take(indices) for k, v in filled.items()}},
        filled_schema,
    )
    split = None if spec.stratify else streaming_splits(hashes, spec.split_fractions)
    return CleansedBatch(split, raw_table, filled_table, hashes), errors


@beam.typehints.with_output_types(CleansedBatch)
class CleanseTables(beam.DoFn):
    """Arrow tables of records -> a CleansedBatch of the rows that pass, and a dead letter per row that does
    not (the row as a dict, with the reason of `cleanse`); the split by key hash unless stratified. A
    table that fails as a whole (a bug) is cleansed row by row through CleanseRecords instead."""

    STEP = CleanseRecords.STEP

    def __init__(self, spec, pipeline_name):
        self._spec, self._pipeline = spec, pipeline_name

    def setup(self):
        self._rows = CleanseRecords(self._spec, self._pipeline)

    def process(self, table):
        try:
            batch, errors = cleanse_table(table, self._spec)
        except Exception:  # noqa: BLE001 - the batch boundary: redo it record by record
            rows = [out for row in table.to_pylist() for out in self._rows.process(row)]
            clean = [row for row in rows if not isinstance(row, beam.pvalue.TaggedOutput)]
            yield from (row for row in rows if isinstance(row, beam.pvalue.TaggedOutput))
            if clean:
                yield batch_of_rows(clean, self._spec)
            return
        for i, error in sorted(errors.items()):
            payload = table.slice(i, 1).to_pylist()[0]
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, make_dead_letter(self._pipeline, self.STEP, payload, error, None)
            )
        if batch.num_rows:
            yield batch


@beam.typehints.with_output_types(CleansedBatch)
class CleanseChunks(beam.DoFn):
    """Chunks of records (record_batches.CsvChunk, JsonChunk, TfRecordChunk) -> CleansedBatches of the rows that
    pass and a dead letter per record that does not, each with the outcome the per-record path gives it: the
    chunk is decoded into a table (record_batches.decode_*) and cleansed by cleanse_table; the records the
    decoder leaves to the per-record path go through CleanseRecords. A chunk that fails as a whole (mixed
    kinds of values in a JSON column, a corrupt example) is redone record by record (counted as
    `<pipeline>:batch_fallbacks`): CSV lines each as a chunk of one, other records through CleanseRecords."""

    STEP = CleanseRecords.STEP

    def __init__(self, spec, pipeline_name):
        self._spec, self._pipeline = spec, pipeline_name

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._rows = CleanseRecords(self._spec, self._pipeline)
        self._fallbacks = Metrics.counter(self._pipeline, "batch_fallbacks")
        numeric = {f.name for f in self._spec.inputs if f.is_numeric}
        columns = {self._spec.key, *(f.name for f in self._spec.inputs)}
        known = {"key": self._spec.key, "numeric": numeric, "columns": columns}
        self._decode = {
            CsvChunk: partial(decode_csv, **known),
            JsonChunk: partial(decode_jsonl, **known),
            TfRecordChunk: partial(decode_tfrecord, **known, decoder=example_coder.ExamplesToRecordBatchDecoder()),
        }

    def process(self, chunk):
        try:
            outputs = list(self._cleanse(chunk))
        except Exception:  # noqa: BLE001 - the batch boundary: redo it record by record
            self._fallbacks.inc()
            outputs = list(self._one_by_one(chunk))
        yield from outputs

    def _cleanse(self, chunk):
        records = chunk_records(chunk)
        decoded = self._decode[type(chunk)](chunk)
        batch, row_errors = cleanse_table(decoded.table, self._spec, decoded.shown)
        errors = {**decoded.errors, **{int(decoded.rows[i]): e for i, e in row_errors.items()}}
        for i in sorted(errors):
            yield self._dead_letter(records[i], errors[i])
        if batch.num_rows:
            yield batch
        yield from self._per_record([records[i] for i in decoded.odd])

    def _one_by_one(self, chunk):
        if not isinstance(chunk, CsvChunk):
            yield from self._per_record(chunk_records(chunk))
            return
        for line in chunk.records:
            try:
                yield from list(self._cleanse(CsvChunk(chunk.header, [line])))
            except Exception as e:  # noqa: BLE001 - the record boundary
                yield self._dead_letter(line, e)

    def _per_record(self, records):
        rows = [out for record in records for out in self._rows.process(record)]
        yield from (row for row in rows if isinstance(row, beam.pvalue.TaggedOutput))
        clean = [row for row in rows if not isinstance(row, beam.pvalue.TaggedOutput)]
        if clean:
            yield batch_of_rows(clean, self._spec)

    def _dead_letter(self, payload, error):
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG, make_dead_letter(self._pipeline, self.STEP, payload, error, None)
        )


@beam.typehints.with_output_types(CleansedBatch)
class _SplitOneStratum(beam.DoFn):
    def __init__(self, fractions):
        self._fractions = fractions

    def process(self, keyed):
        parts = list(keyed[1])
        batch = CleansedBatch(
            None,
            pa.concat_tables([p.raw for p in parts]),
            pa.concat_tables([p.filled for p in parts]),
            np.concatenate([p.split_hash for p in parts]),
        )
        splits = assign_splits(batch.split_hash.tolist(), self._fractions)
        yield batch._replace(split=np.array([splits[h] for h in batch.split_hash], object))


def _strata(batch, column):
    values = np.asarray(batch.filled.column(column).to_pylist(), object)
    for value in dict.fromkeys(values.tolist()):
        yield value, batch.take(np.flatnonzero(values == value))


class AssignStratifiedSplits(beam.PTransform):
    """Within each value of the spec's `stratify` column (after defaults), rows ordered by key hash and cut
    by rank: every split gets its fraction of each value's rows, to within one row (one row per key). Rows
    with one key and one value share a hash, so they stay together. CleansedBatches in, one per value out."""

    def __init__(self, spec):
        super().__init__()
        self._column, self._fractions = spec.stratify_by, spec.split_fractions

    def expand(self, batches):
        return (
            batches
            | "KeyByStratum" >> beam.FlatMap(_strata, self._column)
            | "GroupByStratum" >> beam.GroupByKey()
            | "SplitEachStratum" >> beam.ParDo(_SplitOneStratum(self._fractions))
        )
