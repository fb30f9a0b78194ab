"""The preprocessing pipeline's steps around tf.Transform: reading records in any supported format,
cleansing them against the feature spec, splitting deterministically, and the statistics rows."""

import hashlib
import math
from typing import NamedTuple

import apache_beam as beam

from transforms.core.records import is_missing, record_dict
from transforms.core.splits import assign_splits, streaming_split
from transforms.io.deadletter import GuardedDoFn, RecordError


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


class _SplitOneStratum(beam.DoFn):
    def __init__(self, fractions):
        self._fractions = fractions

    def process(self, keyed):
        _, rows = keyed
        splits = assign_splits([row.split_hash for row in rows], self._fractions)
        for row in rows:  # a re-iteration: Dataflow's grouped values can be iterated again
            yield row._replace(split=splits[row.split_hash])


class AssignStratifiedSplits(beam.PTransform):
    """Within each value of the spec's `stratify` column (after defaults), rows ordered by key hash and cut
    by rank: every split gets its fraction of each value's rows, to within one row (one row per key). Rows
    with one key and one value share a hash, so they stay together."""

    def __init__(self, spec):
        super().__init__()
        self._column, self._fractions = spec.stratify_by, spec.split_fractions

    def expand(self, rows):
        column = self._column
        return (
            rows
            | "KeyByStratum" >> beam.Map(lambda row: (row.filled[column], row))
            | "GroupByStratum" >> beam.GroupByKey()
            | "SplitEachStratum" >> beam.ParDo(_SplitOneStratum(self._fractions))
        )
