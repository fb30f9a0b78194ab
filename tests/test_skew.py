"""Skew and drift: measures on samples from known distributions against values worked out from the
distributions themselves; the pipeline on a copy of the training data (no anomaly) and on the bundled
drifted serving data (anomalies to BigQuery and Pub/Sub emulators)."""

import hashlib
import itertools
import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from google.cloud import pubsub_v1

from pipelines import feature_stats, skew
from tests.test_sli_e2e import bq_client
from transforms.features.skew import categorical_skew, numeric_skew, training_edges
from transforms.features.statistics import (
    ComputeStatistics,
    NumericAccumulator,
    bin_counts,
    histogram,
    histogram_edges,
    raw_table,
)


def _normal_cdf(x, mean):
    return 0.5 * (1 + math.erf((x - mean) / math.sqrt(2)))


def _training_numeric(values):
    stats = NumericAccumulator().add(np.asarray(values, np.float64)).extract()
    edges = histogram_edges(stats["min"], stats["max"])
    return {**stats, "histogram": histogram(bin_counts(np.asarray(values, np.float64), edges), edges)}


def test_numeric_measures_match_the_distributions():
    rng = np.random.default_rng(0)
    train = _training_numeric(rng.normal(0, 1, 200_000))
    serving = rng.normal(0.5, 1, 200_000)
    bins = bin_counts(serving, training_edges(train["histogram"]))
    got = numeric_skew(train, {"count": len(serving), "missing": 0}, bins)
    # the same bins, with probabilities from the two normal distributions
    edges = [train["histogram"][0]["low"]] + [b["high"] for b in train["histogram"]]

    def probabilities(mean):
        cdf = [_normal_cdf(e, mean) for e in edges]
        return np.array([cdf[0]] + [b - a for a, b in itertools.pairwise(cdf)] + [1 - cdf[-1]])

    p, q = probabilities(0.0), probabilities(0.5)
    p_in = np.concatenate([[0], p[1:-1] / p[1:-1].sum(), [0]])  # training has nothing outside its own range
    m = (p_in + q) / 2
    js = 0.5 * sum(a * math.log2(a / c) for a, c in zip(p_in, m, strict=True) if a > 0) + 0.5 * sum(
        b * math.log2(b / c) for b, c in zip(q, m, strict=True) if b > 0
    )
    assert got["js_divergence"] == pytest.approx(js, abs=0.005)
    assert got["out_of_range"] == pytest.approx(q[0] + q[-1], abs=0.002)
    same = numeric_skew(train, {"count": 1, "missing": 0}, {i: b["count"] for i, b in enumerate(train["histogram"])})
    assert same["js_divergence"] == pytest.approx(0, abs=1e-12) and same["psi"] == pytest.approx(0, abs=1e-12)


def test_a_copy_of_training_values_on_the_edges_has_zero_divergence(tmp_path):
    """Tenths from 0 to 1 fall on (or a rounding away from) every edge: the training statistics (through
    JSON, as the skew pipeline reads them) and the serving bins must put each value in the same bin."""
    values = [i / 10 for i in range(11)] * 5 + [0.05, 0.45]
    with TestPipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as p:
        (
            p
            | beam.Create([("train", raw_table([{"x": v} for v in values], ["x"], []))])
            | ComputeStatistics(["train"], ["x"], [])
            | beam.Map(json.dumps)
            | beam.io.WriteToText(str(tmp_path / "statistics"), ".json", shard_name_template="")
        )
    train = json.loads((tmp_path / "statistics.json").read_text())["features"]["x"]
    bins = bin_counts(np.asarray(values, np.float64), training_edges(train["histogram"]))  # as CountInTrainingBins
    measures = numeric_skew(train, {"count": len(values), "missing": 0}, bins)
    assert measures == {"js_divergence": 0.0, "psi": 0.0, "out_of_range": 0.0}


def test_categorical_measures_match_the_distributions():
    train = {
        "count": 1000,
        "missing": 0,
        "distinct": 3,
        "top_values": [{"value": "a", "count": 500}, {"value": "b", "count": 300}, {"value": "c", "count": 200}],
    }
    serving = {
        "count": 1000,
        "missing": 0,
        "distinct": 4,
        "top_values": [
            {"value": "a", "count": 300},
            {"value": "b", "count": 300},
            {"value": "c", "count": 200},
            {"value": "d", "count": 200},
        ],
    }
    got = categorical_skew(train, serving)
    assert got["linf"] == pytest.approx(0.2)  # a: 0.5 -> 0.3, d: 0 -> 0.2
    expected_psi = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.2 - 1e-4) * math.log(0.2 / 1e-4)
    assert got["psi"] == pytest.approx(expected_psi)
    assert got["new_categories"] == ["d"]
    incomplete = categorical_skew({**train, "distinct": 40}, serving)
    assert "new_categories" not in incomplete  # beyond the listed values, "new" cannot be told


def _run(tmp_path, *flags, source=None):
    options = PipelineOptions(["--runner", "FnApiRunner", "--output_dir", str(tmp_path / "out"), *flags])
    settings = skew.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        skew.build(pipeline, options, settings, source=source)
    return json.loads((tmp_path / "out" / "anomalies.json").read_text())


def _train_rows():
    """The bundled sample's rows that the feature pipeline put in the train split (key-hash rule)."""
    rows = []
    for line in feature_stats.SAMPLE_DATA.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        key = row.get("user_id")
        if key and "tenure_days" in row and "churned" in row and isinstance(row.get("age", 0), (int, float)):
            rows.append(row)
    return rows


def train_split():
    """The rows of the bundled training statistics' train split: per label, the first 70% by key hash."""
    keys = {hashlib.md5(r["user_id"].encode()).hexdigest(): r for r in _train_rows()}
    train = []
    for label in ("yes", "no"):
        ordered = sorted(
            (h for h, r in keys.items() if r["churned"] == label), key=lambda h: (int(h[:15], 16) / 16**15, h)
        )
        train += [keys[h] for h in ordered[: round(0.7 * len(ordered))]]
    return train


def test_a_copy_of_the_training_data_has_no_anomaly(tmp_path):
    stats = json.loads((skew.SAMPLES / "training" / "statistics.json").read_text())
    train = train_split()
    assert len(train) == stats["train"]["rows"]
    report = _run(tmp_path, source=beam.Create(train))
    assert report["anomalies"] == 0
    for feature in report["features"]:
        for measure in ("js_divergence", "psi", "linf", "out_of_range", "missing_change"):
            if measure in feature["measures"]:
                assert feature["measures"][measure] == 0, (feature["feature"], measure)


def test_drifted_serving_data_raises_anomalies_to_bigquery_and_pubsub(tmp_path, services, project):
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, sub = (
        publisher.topic_path(project, "feature-anomalies"),
        subscriber.subscription_path(project, "anomalies-check"),
    )
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    bq = bq_client(services, project)
    bq.create_dataset("ml", exists_ok=True)
    report = _run(
        tmp_path, "--project", project, "--anomalies_table", f"{project}:ml.skew_anomalies", "--anomalies_topic", topic
    )
    by_feature = {f["feature"]: f for f in report["features"]}
    assert by_feature["country"]["measures"]["new_categories"] == ["MX"]
    assert {a["measure"] for a in by_feature["age"]["anomalies"]} >= {"psi"}
    assert by_feature["device"]["measures"]["missing_change"] > 0.1  # 3% -> 20% missing
    assert not by_feature["tenure_days"]["anomalies"] and not by_feature["income"]["anomalies"]
    rows = {r["feature"]: dict(r) for r in bq.query("SELECT feature, anomalies FROM ml.skew_anomalies").result()}
    assert set(rows) == set(by_feature)
    assert len(rows["country"]["anomalies"]) == len(by_feature["country"]["anomalies"])
    messages = subscriber.pull(subscription=sub, max_messages=20, timeout=10).received_messages
    published = sorted(json.loads(m.message.data)["feature"] for m in messages)
    assert published == sorted(f for f, v in by_feature.items() if v["anomalies"])


def test_a_udf_reshapes_serving_records_first(tmp_path):
    udf = tmp_path / "older.js"
    udf.write_text(
        "function process(inJson) { var r = JSON.parse(inJson); if (r.age) { r.age = r.age + 30; }"
        " return JSON.stringify(r); }"
    )
    report = _run(tmp_path, "--udf_path", str(udf))
    age = {f["feature"]: f for f in report["features"]}["age"]
    assert age["measures"]["out_of_range"] > 0.3  # most customers now older than any in training
