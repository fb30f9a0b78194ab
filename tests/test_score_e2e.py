"""Near-real-time scoring end to end: requests through the Pub/Sub emulator, the streaming pipeline on
the direct runner, predictions on a topic, in the BigQuery emulator and in the Bigtable emulator cache;
repeated images served from the cache; malformed messages dead-lettered. Reports publish-to-prediction
latency percentiles. (Model refresh is tested in test_scoring.py: the local streaming runner cannot run
the file watcher, a splittable DoFn.)"""

import base64
import hashlib
import json
import random
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import bigtable, pubsub_v1

from pipelines import score
from pipelines.samples.images import LABELS
from pipelines.samples.score_model import encoded_image
from tests.pubsub_wait import wait_for_messages
from tests.test_scoring import direct_scores, image_model  # noqa: F401 - the model fixture
from tests.test_sli_e2e import bq_client
from transforms.scoring.cache import content_row_key, lookup_prediction


def request(request_id, image):
    return json.dumps({"id": request_id, "image_bytes": {"b64": base64.b64encode(image).decode()}}).encode()


class Predictions:
    """Pulls the predictions topic until the wanted request ids have arrived."""

    def __init__(self, subscriber, subscription):
        self._subscriber, self._subscription, self.rows = subscriber, subscription, {}

    def wait_for(self, request_ids, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline and not set(request_ids) <= set(self.rows):
            response = self._subscriber.pull(subscription=self._subscription, max_messages=50, timeout=5)
            for message in response.received_messages:
                row = json.loads(message.message.data)
                self.rows[row["request_id"]] = row
            if response.received_messages:
                self._subscriber.acknowledge(
                    subscription=self._subscription, ack_ids=[m.ack_id for m in response.received_messages]
                )
        missing = set(request_ids) - set(self.rows)
        assert not missing, f"no prediction within {timeout}s for {sorted(missing)}"
        return [self.rows[i] for i in request_ids]


@pytest.fixture(scope="module")
def streamed(image_model, services, project, tmp_path_factory):  # noqa: F811
    models = image_model / "models"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {n: publisher.topic_path(project, n) for n in ("score-requests", "predictions", "score-dead-letters")}
    for t in topics.values():
        publisher.create_topic(name=t)
    subs = {n: subscriber.subscription_path(project, f"{n}-check") for n in topics}
    for name, sub in subs.items():
        subscriber.create_subscription(name=sub, topic=topics[name])
    bq_client(services, project).create_dataset("ml", exists_ok=True)
    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--input_subscription",
            subs["score-requests"],
            "--model_path",
            str(models / "1"),
            "--label_map",
            str(image_model / "labels.txt"),
            "--bigtable_instance",
            "serving",
            "--bigtable_table",
            "predictions",
            "--output_table",
            f"{project}:ml.stream_predictions",
            "--predictions_topic",
            topics["predictions"],
            "--dead_letter_topic",
            topics["score-dead-letters"],
            "--max_batch_duration_secs",
            "1",
        ]
    )
    settings = score.validate(options)
    pipeline = beam.Pipeline(options=options)
    score.build(pipeline, options, settings)
    result = pipeline.run()
    predictions, rng = Predictions(subscriber, subs["predictions"]), random.Random(12)
    images = {f"a{i}": encoded_image(LABELS[i % 3], rng) for i in range(6)}
    try:  # a first request waits for the runner to start and the model to load: not measured
        publisher.publish(topics["score-requests"], request("warm-up", encoded_image("circle", rng))).result(timeout=30)
        predictions.wait_for(["warm-up"], timeout=180)
        for request_id, image in images.items():
            publisher.publish(topics["score-requests"], request(request_id, image)).result(timeout=30)
        publisher.publish(topics["score-requests"], b'{"id": "cut", "image_bytes": ').result(timeout=30)
        publisher.publish(topics["score-requests"], request("text", b"plain text, not an image")).result(timeout=30)
        body = {"instances": [{"b64": base64.b64encode(images["a5"]).decode()}, {"b64": "***"}]}  # TF Serving
        publisher.publish(topics["score-requests"], json.dumps(body).encode(), request_id="body").result(timeout=30)
        first = predictions.wait_for(list(images))
        instance = predictions.wait_for(["body/0"])[0]
        # the same images under new request ids: answered from the cache
        for source in ("a0", "a1"):
            publisher.publish(topics["score-requests"], request(f"again-{source}", images[source])).result(timeout=30)
        again = predictions.wait_for(["again-a0", "again-a1"])
        dead = wait_for_messages(subscriber, subs["score-dead-letters"], 3)  # 2 malformed requests, 1 instance
    finally:
        result.cancel()
    return {
        "models": models,
        "images": images,
        "first": first,
        "again": again,
        "instance": instance,
        "all": predictions.rows,
        "dead": dead,
    }


def test_predictions_match_the_model_called_directly(streamed):
    ids = [row["request_id"] for row in streamed["first"]]
    expected = direct_scores(streamed["models"] / "1", [streamed["images"][i] for i in ids])
    for row, scores in zip(streamed["first"], expected, strict=True):
        np.testing.assert_allclose(json.loads(row["outputs"])["scores"], scores, rtol=1e-5, atol=1e-6)
        assert row["model_version"] == "1" and row["cache_hit"] is False
        assert row["top_k"][0]["label"] == LABELS[int(np.argmax(scores))]


def test_repeated_images_are_served_from_the_cache(streamed, project):
    first = {row["request_id"]: row for row in streamed["first"]}
    for row in streamed["again"]:
        original = first[row["request_id"].removeprefix("again-")]
        assert row["cache_hit"] is True and row["model_version"] == "1"
        assert row["outputs"] == original["outputs"] and row["top_k"] == original["top_k"]
    table = bigtable.Client(project=project, admin=True).instance("serving").table("predictions")
    cached = lookup_prediction(table, "a3")
    assert cached["request_id"] == "a3" and cached["outputs"] == first["a3"]["outputs"]
    assert lookup_prediction(table, "again-a0")["cache_hit"] is True
    md5 = hashlib.md5(streamed["images"]["a3"]).hexdigest()
    assert table.read_row(content_row_key("1", md5).encode()) is not None
    assert lookup_prediction(table, "never-sent") is None


def test_a_tf_serving_body_is_scored_per_instance(streamed):
    """Instance 0 is the image of a5 (so it may come from the cache); instance 1 is a dead letter."""
    first = {row["request_id"]: row for row in streamed["first"]}
    row = streamed["instance"]
    assert (row["request_id"], row["instance_index"]) == ("body/0", 0)
    scores = [json.loads(r["outputs"])["scores"] for r in (row, first["a5"])]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)
    [dead] = [d for d in streamed["dead"] if d["reason"] == "bad_base64"]
    attributes = {a["key"]: a["value"] for a in dead["attributes"]}
    assert (attributes["score.request_id"], attributes["score.instance_index"]) == ("body/1", "1")


def test_malformed_messages_are_dead_letters_and_latency_is_reported(streamed):
    assert sorted(d["reason"] for d in streamed["dead"]) == ["bad_base64", "invalid_json", "not_an_image"]
    latencies = np.array([r["latency_ms"] for r in streamed["all"].values() if r["request_id"] != "warm-up"])
    assert (latencies > 0).all() and (latencies < 120_000).all()
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    print(
        f"\npublish-to-prediction latency over {len(latencies)} predictions: "
        f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms"
    )
