"""The preprocessing pipeline end to end on the local runner: splits stratified by a categorical column
against a pandas ranking, statistics per split against pandas on the same rows, transformed TFRecords
against transforms worked out with numpy from the training split (fixed bucket boundaries against
np.digitize, fixed vocabularies against a dict), the exported transform function giving the same values
at serving time, every input format, the stratified split of the bundled sample, and the statistics
table in the BigQuery emulator."""

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
stratify: c
splits: {train: 0.7, eval: 0.3}
features:
  - {name: x, type: numeric, default: 5, clip: [0, 100], transforms: [scale_to_0_1, z_score, {bucketize: 4}]}
  - {name: big, type: numeric, default: 0, transforms: [log]}
  - {name: age, type: numeric, default: 0, transforms: [{bucketize: [18, 25, 30, 35, 40, 45, 50, 55, 60, 65]}]}
  - {name: c, type: categorical, default: "", transforms: [{vocabulary: {top_k: 3, num_oov_buckets: 1}}, {hash: 8}]}
  - {name: d, type: categorical, default: none, transforms: [{vocabulary: {top_k: 2, one_hot: true}}]}
  - {name: sex, type: categorical, default: "", transforms: [{vocabulary: {keys: [Female, Male], num_oov_buckets: 2}}]}
  - {name: t, type: text, default: "", transforms: [{vocabulary: {top_k: 50}}]}
  - {name: tags, type: text, default: "", transforms: [{vocabulary: {keys: [red, green], num_oov_buckets: 1}}]}
  - {name: y, type: label}
crosses:
  - {features: [c, d], hash_buckets: 16}
"""
C_WEIGHTS = {"a": 0.4, "b": 0.25, "c": 0.15, "d": 0.12, "e": 0.08}
AGE_BOUNDARIES = [18, 25, 30, 35, 40, 45, 50, 55, 60, 65]
SEX = {"Female": 0, "Male": 1}
TAGS = {"red": 0, "green": 1}
NUMERIC = ("x", "big", "age")


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
    more = np.random.default_rng(seed + 1)  # the columns above stay as they were before these
    frame["age"] = more.integers(10, 80, n).astype(float)  # whole numbers: many rows sit on a boundary
    frame["sex"] = more.choice(["Female", "Male", "Other", "X"], n, p=[0.45, 0.45, 0.05, 0.05])
    frame["tags"] = [" ".join(more.choice(["red", "green", "blue", "teal"], more.integers(1, 4))) for _ in range(n)]
    return frame


def oov_index(value, vocabulary_size, buckets):
    """Out of vocabulary: the FarmHash64 bucket after the vocabulary (TensorFlow's own hash as reference)."""
    return vocabulary_size + int(tf.strings.to_hash_bucket_fast(value, buckets))


def age_buckets(ages):
    """tft.apply_buckets' convention: bucket i holds boundary[i-1] <= x < boundary[i] (float32 both sides)."""
    return np.digitize(np.asarray(ages, np.float32), np.asarray(AGE_BOUNDARIES, np.float32), right=False)


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


def splits_of(frame):
    """The documented stratified rule, worked out again with pandas: within each value of c, keys ranked by
    the MD5 of the key (its first 15 hex digits as a fraction); the first round(0.7 n) go to train."""
    position = frame["id"].map(lambda k: int(hashlib.md5(k.encode()).hexdigest()[:15], 16) / 16**15)
    rank = position.groupby(frame["c"]).rank(method="first")
    size = frame.groupby("c")["id"].transform("size")
    return pd.Series(np.where(rank <= (0.7 * size).round(), "train", "eval"), index=frame.index)


def test_rows_are_split_by_key_hash_rank_within_each_value_of_the_stratify_column(jsonl_run):
    tmp, frame = jsonl_run
    splits = splits_of(frame)
    for split in ("train", "eval"):
        keys = sorted(r["id"][0].decode() for r in read_examples(tmp / "out", split))
        assert keys == sorted(frame["id"][splits == split])
    train = {r["id"][0].decode() for r in read_examples(tmp / "out", "train")}
    for value, n in frame["c"].value_counts().items():  # every value of c: 70% of its rows, to within a row
        in_train = sum(k in train for k in frame["id"][frame["c"] == value])
        assert abs(in_train - 0.7 * n) <= 0.5, value


def test_statistics_match_pandas_per_split(jsonl_run):
    tmp, frame = jsonl_run
    stats = read_statistics(tmp / "out")
    for split in ("train", "eval"):
        part = frame[splits_of(frame) == split]
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
    train = filled[splits_of(frame) == "train"]
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
            assert row["age_bucket"] == [age_buckets([raw["age"]])[0]]
            assert row["c_index"][0] == (vocab_c.index(raw["c"]) if raw["c"] in vocab_c else 3)  # one OOV bucket
            assert row["sex_index"] == [SEX.get(raw["sex"], oov_index(raw["sex"], 2, 2))]
            assert row["tags_index"] == [TAGS.get(tag, 2) for tag in raw["tags"].split()]
            assert row["d_onehot"] == [1.0 if v == raw["d"] else 0.0 for v in vocab_d]
            assert 0 <= row["c_hash"][0] < 8 and 0 <= row["c_x_d_hash"][0] < 16
            assert row["y"][0] == vocab_y.index(raw["y"])
            assert len(row["t_index"]) == len(raw["t"].split())


def serve(output, raw):
    """The exported transform function applied to a frame of raw (filled) values."""
    return output.transform_raw_features(
        {
            name: tf.constant(raw[name].to_numpy(dtype=np.float32 if name in NUMERIC else object))
            for name in ("id", *NUMERIC, "c", "d", "sex", "t", "tags", "y")
        }
    )


def test_exported_transform_gives_the_same_values_at_serving_time(jsonl_run):
    import tensorflow_transform as tft

    tmp, frame = jsonl_run
    output = tft.TFTransformOutput(str(tmp / "out"))
    eval_rows = {r["id"][0].decode(): r for r in read_examples(tmp / "out", "eval")}
    raw = frame.set_index("id").loc[sorted(eval_rows)].reset_index()
    raw["x"] = raw["x"].fillna(5).clip(0, 100)
    served = serve(output, raw)
    for i, key in enumerate(sorted(eval_rows)):
        assert served["x_scaled"][i].numpy() == pytest.approx(eval_rows[key]["x_scaled"][0], abs=1e-6)
        assert int(served["c_index"][i]) == eval_rows[key]["c_index"][0]
        assert int(served["age_bucket"][i]) == eval_rows[key]["age_bucket"][0]

    # values the data never had: on, just below and beyond every boundary, unseen categories and tokens
    ages = [b + d for b in AGE_BOUNDARIES for d in (-0.5, 0.0, 1e-3)] + [-1e9, 0.0, 1e9]
    n = len(ages)
    unseen = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(n)],
            "x": np.linspace(0, 100, n),
            "big": np.full(n, 1e12),
            "age": ages,
            "c": (["a", "b", "e", "zz", ""] * n)[:n],
            "d": ["p"] * n,
            "sex": (["Female", "Male", "female", "Other", "", "M"] * n)[:n],
            "t": ["red"] * n,
            "tags": (["red", "green blue", "teal red green", "Red"] * n)[:n],
            "y": ["no"] * n,
        }
    )
    served = serve(output, unseen)
    assert served["age_bucket"].numpy().tolist() == age_buckets(ages).tolist()
    assert age_buckets([17.5, 18, 18.001, 65, 1e9]).tolist() == [0, 1, 1, 10, 10]  # the convention, by hand
    assert served["sex_index"].numpy().tolist() == [SEX.get(v, oov_index(v, 2, 2)) for v in unseen["sex"]]
    vocab_c = list(frame[splits_of(frame) == "train"]["c"].value_counts().index[:3])
    assert served["c_index"].numpy().tolist() == [vocab_c.index(v) if v in vocab_c else 3 for v in unseen["c"]]
    tags = tf.RaggedTensor.from_sparse(served["tags_index"]).to_list()
    assert tags == [[TAGS.get(tag, 2) for tag in v.split()] for v in unseen["tags"]]


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
    train = clean[splits_of(clean) == "train"]
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


NUM = "key: id\nfeatures: [{name: a, type: numeric, default: 1, transforms: "
CAT = "key: id\nfeatures: [{name: a, type: categorical, default: x, transforms: "


def test_spec_errors_name_the_field(tmp_path):
    from transforms.core.config import ConfigError
    from transforms.features.spec import load_feature_spec

    for text, words in [
        ("key: id\nfeatures: [{name: a, type: numeric, transforms: [hash]}]", "needs a number of buckets"),
        ("key: id\nfeatures: [{name: a, type: numeric, default: 1, transforms: [{hash: 4}]}]", "cannot take 'hash'"),
        ("key: id\nfeatures: [{name: a, type: categorical}]", "give a default"),
        ("key: id\nsplits: {train: 0.5, eval: 0.2}\nfeatures: [{name: a, type: label}]", "sum to 1"),
        ("key: id\nstratify: true\nfeatures: [{name: a, type: label}]", "stratify: true needs a label"),
        (f"{NUM}[{{bucketize: [18, 30, 25]}}]}}]", "features[0].transforms: bucketize boundaries must be"),
        (f"{NUM}[{{bucketize: [1, 1]}}]}}]", "strictly increasing; got [1.0, 1.0]"),
        (f"{NUM}[{{bucketize: []}}]}}]", "one or more finite numbers"),
        (f"{NUM}[{{bucketize: [0, .inf]}}]}}]", "one or more finite numbers"),
        (f"{NUM}[{{bucketize: [0, .nan]}}]}}]", "one or more finite numbers"),
        (f"{NUM}[{{bucketize: [0, ten]}}]}}]", "features[0].transforms.boundaries[1]: Input should be a valid number"),
        (f"{NUM}[{{bucketize: 2}}, {{bucketize: [1, 2]}}]}}]", "two transforms would both write ['a_bucket']"),
        (f"{CAT}[{{vocabulary: {{keys: [F, M, F]}}}}]}}]", "keys listed twice: ['F']"),
        (f"{CAT}[{{vocabulary: {{keys: [F], top_k: 3}}}}]}}]", "keys is a fixed vocabulary: leave out top_k"),
        (f"{CAT}[{{vocabulary: {{keys: []}}}}]}}]", "features[0].transforms.keys: List should have at least 1 item"),
        (f"{CAT}[{{vocabulary: {{keys: [F], num_oov_buckets: -1}}}}]}}]", "num_oov_buckets: Input should be greater"),
        (f"stratify: b\n{NUM}[]}}, {{name: b, type: numeric, default: 0}}]", "stratify: 'b' must name a categorical"),
        (f"stratify: nope\n{CAT}[]}}]", "stratify: 'nope' must name a categorical feature or the label"),
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


def test_a_default_outside_clip_is_rejected_with_the_field_named(tmp_path):
    from transforms.core.config import ConfigError
    from transforms.features.spec import load_feature_spec

    path = tmp_path / "spec.yaml"
    feature = "{name: a, type: numeric, default: %s, clip: [11.5, 14.5]}"
    path.write_text(f"key: id\nfeatures: [{{name: id, type: key}}, {feature % 0}]")
    with pytest.raises(ConfigError) as e:
        load_feature_spec(path)
    assert (
        f"--feature_spec {path}: features[1]: feature 'a': default 0 is outside clip [11.5, 14.5] (defaults are"
        " not clipped); give a default within clip, or widen clip"
    ) in str(e.value)
    for inside in ("11.5", "14.5", "12"):  # the bounds themselves are inside
        path.write_text(f"key: id\nfeatures: [{feature % inside}]")
        assert load_feature_spec(path).features[0].default == float(inside)
