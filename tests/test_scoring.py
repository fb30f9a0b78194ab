"""Scoring: the model handler against direct model calls, inputs checked against the signature, and the
batch pipeline end to end into the BigQuery emulator. The models are trained here, in the test."""

import base64
import json
import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.transforms import window
from google.cloud import bigquery, pubsub_v1

from pipelines import image_ingest, score
from pipelines.samples.images import LABELS
from pipelines.samples.score_model import encoded_image, export_serving, sample_requests, train_classifier
from tests.pubsub_wait import wait_for_messages
from tests.test_sli_e2e import bq_client
from transforms.io.deadletter import RecordError
from transforms.scoring.model import (
    LoadedModel,
    ScoringBatch,
    ScoringRequest,
    TfModelHandler,
    prediction_row,
    prediction_rows,
    prepare_example,
    stack_examples,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def image_model(tmp_path_factory):
    """A SavedModel folder .../models/1 whose signature takes encoded image bytes, plus its labels file."""
    root = tmp_path_factory.mktemp("models")
    export_serving(train_classifier(epochs=3, count=240, seed=1), root / "models" / "1")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


def direct_scores(model_dir, images):
    """The SavedModel's signature called directly, outside Beam."""
    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    return signature(image_bytes=tf.constant(images))["scores"].numpy()


def _requests(count, start=0):
    return [ScoringRequest(f"r{i}", f"k{i}", 0.0) for i in range(start, start + count)]


def test_handler_scores_batches_together_and_isolates_a_bad_image(image_model):
    """Two ScoringBatches (3 + 4 requests) scored in model calls of at most 4 rows, one bad image among
    them: that row alone fails, the others equal the signature called directly."""
    rng = random.Random(8)
    images = [encoded_image(LABELS[i % 3], rng) for i in range(6)]
    model_dir = image_model / "models" / "1"
    handler = TfModelHandler(str(model_dir), max_batch_size=4)
    model = handler.load_model()
    sent = images[:2] + [b"GIF89a and nothing else"] + images[2:]
    batches = [
        ScoringBatch(_requests(3), {"image_bytes": np.array(sent[:3], dtype=object)}),
        ScoringBatch(_requests(4, 3), {"image_bytes": np.array(sent[3:], dtype=object)}),
    ]
    first, second = handler.run_inference(batches, model)
    assert (first.example, second.example) == tuple(batches) and {first.model_id, second.model_id} == {"1"}
    assert list(first.inference.errors) == [2] and second.inference.errors == {}
    assert [len(r.inference.outputs["scores"]) for r in (first, second)] == [3, 4]
    scored = np.concatenate([first.inference.outputs["scores"][:2], second.inference.outputs["scores"]])
    np.testing.assert_allclose(scored, direct_scores(model_dir, images), rtol=1e-5, atol=1e-6)


def test_batch_rows_equal_rows_made_one_at_a_time():
    """prediction_rows over a batch (outputs converted once) gives each request the row prediction_row
    gives it alone; the outputs text is json.dumps' of the values."""
    requests = [ScoringRequest(f"r{i}", f"k{i}", 99.5, i if i % 2 else None) for i in range(5)]
    outputs = {"scores": np.random.default_rng(1).random((5, 3)).astype(np.float32), "b": np.arange(5.0)}
    rows = prediction_rows(requests, outputs, "7", ["x", "y", "z"], top_k=2, scored_at=100.0, failed={3: "bad"})
    one_by_one = [
        prediction_row(r, {k: v[i] for k, v in outputs.items()}, "7", ["x", "y", "z"], 2, 100.0)
        for i, r in enumerate(requests)
    ]
    assert rows == one_by_one[:3] + one_by_one[4:]
    for i, row in zip([0, 1, 2, 4], rows, strict=True):
        assert row["outputs"] == json.dumps({"b": float(i), "scores": outputs["scores"][i].tolist()})
        assert row["top_k"] == []  # two outputs: no labels
        assert (row["latency_ms"], row["scored_at"]) == (500.0, "1970-01-01T00:01:40+00:00")
    [single] = prediction_rows(requests[:1], {"scores": outputs["scores"][:1]}, "7", ["x", "y", "z"], 2, 100.0)
    scores = outputs["scores"][0].astype(np.float64)
    best = sorted(range(3), key=lambda j: -scores[j])[:2]
    assert single["top_k"] == [{"label": "xyz"[j], "score": scores[j]} for j in best]


def test_examples_are_checked_against_the_signature(tmp_path):
    inputs = [tf.keras.Input((), name="age"), tf.keras.Input((3,), name="history")]
    joined = tf.keras.layers.Concatenate()([tf.keras.layers.Reshape((1,))(inputs[0]), inputs[1]])
    keras_path = tmp_path / "tabular.keras"
    tf.keras.Model(inputs, tf.keras.layers.Dense(1)(joined)).save(keras_path)
    model = LoadedModel(str(keras_path))
    assert [(s.name, s.shape) for s in model.inputs] == [("age", ()), ("history", (3,))]
    request_id, key, example = prepare_example(
        {"id": "r1", "features": {"age": 31, "history": [1, 2, 3]}}, model.inputs
    )
    given_as_text = prepare_example({"id": "r3", "features": {"age": "2.5", "history": [4, 5, 6]}}, model.inputs)[2]
    stacked = stack_examples([example, given_as_text], model.inputs)
    assert request_id == "r1" and stacked["history"].dtype == np.float32 and stacked["history"].shape == (2, 3)
    assert stacked["age"].dtype == np.float32 and stacked["age"].tolist() == [31.0, 2.5]
    same_key = prepare_example({"id": "r2", "features": {"history": [1, 2, 3], "age": 31}}, model.inputs)[1]
    assert same_key == key  # the content key ignores the request id and field order
    handler = TfModelHandler(str(keras_path))
    [result] = handler.run_inference([ScoringBatch(_requests(2), stacked)], handler.load_model())
    direct = tf.keras.models.load_model(keras_path)([np.array([31.0, 2.5]), np.array([[1.0, 2, 3], [4, 5, 6]])])
    np.testing.assert_allclose(result.inference.outputs["output_0"], direct.numpy(), rtol=1e-5)
    for record, reason in [
        ({"id": "r", "features": {"age": 1}}, "missing_feature"),
        ({"id": "r", "features": {"age": 1, "history": [1, 2]}}, "bad_feature"),
        ({"id": "r", "features": {"age": "old", "history": [1, 2, 3]}}, "bad_feature"),
        ({"features": {"age": 1, "history": [1, 2, 3]}}, "missing_field"),
    ]:
        with pytest.raises(RecordError) as e:
            prepare_example(record, model.inputs)
        assert e.value.reason == reason


def test_top_k_lists_labels_by_score():
    row = prediction_row(
        ScoringRequest("r", "k", 100.0),
        {"scores": np.array([0.2, 0.7, 0.1])},
        "3",
        ["a", "b", "c"],
        top_k=2,
        scored_at=100.25,
    )
    assert row["top_k"] == [{"label": "b", "score": pytest.approx(0.7)}, {"label": "a", "score": pytest.approx(0.2)}]
    assert (row["model_version"], row["latency_ms"]) == ("3", 250.0)


def test_start_up_errors_name_the_flag(image_model, tmp_path):
    (tmp_path / "two.txt").write_text("a\nb\n")
    for flags, words in [
        (["--model_path", str(tmp_path / "nothing")], "--model_path: cannot load"),
        (
            ["--model_path", str(image_model / "models" / "1"), "--label_map", str(tmp_path / "two.txt")],
            "has 2 labels but the model's output 'scores' has 3",
        ),
        (["--model_path", str(image_model / "models" / "1"), "--signature", "predict"], "has no signature 'predict'"),
        (["--model_watch_pattern", "x/*"], "--model_watch_pattern needs a streaming input"),
    ]:
        with pytest.raises(ValueError, match=words):
            score.validate(PipelineOptions(flags))


def test_batch_pipeline_into_bigquery(image_model, services, project, tmp_path):
    """Plain requests and TensorFlow Serving bodies into BigQuery, with TF Serving responses on a topic."""
    lines, truth = sample_requests(count=12, seed=5)
    rng = random.Random(6)
    body_images = [encoded_image(LABELS[i], rng) for i in range(3)]
    b64 = [base64.b64encode(data).decode() for data in body_images]
    bodies = [  # one whole, one with a bad instance (1 of 3): 5 instances in 2 bodies
        {"id": "body-ok", "instances": [{"b64": b64[0]}, {"image_bytes": {"b64": b64[1]}}]},
        {
            "id": "body-part",
            "signature_name": "serving_default",
            "inputs": {"image_bytes": [{"b64": b64[2]}, 5, {"b64": b64[0]}]},
        },
    ]
    lines += [json.dumps(body) for body in bodies]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    bq = bq_client(services, project)
    bq.create_dataset("ml", exists_ok=True)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, "batch-responses")).name
    responses = subscriber.create_subscription(
        name=subscriber.subscription_path(project, "batch-responses-check"), topic=topic
    ).name
    options = PipelineOptions(
        [
            "--runner",
            "FnApiRunner",
            "--project",
            project,
            "--temp_location",
            str(tmp_path),
            "--model_path",
            str(image_model / "models" / "1"),
            "--label_map",
            str(image_model / "labels.txt"),
            "--input_files",
            str(requests),
            "--output_table",
            f"{project}:ml.predictions",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_batch_size",
            "4",
            "--predictions_topic",
            topic,
            "--predictions_format",
            "tf_serving",
        ]
    )
    settings = score.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        score.build(pipeline, options, settings)
    rows = {r["request_id"]: dict(r) for r in bq.query("SELECT * FROM `ml`.`predictions`").result()}
    instance_images = {"body-ok/0": 0, "body-ok/1": 1, "body-part/0": 2, "body-part/2": 0}
    assert set(rows) == set(truth) | set(instance_images)
    assert {i: rows[i]["instance_index"] for i in instance_images} == {i: int(i[-1]) for i in instance_images}
    images = {request_id: body_images[n] for request_id, n in instance_images.items()}
    for line in lines:
        record = json.loads(line) if line.endswith("}") else None
        if record and record.get("id") in truth:
            images[record["id"]] = base64.b64decode(record["image_bytes"]["b64"])
            assert rows[record["id"]]["instance_index"] is None
    ids = sorted(images)
    expected = direct_scores(image_model / "models" / "1", [images[i] for i in ids])
    outputs = {i: r["outputs"] if isinstance(r["outputs"], dict) else json.loads(r["outputs"]) for i, r in rows.items()}
    for request_id, scores in zip(ids, expected, strict=True):
        row = rows[request_id]
        np.testing.assert_allclose(outputs[request_id]["scores"], scores, rtol=1e-5, atol=1e-6)
        assert [t["label"] for t in row["top_k"]] == [LABELS[i] for i in np.argsort(-scores, kind="stable")]
        assert row["model_version"] == "1" and row["cache_hit"] is False and row["latency_ms"] >= 0
    dead = [
        json.loads(line) for f in (tmp_path / "out").glob("dead_letters-*.jsonl") for line in f.read_text().splitlines()
    ]
    reasons = ["bad_base64", "invalid_json", "missing_field", "missing_field", "not_an_image"]
    assert sorted(d["reason"] for d in dead) == reasons
    # every request is a prediction or a dead letter; a body counts as its instances
    assert len(rows) + len(dead) == len(lines) - len(bodies) + 5
    [bad_instance] = [d for d in dead if d["attributes"]]
    assert {a["key"]: a["value"] for a in bad_instance["attributes"]} == {
        "score.request_id": "body-part/1",
        "score.instance_index": "1",
    }
    assert json.loads(bad_instance["payload_string"]) == {"image_bytes": 5}

    by_id = {m["request_id"]: m for m in wait_for_messages(subscriber, responses, len(truth) + 2, timeout=60)}
    assert set(by_id) == set(truth) | {"body-ok", "body-part"}
    np.testing.assert_allclose(
        by_id["body-ok"]["predictions"],
        direct_scores(image_model / "models" / "1", body_images[:2]),
        rtol=1e-5,
        atol=1e-6,
    )
    assert set(by_id["body-part"]) == {"request_id", "error"}
    assert by_id["body-part"]["error"].startswith(
        "1 of 3 instances failed (see the dead letters): instance 1: missing_field"
    )
    for request_id in truth:  # a plain request is a body of one
        np.testing.assert_allclose(by_id[request_id]["predictions"], [outputs[request_id]["scores"]], rtol=1e-6)

    sql = (ROOT / "sql" / "score_request_body.sql").read_text()
    assert sql.strip() in (ROOT / "docs" / "score.md").read_text()
    job = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("body_id", "STRING", "body-part")])
    got = [dict(r) for r in bq.query(sql, job_config=job).result()]
    assert [(r["instance_index"], r["request_id"]) for r in got] == [(0, "body-part/0"), (2, "body-part/2")]
    for r in got:
        best = rows[r["request_id"]]["top_k"][0]
        assert (r["top_label"], r["top_score"]) == (best["label"], pytest.approx(best["score"]))


def test_report_counts_and_shows_the_first_predictions_written(image_model, tmp_path, capsys):
    lines, truth = sample_requests(count=8, seed=5)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    score.run(
        [
            "--runner",
            "FnApiRunner",
            "--model_path",
            str(image_model / "models" / "1"),
            "--label_map",
            str(image_model / "labels.txt"),
            "--input_files",
            str(requests),
            "--output_dir",
            str(tmp_path / "out"),
            "--progress",
            "off",
        ]
    )
    report = capsys.readouterr().out.splitlines()
    written = [
        json.loads(line)
        for f in sorted((tmp_path / "out").glob("predictions-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert len(written) == len(truth) == 9  # 8 images, one of them sent twice
    assert report[0] == f"scored: 9  from the cache: 0  dead letters: {len(lines) - 9}"
    shown = [line.split()[0] for line in report[1:] if line.split()[0] in truth]
    assert shown == [row["request_id"] for row in written[:5]]
    assert report[-1] == f"... 4 more in {tmp_path / 'out'}/predictions-*.jsonl"


class _WindowedRequests(beam.PTransform):
    """JSON requests at given event times, in 10 s fixed windows (grouped, so each window is complete)."""

    def __init__(self, timed_lines):
        super().__init__()
        self._timed = timed_lines

    def expand(self, pbegin):
        return (
            pbegin
            | beam.Create(self._timed)
            | "Stamp" >> beam.Map(lambda x: window.TimestampedValue(x[1], x[0]))
            | "Window" >> beam.WindowInto(window.FixedWindows(10))
            | "Key" >> beam.Map(lambda x: ("k", x))
            | "Group" >> beam.GroupByKey()
            | "Emit" >> beam.FlatMap(lambda kv: kv[1])
        )


def test_predictions_switch_to_a_new_model_version_from_the_side_input(image_model, tmp_path):
    """RunInference's model-refresh side input, as --model_watch_pattern feeds it on Dataflow: requests of
    the first window are scored by version 1, those of the second by version 2, in one running job."""
    v1, v2 = image_model / "models" / "1", tmp_path / "models" / "2"
    export_serving(train_classifier(epochs=1, count=90, seed=9), v2)
    rng, t0 = random.Random(4), 1_800_000_000
    images = {f"r{i}": encoded_image(LABELS[i % 3], rng) for i in range(4)}
    timed = [(t0 + 2 + 10 * (i // 2), request_line(rid, data)) for i, (rid, data) in enumerate(images.items())]
    expected = {}
    for version, model_dir, ids in (("1", v1, ["r0", "r1"]), ("2", v2, ["r2", "r3"])):
        for rid, scores in zip(ids, direct_scores(model_dir, [images[i] for i in ids]), strict=True):
            expected[rid] = (version, scores)

    def check(rows):
        assert {r["request_id"]: r["model_version"] for r in rows} == {k: v[0] for k, v in expected.items()}
        for row in rows:
            np.testing.assert_allclose(
                json.loads(row["outputs"])["scores"], expected[row["request_id"]][1], rtol=1e-5, atol=1e-6
            )

    options = PipelineOptions(
        ["--runner", "FnApiRunner", "--model_path", str(v1), "--output_dir", str(tmp_path / "out")]
    )
    settings = score.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        updates = (
            pipeline
            | "Versions" >> beam.Create([(t0 + 1, str(v1)), (t0 + 11, str(v2))])
            | "StampVersions"
            >> beam.Map(lambda x: window.TimestampedValue(ModelMetadata(model_id=x[1], model_name=x[1]), x[0]))
            | "WindowVersions" >> beam.WindowInto(window.FixedWindows(10))
        )
        outputs = score.build(pipeline, options, settings, source=_WindowedRequests(timed), model_updates=updates)
        assert_that(outputs.predictions | beam.FlatMap(lambda rows: rows), check)


def request_line(request_id, image):
    return json.dumps({"id": request_id, "image_bytes": {"b64": base64.b64encode(image).decode()}})


def test_tabular_requests_get_the_training_transform(tmp_path):
    """Raw features at serving time go through the feature pipeline's exported transform: predictions
    equal the model applied to the transformed training examples of the same keys."""
    from pipelines import feature_stats
    from tests.test_feature_pipeline import read_examples, run_pipeline

    run_pipeline(feature_stats.SAMPLE_SPEC, tmp_path / "features")
    names = ["age_z", "income_z", "tenure_days_scaled"]
    tf.keras.utils.set_random_seed(2)
    inputs = [tf.keras.Input((), name=name) for name in names]
    joined = tf.keras.layers.Concatenate()([tf.keras.layers.Reshape((1,))(i) for i in inputs])
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1, activation="sigmoid")(joined))
    model.save(tmp_path / "churn.keras")

    examples = {e["user_id"][0].decode(): e for e in read_examples(tmp_path / "features", "eval")}
    records = {r["user_id"]: r for r in map(json.loads, feature_stats.SAMPLE_DATA.read_text().splitlines()[:2000])}
    keys = sorted(examples)[:40]
    assert any("age" not in records[k] for k in keys)  # some requests rely on the spec's default
    lines = [json.dumps({"id": k, "features": {f: v for f, v in records[k].items() if f != "churned"}}) for k in keys]
    lines.append(json.dumps({"id": "no-tenure", "features": {"age": 30, "country": "DE"}}))
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    options = PipelineOptions(
        [
            "--runner",
            "FnApiRunner",
            "--model_path",
            str(tmp_path / "churn.keras"),
            "--transform_dir",
            str(tmp_path / "features"),
            "--input_files",
            str(tmp_path / "requests.jsonl"),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    settings = score.validate(options)
    assert [s.name for s in settings.inputs] == ["age", "income", "tenure_days", "country", "device", "review"]
    with beam.Pipeline(options=options) as pipeline:
        score.build(pipeline, options, settings)
    rows = {
        r["request_id"]: r
        for f in (tmp_path / "out").glob("predictions-*.jsonl")
        for r in map(json.loads, f.read_text().splitlines())
    }
    assert sorted(rows) == keys
    expected = model([np.array([examples[k][n][0] for k in keys], dtype=np.float32) for n in names]).numpy()
    for key, want in zip(keys, expected, strict=True):
        assert json.loads(rows[key]["outputs"])["output_0"] == pytest.approx(want.tolist(), abs=1e-5)
    dead = [
        json.loads(line) for f in (tmp_path / "out").glob("dead_letters-*.jsonl") for line in f.read_text().splitlines()
    ]
    assert [(d["reason"], "tenure_days" in d["error_message"]) for d in dead] == [("missing_feature", True)]


def test_batch_scoring_of_the_image_pipelines_tfrecords(image_model, tmp_path):
    """The image-ingestion pipeline's TFRecords scored as they are: one prediction per example, equal to
    the model called on the example's encoded image."""
    from tests.test_image_ingest_pipeline import read_examples
    from tests.test_image_ingest_pipeline import run_pipeline as ingest

    ingest("--input_dir", str(image_ingest.SAMPLE_DIR), "--output_dir", str(tmp_path / "images"))
    examples = read_examples(tmp_path / "images", "train")
    options = PipelineOptions(
        [
            "--runner",
            "FnApiRunner",
            "--model_path",
            str(image_model / "models" / "1"),
            "--input_files",
            str(tmp_path / "images" / "train" / "images-*.tfrecord.gz"),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    settings = score.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        score.build(pipeline, options, settings)
    rows = {
        r["request_id"]: r
        for f in (tmp_path / "out").glob("predictions-*.jsonl")
        for r in map(json.loads, f.read_text().splitlines())
    }
    ids = [e["image/source_id"].decode() for e in examples]
    assert sorted(rows) == sorted(ids)
    expected = direct_scores(image_model / "models" / "1", [e["image/encoded"] for e in examples])
    for source_id, scores in zip(ids, expected, strict=True):
        np.testing.assert_allclose(json.loads(rows[source_id]["outputs"])["scores"], scores, rtol=1e-5, atol=1e-6)
