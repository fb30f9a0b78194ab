"""Splits and the spec's fixed-boundary and fixed-vocabulary fields without tf.Transform: the unstratified
rule (a key's MD5 against the cumulative fractions), stratification by a categorical column (rows per
value and split counted against the fractions by hand, hash order within a value, keys kept together),
the rank cut's properties on arbitrary hashes and fractions, and the new spec fields on arbitrary input.
The tf.Transform side (np.digitize, dict lookups, serving) is in test_feature_pipeline.py."""

import hashlib
import itertools
import json
import math
import re
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.core.config import ConfigError
from transforms.core.splits import assign_splits, streaming_split
from transforms.features.cleanse import (
    AssignStratifiedSplits,
    CleanseRecords,
    CleanseTables,
    batch_of_rows,
    cleanse,
    cleanse_table,
)
from transforms.features.spec import parse_feature_spec
from transforms.io.deadletter import RecordError

PROPERTY = settings(max_examples=100, deadline=None)
SPEC_TEXT = """
key: id
label: y
stratify: region
splits: {train: 0.6, eval: 0.3, test: 0.1}
features:
  - {name: region, type: categorical, default: other}
  - {name: y, type: label}
"""


def position(key):
    """The documented hash position: the MD5 of the key, its first 15 hex digits as a fraction of 16**15."""
    return int(hashlib.md5(key.encode()).hexdigest()[:15], 16) / 16**15


def test_stratify_names_a_column_and_true_still_means_the_label():
    assert parse_feature_spec(SPEC_TEXT, "spec").stratify_by == "region"
    assert parse_feature_spec(SPEC_TEXT.replace("stratify: region", "stratify: true"), "spec").stratify_by == "y"
    assert parse_feature_spec(SPEC_TEXT.replace("stratify: region", "stratify: y"), "spec").stratify_by == "y"
    assert parse_feature_spec(SPEC_TEXT.replace("stratify: region\n", ""), "spec").stratify_by is None


def test_the_manuals_specs_load():
    manual = (Path(__file__).resolve().parent.parent / "docs" / "feature_stats.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", manual, re.S) if b.startswith("key:")]
    specs = [parse_feature_spec(b, "docs/feature_stats.md") for b in blocks]
    census = next(s for s in specs if s.key == "person_id")
    assert census.stratify_by == "sex"
    age, sex = census.features[0].transforms[0], census.features[1].transforms[0]
    assert age.boundaries == [18, 25, 30, 35, 40, 45, 50, 55, 60, 65]
    assert (sex.vocabulary.keys, sex.vocabulary.num_oov_buckets) == (["Female", "Male"], 1)


def test_unstratified_rows_go_to_the_split_of_their_key_hash():
    spec = parse_feature_spec(SPEC_TEXT.replace("stratify: region\n", ""), "spec")
    dofn = CleanseRecords(spec, "feature_stats")
    for i in range(300):
        key = f"k{i}"
        (row,) = dofn.process({"id": key, "region": "north", "y": "no"})
        p = position(key)
        assert row.split == ("train" if p < 0.6 else "eval" if p < 0.9 else "test"), key


def test_each_value_of_the_stratify_column_keeps_the_fractions():
    spec = parse_feature_spec(SPEC_TEXT, "spec")
    sizes = {"north": 50, "south": 17, "east": 3, "west": 1, None: 6}  # None: missing, so the default "other"
    records = [
        {"id": f"{region}-{i}", "region": region, "y": "no"} for region, n in sizes.items() for i in range(n)
    ] + [{"id": "twice", "region": "dup", "y": "no"}, {"id": "twice", "region": "dup", "y": "yes"}]
    # round(F n) - round(F_before n) per split, F = 0.6, 0.9, 1.0, worked out by hand:
    # 50 -> 30, 15, 5; 17 -> 10.2 and 15.3 -> 10, 5, 2; 3 -> 2, 1, 0; 1 -> 1, 0, 0; 6 -> 3.6 and 5.4 -> 4, 1, 1
    expected = {
        "north": (30, 15, 5),
        "south": (10, 5, 2),
        "east": (2, 1, 0),
        "west": (1, 0, 0),
        "other": (4, 1, 1),
    }

    def check(rows):
        by_value = {}
        for key, value, split in rows:
            by_value.setdefault(value, []).append((position(key), split))
        assert {s for _, s in by_value.pop("dup")} in ({"train"}, {"eval"}, {"test"})  # one key, one split
        counts = {
            v: tuple(sum(s == name for _, s in rows) for name in ("train", "eval", "test"))
            for v, rows in by_value.items()
        }
        assert counts == expected
        for rows in by_value.values():  # cut in hash order: train holds the lowest positions, test the highest
            assert [s for _, s in sorted(rows)] == sorted((s for _, s in rows), key=["train", "eval", "test"].index)

    rows = [cleanse(r, spec) for r in records]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([batch_of_rows(rows[i::3], spec) for i in range(3)])  # strata spread over three batches
            | AssignStratifiedSplits(spec)
            | beam.FlatMap(
                lambda b: zip(
                    b.filled.column("id").to_pylist(), b.filled.column("region").to_pylist(), b.split, strict=True
                )
            )
        )
        assert_that(out, check)


TABLE_SPEC = parse_feature_spec(
    """
key: id
label: y
splits: {train: 0.6, eval: 0.3, test: 0.1}
features:
  - {name: x, type: numeric, default: 5, clip: [0, 100]}
  - {name: n, type: numeric, required: true}
  - {name: c, type: categorical, default: none}
  - {name: y, type: label}
""",
    "spec",
)
FLOATS = st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
COLUMNS = st.sampled_from(["float", "int", "text", "bool", "null", "absent"])
VALUES = {
    "float": (FLOATS, pa.float64()),
    "int": (st.one_of(st.none(), st.integers(-(2**62), 2**62)), pa.int64()),
    "text": (st.one_of(st.none(), st.sampled_from(["", "a", "b", "7", "Zürich"])), pa.string()),
    "bool": (st.one_of(st.none(), st.booleans()), pa.bool_()),
    "null": (st.none(), pa.null()),
}


@st.composite
def tables(draw):
    n = draw(st.integers(0, 12))
    columns = {}
    for name in ("id", "x", "n", "c", "y"):
        kind = draw(COLUMNS)
        if kind != "absent":
            values, arrow_type = VALUES[kind]
            columns[name] = pa.array(draw(st.lists(values, min_size=n, max_size=n)), arrow_type)
    return pa.table(columns) if columns else pa.table({"other": pa.nulls(n)})


@PROPERTY
@given(tables())
def test_a_table_is_cleansed_row_for_row_as_cleanse_does_it(table):
    batch, errors = cleanse_table(table, TABLE_SPEC)
    expected_rows, expected_errors = [], {}
    for i, record in enumerate(table.to_pylist()):
        try:
            expected_rows.append(cleanse(record, TABLE_SPEC))
        except RecordError as e:
            expected_errors[i] = (e.reason, str(e))
    assert {i: (e.reason, str(e)) for i, e in errors.items()} == expected_errors
    assert batch.raw.to_pylist() == [r.raw for r in expected_rows]
    assert batch.filled.to_pylist() == [r.filled for r in expected_rows]
    assert batch.split_hash.tolist() == [r.split_hash for r in expected_rows]
    assert batch.split.tolist() == [streaming_split(r.split_hash, TABLE_SPEC.split_fractions) for r in expected_rows]


FRACTIONS = st.lists(st.integers(1, 20), min_size=1, max_size=4).map(
    lambda weights: [(f"s{i}", w / sum(weights)) for i, w in enumerate(weights)]
)


@PROPERTY
@given(st.lists(st.text(max_size=6), max_size=80, unique=True), FRACTIONS, st.randoms())
def test_the_rank_cut_gives_each_split_its_fraction_in_hash_order(keys, fractions, rnd):
    md5s = [hashlib.md5(k.encode()).hexdigest() for k in keys]
    splits = assign_splits(md5s, fractions)
    shuffled = md5s[:]
    rnd.shuffle(shuffled)
    assert assign_splits(shuffled, fractions) == splits  # the order rows arrive in does not matter
    assert set(splits) == set(md5s) and None not in splits.values()
    for name, fraction in fractions:
        assert abs(sum(s == name for s in splits.values()) - fraction * len(md5s)) <= 1
    names = [name for name, _ in fractions]
    along_hash = [names.index(splits[m]) for m in sorted(md5s, key=lambda m: int(m[:15], 16))]
    assert along_hash == sorted(along_hash)


ANY_VALUE = st.one_of(
    st.floats(), st.integers(-(10**20), 10**20), st.booleans(), st.none(), st.text(max_size=4), st.lists(st.none())
)


def _spec_with(transform, feature_type="numeric"):
    feature = {"name": "a", "type": feature_type, "default": 0 if feature_type == "numeric" else "x"}
    return yaml.safe_dump({"key": "id", "features": [{**feature, "transforms": [transform]}]})


@PROPERTY
@given(st.lists(ANY_VALUE, max_size=6))
def test_any_bucket_boundaries_load_as_given_or_fail_naming_the_field(values):
    try:
        spec = parse_feature_spec(_spec_with({"bucketize": values}), "fuzz.yaml")
    except ConfigError as e:
        assert "fuzz.yaml: features[0].transforms" in str(e)
        return
    boundaries = spec.features[0].transforms[0].boundaries
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    assert boundaries == [float(v) for v in values] and all(map(math.isfinite, boundaries))
    assert len(boundaries) >= 1 and all(a < b for a, b in itertools.pairwise(boundaries))


@PROPERTY
@given(st.lists(ANY_VALUE, max_size=5), st.integers(-2, 3), st.booleans())
def test_any_fixed_vocabulary_loads_or_fails_naming_the_field(keys, num_oov_buckets, one_hot):
    vocabulary = {"keys": keys, "num_oov_buckets": num_oov_buckets, "one_hot": one_hot}
    try:
        spec = parse_feature_spec(_spec_with({"vocabulary": vocabulary}, "categorical"), "fuzz.yaml")
    except ConfigError as e:
        assert "fuzz.yaml: features[0].transforms" in str(e)
        return
    v = spec.features[0].transforms[0].vocabulary
    assert v.keys == [str(k) for k in keys] and len(set(v.keys)) == len(keys) >= 1
    assert v.width == len(keys) + num_oov_buckets and num_oov_buckets >= 0
    assert spec.features[0].transforms[0].output_suffix == ("onehot" if one_hot else "index")


def test_cleanse_tables_cuts_each_bad_row_out_as_a_dead_letter_with_its_row():
    table = pa.table(
        {
            "id": ["a", None, "c", "d"],
            "x": [1.0, 2.0, float("inf"), 150.0],
            "n": [1, 2, 3, 4],
            "c": ["p", "q", "r", None],
            "y": ["no", "no", "yes", "yes"],
        }
    )
    dofn = CleanseTables(TABLE_SPEC, "feature_stats")
    dofn.setup()
    outputs = list(dofn.process(table))
    dead = [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)]
    (batch,) = [o for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [(d["reason"], d["step"], json.loads(d["payload_string"])["n"]) for d in dead] == [
        ("missing_key", "CleanseRecords", 2),
        ("wrong_type", "CleanseRecords", 3),
    ]
    assert batch.filled.to_pylist() == [
        {"id": "a", "x": 1.0, "n": 1.0, "c": "p", "y": "no"},
        {"id": "d", "x": 100.0, "n": 4.0, "c": "none", "y": "yes"},  # clipped to 100, c's default
    ]
    assert batch.raw.column("x").to_pylist() == [1.0, 150.0] and batch.raw.column("c").to_pylist() == ["p", None]
