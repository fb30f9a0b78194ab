"""Streaming image ingestion end to end: base64 JSON messages (every accepted form, malformed ones,
a duplicate) through the Pub/Sub emulator, the pipeline on the direct runner, the manifest in the
BigQuery emulator, dead letters on a Pub/Sub topic and windowed TFRecord shards read back with TF."""

import base64
import collections
import glob
import hashlib
import json
import random
import time

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import bigquery, pubsub_v1

from pipelines import image_ingest
from pipelines.samples.images import image_bytes
from tests.pubsub_wait import wait_for_messages
from tests.test_sli_e2e import ROOT, bq_client


def _messages():
    """(body, attributes) pairs, with what must become of each image: {id: status or reason}."""
    rng = random.Random(5)
    circle, square, stripes, circle2, square2, stripes2, dog = (
        image_bytes(label, rng)[0] for label in ("circle", "square", "stripes", "circle", "square", "stripes", "circle")
    )
    std, urlsafe = (
        (lambda b: base64.b64encode(b).decode()),
        (lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    )
    messages = [
        (json.dumps({"image_bytes": {"b64": std(circle)}, "label": "circle", "id": "c1"}).encode(), {}),
        (json.dumps({"image_bytes": {"b64": urlsafe(square)}, "label": "square", "id": "s1"}).encode(), {}),
        (json.dumps({"b64": std(stripes)}).encode(), {"label": "stripes", "id": "t1"}),
        (circle2, {"label": "circle", "id": "c2"}),
        (
            json.dumps(
                {
                    "instances": [
                        {"image_bytes": {"b64": std(square2)}, "label": "square", "id": "s2"},
                        {"image_bytes": {"b64": std(stripes2)}, "label": "stripes", "id": "t2"},
                        {"image_bytes": {"b64": "not*base64"}, "label": "square", "id": "bad64"},
                    ]
                }
            ).encode(),
            {},
        ),
        (json.dumps({"image_bytes": {"b64": std(circle)}, "label": "circle", "id": "c1-copy"}).encode(), {}),
        (b'{"image_bytes": {"b64": ', {"id": "truncated-json"}),
        (b"GIF89a but not really", {"label": "circle", "id": "fake-gif"}),
        (json.dumps({"b64": std(square2[::-1])}).encode(), {"label": "square", "id": "garbage"}),
        (json.dumps({"b64": std(dog)}).encode(), {"label": "dog", "id": "dog"}),
        (json.dumps({"b64": std(stripes2 + b"!")}).encode(), {"id": "no-label"}),
    ]
    accepted = {"c1": circle, "s1": square, "t1": stripes, "c2": circle2, "s2": square2, "t2": stripes2}
    return messages, accepted


@pytest.fixture(scope="module")
def streamed(services, project, tmp_path_factory):
    messages, accepted = _messages()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead_topic = publisher.topic_path(project, "images"), publisher.topic_path(project, "image-dead-letters")
    sub, dead_sub = (subscriber.subscription_path(project, n) for n in ("images-ingest", "image-dead-letters-check"))
    for t in (topic, dead_topic):
        publisher.create_topic(name=t)
    subscriber.create_subscription(name=sub, topic=topic)
    subscriber.create_subscription(name=dead_sub, topic=dead_topic)
    bq = bq_client(services, project)
    bq.create_dataset("ml", exists_ok=True)
    tmp = tmp_path_factory.mktemp("stream")
    (tmp / "labels.txt").write_text("circle\nsquare\nstripes\n")
    out = tmp / "out"
    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--input_subscription",
            sub,
            "--label_map",
            str(tmp / "labels.txt"),
            "--image_size",
            "40x30",
            "--resize_method",
            "crop",
            "--encoding",
            "png",
            "--output_dir",
            str(out),
            "--shard_seconds",
            "2",
            "--manifest_table",
            f"{project}:ml.image_manifest",
            "--dead_letter_topic",
            dead_topic,
        ]
    )
    settings = image_ingest.validate(options)
    pipeline = beam.Pipeline(options=options)
    image_ingest.build(pipeline, options, settings)
    result = pipeline.run()
    examples, manifest = [], []
    try:
        for body, attributes in messages:
            publisher.publish(topic, body, **attributes).result(timeout=30)
        deadline = time.time() + 180
        while time.time() < deadline and (len(examples) < len(accepted) or len(manifest) < 13):
            time.sleep(3)
            examples = _read_examples(out)
            try:
                manifest = [dict(r) for r in bq.query("SELECT * FROM ml.image_manifest").result()]
            except Exception:  # noqa: BLE001 - the table appears with the first write
                manifest = []
        dead = wait_for_messages(subscriber, dead_sub, 6)  # the 6 rejected inputs
    finally:
        result.cancel()
    return {"accepted": accepted, "examples": examples, "manifest": manifest, "dead": dead}


def _read_examples(out):
    examples = []
    for split in ("train", "eval"):
        for path in sorted(glob.glob(f"{out}/{split}/images-*.tfrecord.gz")):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                features = tf.train.Example.FromString(record.numpy()).features.feature
                examples.append(
                    {"split": split, **{k: (v.bytes_list.value or v.int64_list.value)[0] for k, v in features.items()}}
                )
    return examples


def test_every_input_reaches_the_manifest(streamed):
    manifest = streamed["manifest"]
    assert len(manifest) == 13  # 11 messages, one of them carrying 3 instances
    by_status = {}
    for row in manifest:
        by_status.setdefault(row["status"], []).append(row)
    # c1 and c1-copy hold the same bytes: whichever arrived first is kept
    [duplicate] = by_status["duplicate"]
    assert {duplicate["source_id"], duplicate["duplicate_of"]} == {"c1", "c1-copy"}
    kept = duplicate["duplicate_of"]
    assert sorted(r["source_id"] for r in by_status["accepted"]) == sorted({"s1", "t1", "c2", "s2", "t2", kept})
    assert len(by_status["rejected"]) == 6


def test_tfrecords_hold_the_accepted_images(streamed):
    accepted, examples = streamed["accepted"], streamed["examples"]
    assert len(examples) == len(accepted)
    labels = ["circle", "square", "stripes"]
    for e in examples:
        source_id = "c1" if e["image/source_id"] in (b"c1", b"c1-copy") else e["image/source_id"].decode()
        assert e["image/md5"].decode() == hashlib.md5(accepted[source_id]).hexdigest()
        assert e["image/class/label"] == labels.index(e["image/class/text"].decode())
        assert tf.io.decode_png(e["image/encoded"]).shape == (30, 40, 3)
        assert (e["image/height"], e["image/width"], e["image/format"]) == (30, 40, b"png")


def test_dead_letters_name_the_reason_and_keep_the_payload(streamed):
    dead = streamed["dead"]
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == ["bad_base64", "corrupt_image", "invalid_json", "missing_label", "not_an_image", "unknown_label"]
    by_reason = {d["reason"]: d for d in dead}
    assert by_reason["invalid_json"]["payload_string"] == '{"image_bytes": {"b64": '
    assert json.loads(by_reason["bad_base64"]["payload_string"])["id"] == "bad64"
    assert by_reason["corrupt_image"]["payload_string"] == "GIF89a but not really"  # text: kept as text only
    assert by_reason["corrupt_image"]["payload_bytes"] is None
    assert by_reason["unknown_label"]["step"] == "AssignLabelIds"
    assert {a["key"]: a["value"] for a in by_reason["unknown_label"]["attributes"]}["image.source_id"] == "dog"


def test_readme_manifest_query(streamed, services, project):
    sql = (ROOT / "sql" / "image_manifest_summary.sql").read_text()
    assert sql.strip() in (ROOT / "docs" / "image_ingest.md").read_text()
    since = min(row["recorded_at"] for row in streamed["manifest"])
    job_config = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("since", "TIMESTAMP", since)])
    got = {
        (r["label"], r["status"], r["split"], r["reason"]): r["images"]
        for r in bq_client(services, project).query(sql, job_config=job_config).result()
    }
    want = collections.Counter((r["label"], r["status"], r["split"], r["reason"]) for r in streamed["manifest"])
    assert got == want
