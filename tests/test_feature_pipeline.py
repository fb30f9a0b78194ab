"""The preprocessing pipeline end to end on the local runner: statistics per split against pandas on the
same rows, transformed TFRecords against transforms worked out with numpy from the training split,
the exported transform function giving the same values at serving time, every input format, the
stratified split of the bundled sample, and the statistics table in the BigQuery emulator."""

import glob
import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import bigquery

from pipelines import feature_stats
from tests.test_sli_e2e import ROOT, bq_client
from transforms.features.artifacts import read_statistics

SPEC = """
key: id
label: y
splits: {train: 0.7, eval: 0.3}
features:
  - {name: x, type: numeric, default: 5, clip: [0, 100], transforms: [scale_to_0_1, z_score, {bucketize: 4}]}
  - {name: big, type: numeric, default: 0, transforms: [log]}
  - {name: c, type: categorical, default: "", transforms: [{vocabulary: {top_k: 3}}, {hash: 8}]}
  - {name: d, type: categorical, default: none, transforms: [{vocabulary: {top_k: 2, one_hot: true}}]}
  - {name: t, type: text, default: "", transforms: [{vocabulary: {top_k: 50}}]}
  - {name: y, type: label}
crosses:
  - {features: [c, d], hash_buckets: 16}
"""
C_WEIGHTS = {"a": 0.4, "b": 0.25, "c": 0.15, "d": 0.12, "e": 0.08}


def make_frame(n=600, seed=3):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"k{i:05d}" for i in range(n)],
            "x": np.round(rng.normal(50, 30, n), 3),
            "big": rng.uniform(1e11, 1e13, n),
            "c": rng.choice(list(C_WEIGHTS), n, p=list(C_WEIGHTS.values())),
            "d": rng.choice(["p", "q", "r"], n, p=[0.5, 0.3, 0.2]),
            "t": [" ".join(rng.choice(["red", "green", "blue"], rng.integers(1, 4))) for _ in range(n)],
            "y": rng.choice(["no", "yes"], n, p=[0.7, 0.3]),
        }
    )
    frame.loc[rng.random(n) < 0.1, "x"] = np.nan  # missing values
    return frame


def run_pipeline(spec_path, out, *flags):
    options = PipelineOptions(
        ["--runner", "FnApiRunner", "--feature_spec", str(spec_path), "--output_dir", str(out), *flags]
    )
    settings = feature_stats.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        feature_stats.build(pipeline, options, settings)


def read_examples(out, split):
    rows = []
    for path in sorted(glob.glob(f"{out}/{split}/examples-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            features = tf.train.Example.FromString(record.numpy()).features.feature
            rows.append(
                {k: list(v.bytes_list.value or v.float_list.value or v.int64_list.value) for k, v in features.items()}
            )
    return rows


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    frame = make_frame()
    (tmp / "spec.yaml").write_text(SPEC)
    with open(tmp / "data.jsonl", "w") as f:
        for record in frame.to_dict("records"):
            f.write(json.dumps({k: v for k, v in record.items() if not (isinstance(v, float) and np.isnan(v))}) + "\n")
        f.write('{"id": "bad", "x": "ten", "c": "a", "d": "p", "t": "red", "y": "no"}\n')
    run_pipeline(tmp / "spec.yaml", tmp / "out", "--input_files", str(tmp / "data.jsonl"))
    return tmp, frame


def split_of(key):
    """The documented split rule, worked out again: MD5 of the key, its first 15 hex digits as a fraction."""
    return "train" if int(hashlib.md5(key.encode()).hexdigest()[:15], 16) / 16**15 < 0.7 else "eval"


def test_rows_go_to_the_split_of_their_key_hash(jsonl_run):
    tmp, frame = jsonl_run
    for split in ("train", "eval"):
        keys = sorted(r["id"][0].decode() for r in read_examples(tmp / "out", split))
        assert keys == sorted(k for k in frame["id"] if split_of(k) == split)


def test_statistics_match_pandas_per_split(jsonl_run):
    tmp, frame = jsonl_run
    stats = read_statistics(tmp / "out")
    for split in ("train", "eval"):
        part = frame[frame["id"].map(split_of) == split]
        s = stats[split]
        assert s["rows"] == len(part)
        x = s["features"]["x"]
        assert (x["count"], x["missing"]) == (len(part), int(part["x"].isna().sum()))
        assert (x["min"], x["max"]) == (part["x"].min(), part["x"].max())
        assert x["mean"] == pytest.approx(part["x"].mean(), rel=1e-12)
        assert x["std"] == pytest.approx(part["x"].std(ddof=0), rel=1e-9)
        assert x["quantiles"]["0.5"] == pytest.approx(
            np.sort(part["x"].dropna())[int(0.5 * (part["x"].count() - 1))], rel=0.01
        )
        assert sum(b["count"] for b in x["histogram"]) == part["x"].count()
        big = s["features"]["big"]
        assert big["mean"] == pytest.approx(part["big"].mean(), rel=1e-12)
        assert big["std"] == pytest.approx(part["big"].std(ddof=0), rel=1e-9)
        c = s["features"]["c"]
        counts = part["c"].value_counts()
        assert c["distinct"] == len(counts)
        # most frequent first, ties by value
        assert [(t["value"], t["count"]) for t in c["top_values"]] == sorted(
            counts.items(), key=lambda vc: (-vc[1], vc[0])
        )


def test_transforms_use_the_training_statistics(jsonl_run):
    tmp, frame = jsonl_run
    filled = frame.assign(x=frame["x"].fillna(5).clip(0, 100))
    train = filled[filled["id"].map(split_of) == "train"]
    lo, hi, mean, std = train["x"].min(), train["x"].max(), train["x"].mean(), train["x"].std(ddof=0)
    vocab_c = list(train["c"].value_counts().index[:3])
    vocab_d = list(train["d"].value_counts().index[:2])
    vocab_y = list(train["y"].value_counts().index)
    by_id = filled.set_index("id")
    for split in ("train", "eval"):
        rows = read_examples(tmp / "out", split)
        assert rows
        for row in rows:
            raw = by_id.loc[row["id"][0].decode()]
            assert row["x_scaled"][0] == pytest.approx((raw["x"] - lo) / (hi - lo), abs=1e-5)
            assert row["x_z"][0] == pytest.approx((raw["x"] - mean) / std, abs=1e-4)
            assert 0 <= row["x_bucket"][0] <= 3
            assert row["big_log"][0] == pytest.approx(np.log1p(raw["big"]), rel=1e-6)
            assert row["c_index"][0] == (vocab_c.index(raw["c"]) if raw["c"] in vocab_c else -1)
            assert row["d_onehot"] == [1.0 if v == raw["d"] else 0.0 for v in vocab_d]
            assert 0 <= row["c_hash"][0] < 8 and 0 <= row["c_x_d_hash"][0] < 16
            assert row["y"][0] == vocab_y.index(raw["y"])
            assert len(row["t_index"]) == len(raw["t"].split())


def test_exported_transform_gives_the_same_values_at_serving_time(jsonl_run):
    import tensorflow_transform as tft

    tmp, frame = jsonl_run
    output = tft.TFTransformOutput(str(tmp / "out"))
    eval_rows = {r["id"][0].decode(): r for r in read_examples(tmp / "out", "eval")}
    raw = frame.set_index("id").loc[sorted(eval_rows)].reset_index()
    raw["x"] = raw["x"].fillna(5).clip(0, 100)
    features = {
        name: tf.constant(raw[name].to_numpy(dtype=np.float32 if name in ("x", "big") else object))
        for name in ("id", "x", "big", "c", "d", "t", "y")
    }
    served = output.transform_raw_features(features)
    for i, key in enumerate(sorted(eval_rows)):
        assert served["x_scaled"][i].numpy() == pytest.approx(eval_rows[key]["x_scaled"][0], abs=1e-6)
        assert int(served["c_index"][i]) == eval_rows[key]["c_index"][0]


def test_bad_records_are_dead_letters(jsonl_run):
    tmp, _ = jsonl_run
    dead = [json.loads(line) for p in (tmp / "out").glob("dead_letters-*.jsonl") for line in p.read_text().splitlines()]
    assert [(d["reason"], json.loads(d["payload_string"])["id"]) for d in dead] == [("wrong_type", "bad")]


def test_csv_parquet_and_tfrecord_inputs_give_the_same_statistics(jsonl_run, tmp_path):
    tmp, frame = jsonl_run
    clean = frame.dropna(subset=["x"])  # CSV/Parquet columns are typed per column; keep them numeric
    clean.to_csv(tmp_path / "data.csv", index=False)
    clean.to_parquet(tmp_path / "data.parquet", index=False)
    with tf.io.TFRecordWriter(str(tmp_path / "data.tfrecord")) as writer:
        for record in clean.to_dict("records"):
            feature = {
                k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                if isinstance(v, float)
                else tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
                for k, v in record.items()
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    results = {}
    for name in ("data.csv", "data.parquet", "data.tfrecord"):
        run_pipeline(tmp / "spec.yaml", tmp_path / name.replace(".", "-"), "--input_files", str(tmp_path / name))
        results[name] = read_statistics(tmp_path / name.replace(".", "-"))
    train = clean[clean["id"].map(split_of) == "train"]
    for name, stats in results.items():
        assert stats["train"]["rows"] == len(train), name
        assert stats["train"]["features"]["c"]["top_values"][0]["count"] == train["c"].value_counts().iloc[0], name
        tolerance = 1e-6 if name == "data.tfrecord" else 1e-12  # TFRecord floats are float32
        assert stats["train"]["features"]["x"]["mean"] == pytest.approx(train["x"].mean(), rel=tolerance), name


def test_bundled_sample_is_stratified_and_statistics_reach_bigquery(services, project, tmp_path):
    bq = bq_client(services, project)
    bq.create_dataset("ml", exists_ok=True)
    run_pipeline(
        feature_stats.SAMPLE_SPEC,
        tmp_path / "out",
        "--project",
        project,
        "--temp_location",
        str(tmp_path / "tmp"),
        "--stats_table",
        f"{project}:ml.feature_statistics",
    )
    stats = read_statistics(tmp_path / "out")
    labels = {
        split: {t["value"]: t["count"] for t in stats[split]["features"]["churned"]["top_values"]}
        for split in ("train", "eval")
    }
    for label in ("yes", "no"):
        total = labels["train"][label] + labels["eval"][label]
        assert labels["train"][label] == round(0.7 * total)  # exactly 70% of each label in train
    rows = [
        dict(r) for r in bq.query("SELECT split, feature, count, missing, mean FROM ml.feature_statistics").result()
    ]
    assert len(rows) == 2 * len(stats["train"]["features"])
    age = {r["split"]: r for r in rows if r["feature"] == "age"}
    for split in ("train", "eval"):
        assert age[split]["missing"] == stats[split]["features"]["age"]["missing"]
        assert age[split]["mean"] == pytest.approx(stats[split]["features"]["age"]["mean"])
    sql = (ROOT / "sql" / "feature_statistics_by_split.sql").read_text()
    assert sql.strip() in (ROOT / "docs" / "feature_stats.md").read_text()
    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("run_id", "STRING", stats["run_id"])]
    )
    report = [dict(r) for r in bq.query(sql, job_config=job_config).result()]
    assert [(r["feature"], r["split"]) for r in report] == sorted(
        (f, s) for s in ("train", "eval") for f in stats["train"]["features"]
    )
    for r in report:
        f = stats[r["split"]]["features"][r["feature"]]
        assert r["missing_rate"] == pytest.approx(f["missing"] / f["count"])


def test_spec_errors_name_the_field(tmp_path):
    from transforms.core.config import ConfigError
    from transforms.features.spec import load_feature_spec

    for text, words in [
        ("key: id\nfeatures: [{name: a, type: numeric, transforms: [hash]}]", "needs a number of buckets"),
        ("key: id\nfeatures: [{name: a, type: numeric, default: 1, transforms: [{hash: 4}]}]", "cannot take 'hash'"),
        ("key: id\nfeatures: [{name: a, type: categorical}]", "give a default"),
        ("key: id\nsplits: {train: 0.5, eval: 0.2}\nfeatures: [{name: a, type: label}]", "sum to 1"),
        ("key: id\nstratify: true\nfeatures: [{name: a, type: label}]", "stratify: true needs a label"),
        (
            "key: id\nfeatures: [{name: a, type: categorical, default: x,"
            " transforms: [{vocabulary: {one_hot: true}}]}]",
            "one_hot needs top_k",
        ),
    ]:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_feature_spec(path)
        assert words in str(e.value) and str(path) in str(e.value)
    assert load_feature_spec(Path(feature_stats.SAMPLE_SPEC)).label == "churned"


def test_a_udf_reshapes_and_filters_records_first(jsonl_run, tmp_path):
    tmp, frame = jsonl_run
    udf = tmp_path / "udf.py"
    udf.write_text(
        "def process(record):\n"
        "    import json\n"
        "    row = json.loads(record)\n"
        "    if row.get('c') == 'e':\n"
        "        return None\n"
        "    row['x'] = row.pop('x_old', row.get('x'))\n"
        "    return row\n"
    )
    run_pipeline(tmp / "spec.yaml", tmp_path / "out", "--input_files", str(tmp / "data.jsonl"), "--udf_path", str(udf))
    stats = read_statistics(tmp_path / "out")
    kept = frame[frame["c"] != "e"]
    assert stats["train"]["rows"] + stats["eval"]["rows"] == len(kept)
    assert {t["value"] for t in stats["train"]["features"]["c"]["top_values"]} == {"a", "b", "c", "d"}
