"""The training analysis handed to tf.Transform (transforms/features/analysis.py): vocabularies by tf.Transform's
rule worked out by hand; the accumulator against numpy and collections.Counter on arbitrary tables, one, merged
and tree-merged; and a pipeline whose spec leaves tf.Transform nothing to analyze: its exported transform,
loaded by tft.TFTransformOutput and applied to raw rows, against numpy on the training split's statistics and
against the same preprocessing function analyzed by tf.Transform's own analyzers."""

import collections
import hashlib

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_feature_pipeline import read_examples, run_pipeline
from transforms.features.analysis import TrainingAnalysisFn, needs_tft_analysis, vocabulary
from transforms.features.spec import make_preprocessing_fn, parse_feature_spec

DUMMY = b"49d0cd50-04bb-48c0-bc6f-5b575dce351a"  # tf.Transform's token for an empty vocabulary

SPEC = """
key: id
label: y
splits: {train: 0.7, eval: 0.3}
features:
  - {name: x, type: numeric, default: 5, clip: [0, 100], transforms: [scale_to_0_1, z_score]}
  - {name: flat, type: numeric, default: 2, transforms: [scale_to_0_1, z_score]}
  - {name: c, type: categorical, default: "", transforms: [{vocabulary: {top_k: 3, num_oov_buckets: 1}}]}
  - {name: d, type: categorical, default: none, transforms: [{vocabulary: {frequency_threshold: 40}}]}
  - {name: y, type: label}
"""


def test_vocabulary_follows_tf_transform_rule():
    counts = {"a": 5, "c": 3, "b": 3, "": 9, "x\ny": 9, "r\r": 9, "é": 3, "z": 1}
    # most frequent first, ties in reverse byte order ("é" is 0xc3 0xa9, after "c"); empty and newlines left out
    assert vocabulary(counts, None, 0) == [b"a", "é".encode(), b"c", b"b", b"z"]
    assert vocabulary(counts, 2, 0) == [b"a", "é".encode()]
    assert vocabulary(counts, None, 3) == [b"a", "é".encode(), b"c", b"b"]
    assert vocabulary(counts, None, 6) == [DUMMY]
    assert vocabulary({}, 3, 0) == [DUMMY]


SPEC_MODEL = parse_feature_spec(SPEC, "test")
columns = st.lists(
    st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from(["", "p", "q", "r\n", "é"])), max_size=40
)


def _analyze(tables):
    fn = TrainingAnalysisFn(SPEC_MODEL)
    return (
        fn.create_accumulator()
        if not tables
        else fn.merge_accumulators([fn.add_input(fn.create_accumulator(), t) for t in tables])
    )


def _table(rows):
    return pa.table(
        {
            "x": pa.array([v for v, _ in rows], pa.float64()),
            "flat": pa.array([2.0] * len(rows), pa.float64()),
            "c": pa.array([s for _, s in rows], pa.string()),
            "d": pa.array([s for _, s in rows], pa.string()),
            "y": pa.array(["yes" if v > 0 else "no" for v, _ in rows], pa.string()),
        }
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(columns, min_size=1, max_size=6))
def test_analysis_of_any_batches_matches_numpy_one_merged_and_tree_merged(batches):
    rows = [row for batch in batches for row in batch]
    x = np.array([v for v, _ in rows], np.float32).astype(np.float64)
    expected_counts = collections.Counter(s for _, s in rows)
    fn = TrainingAnalysisFn(SPEC_MODEL)
    one = fn.extract_output(fn.add_input(fn.create_accumulator(), _table(rows)))
    merged = fn.extract_output(_analyze([_table(b) for b in batches]))
    leaves = [fn.add_input(fn.create_accumulator(), _table(b)) for b in batches]
    while len(leaves) > 1:
        leaves = [fn.merge_accumulators(leaves[i : i + 2]) for i in range(0, len(leaves), 2)]
    tree = fn.extract_output(leaves[0])
    for out in (one, merged, tree):
        if len(x):
            low, high, mean, var = out["x"]
            assert (low, high) == (x.min(), x.max())
            assert mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-6)
            assert var == pytest.approx(x.var(), rel=1e-7, abs=1e-4)
            assert out["flat"] == [2.0, 2.0, 2.0, 0.0]
        else:
            assert out["x"] == out["flat"] == [0.0, 0.0, 0.0, 0.0]
        assert out["c"] == vocabulary(expected_counts, 3, 0)
        assert out["d"] == vocabulary(expected_counts, None, 40)


def make_frame(n=400, seed=11):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"k{i:05d}" for i in range(n)],
            "x": np.round(rng.normal(50, 30, n), 3),
            "flat": np.full(n, 7.0),
            "c": rng.choice(["a", "b", "c", "d", "e"], n, p=[0.4, 0.25, 0.15, 0.12, 0.08]),
            "d": rng.choice(["p", "q", "r"], n, p=[0.6, 0.3, 0.1]),
            "y": rng.choice(["no", "yes"], n, p=[0.7, 0.3]),
        }
    )
    frame.loc[rng.random(n) < 0.1, "x"] = np.nan
    return frame


def _train(frame):
    """The documented split rule again: the key's MD5 (first 15 hex digits as a fraction) below 0.7."""
    return frame["id"].map(lambda k: int(hashlib.md5(k.encode()).hexdigest()[:15], 16) / 16**15 < 0.7)


def _filled(frame):
    return frame.assign(x=frame["x"].fillna(5).clip(0, 100))


def _serve(transform_output, raw):
    return transform_output.transform_raw_features(
        {n: tf.constant(raw[n].to_numpy(dtype=np.float32 if n in ("x", "flat") else object)) for n in raw.columns}
    )


def _tft_reference(filled_train, tmp):
    """The same preprocessing function with tf.Transform's own analyzers, analyzed on the training rows."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from transforms.features.spec import tf_feature_spec

    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(tf_feature_spec(SPEC_MODEL)))
    rows = filled_train.to_dict("records")
    with beam.Pipeline("FnApiRunner") as pipeline, tft_beam.Context(temp_dir=str(tmp / "tft_tmp")):
        transform_fn = (pipeline | beam.Create(rows), metadata) | tft_beam.AnalyzeDataset(
            make_preprocessing_fn(SPEC_MODEL)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "reference"))
    return tft.TFTransformOutput(str(tmp / "reference"))


def test_exported_transform_from_the_pipelines_analysis_matches_numpy_and_tf_transform(tmp_path):
    import tensorflow_transform as tft

    assert not needs_tft_analysis(SPEC_MODEL)
    frame = make_frame()
    (tmp_path / "spec.yaml").write_text(SPEC)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "data.parquet")
    run_pipeline(tmp_path / "spec.yaml", tmp_path / "out", "--input_files", str(tmp_path / "data.parquet"))

    filled = _filled(frame)
    train = filled[_train(frame)]
    x = train["x"].to_numpy(np.float32).astype(np.float64)
    lo, hi, mean, std = x.min(), x.max(), x.mean(), x.std()
    vocab_c = [v for v, _ in sorted(collections.Counter(train["c"]).items(), key=lambda vc: (-vc[1], vc[0]))][:3]
    vocab_d = [v for v, n in sorted(collections.Counter(train["d"]).items(), key=lambda vc: (-vc[1], vc[0])) if n >= 40]
    vocab_y = [v for v, _ in sorted(collections.Counter(train["y"]).items(), key=lambda vc: (-vc[1], vc[0]))]
    assert len(set(collections.Counter(train["c"]).values())) == 5  # no ties: the order is by count alone

    output = tft.TFTransformOutput(str(tmp_path / "out"))
    assert output.vocabulary_by_name("vocab_c") == [v.encode() for v in vocab_c]
    unseen = pd.DataFrame(
        {
            "id": ["s0", "s1", "s2", "s3", "s4"],
            "x": [-10.0, 0.0, 33.3, 100.0, 250.0],
            "flat": [7.0, 6.0, 8.0, 7.0, 0.0],
            "c": ["a", "e", "zz", "", "b"],
            "d": ["p", "q", "r", "zz", ""],
            "y": ["no", "yes", "no", "yes", "no"],
        }
    )
    raw = pd.concat([filled.sample(60, random_state=1), unseen], ignore_index=True)
    served = _serve(output, raw)
    x32 = raw["x"].to_numpy(np.float32)
    np.testing.assert_allclose(served["x_scaled"].numpy(), (x32 - lo) / (hi - lo), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served["x_z"].numpy(), (x32 - mean) / std, rtol=1e-5, atol=1e-5)
    flat = raw["flat"].to_numpy(np.float32)
    np.testing.assert_allclose(served["flat_scaled"].numpy(), 1 / (1 + np.exp(-flat)), rtol=1e-6)  # min = max
    np.testing.assert_allclose(served["flat_z"].numpy(), flat - 7.0)  # variance 0: x - mean
    assert served["c_index"].numpy().tolist() == [vocab_c.index(v) if v in vocab_c else 3 for v in raw["c"]]
    assert served["d_index"].numpy().tolist() == [vocab_d.index(v) if v in vocab_d else -1 for v in raw["d"]]
    assert served["y"].numpy().tolist() == [vocab_y.index(v) for v in raw["y"]]

    # tf.Transform's own analyzers on the same rows: equal, the z-scores to float32 rounding of tf.Transform's
    # float32 sums (the pipeline's mean and variance are float64, rounded once)
    reference = _serve(_tft_reference(train, tmp_path), raw)
    for name in ("x_scaled", "flat_scaled", "flat_z", "c_index", "d_index", "y"):
        np.testing.assert_array_equal(served[name].numpy(), reference[name].numpy(), err_msg=name)
    np.testing.assert_allclose(served["x_z"].numpy(), reference["x_z"].numpy(), rtol=1e-5, atol=1e-5)

    examples = {r["id"][0].decode(): r for r in read_examples(tmp_path / "out", "eval")}
    eval_raw = filled.set_index("id").loc[sorted(examples)]
    assert len(examples) == (~_train(frame)).sum()
    for key, row in zip(sorted(examples), eval_raw.itertuples(), strict=True):
        assert examples[key]["x_scaled"][0] == pytest.approx((np.float32(row.x) - lo) / (hi - lo), abs=1e-6)
