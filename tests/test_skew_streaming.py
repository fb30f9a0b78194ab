"""Streaming skew: one report per fixed window. TestStream with a window drawn like training and a window
where age has shifted (measures worked out again with numpy); then end to end through the Pub/Sub
emulator: an alert for an out-of-range feature, a dead letter for a malformed message, the BigQuery row
with its window."""

import datetime
import json
import math
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from google.cloud import pubsub_v1

from pipelines import skew
from tests.pubsub_wait import wait_for_messages
from tests.test_skew import train_split
from tests.test_sli_e2e import bq_client

T0 = 1795341600  # 2026-11-22T10:00:00Z, a window boundary
WINDOW = 60
AGE_SHIFT = 20
TRAINING = json.loads((skew.SAMPLES / "training" / "statistics.json").read_text())["train"]


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def _age_measures(ages):
    """js_divergence, psi and out_of_range of serving ages against the training histogram, with numpy:
    one bin below the training range, the training bins, one above."""
    histogram = TRAINING["features"]["age"]["histogram"]
    edges = np.array([histogram[0]["low"]] + [b["high"] for b in histogram])
    ages = np.asarray(ages, dtype=float)
    inside, _ = np.histogram(ages, bins=edges)  # the last bin includes its upper edge, as in training
    q = np.concatenate([[np.sum(ages < edges[0])], inside, [np.sum(ages > edges[-1])]]) / len(ages)
    p = np.array([0] + [b["count"] for b in histogram] + [0]) / sum(b["count"] for b in histogram)
    m = (p + q) / 2
    js = 0.5 * np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0])) + 0.5 * np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    ps, qs = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    return {"js_divergence": js, "psi": np.sum((qs - ps) * np.log(qs / ps)), "out_of_range": q[0] + q[-1]}


def _message(row):
    return PubsubMessage(json.dumps(row).encode(), {})


def test_each_window_gets_its_own_report(tmp_path):
    train = train_split()
    shifted = [{**r, "age": r["age"] + AGE_SHIFT if r.get("age") is not None else None} for r in train]
    spacing = (WINDOW - 1) / len(train)
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([TimestampedValue(_message(r), T0 + i * spacing) for i, r in enumerate(train)])
        .add_elements([TimestampedValue(PubsubMessage(b'{"age": ', {"request_id": "r-1"}), T0 + 5)])
        .advance_watermark_to(T0 + WINDOW)
        .add_elements([TimestampedValue(_message(r), T0 + WINDOW + i * spacing) for i, r in enumerate(shifted)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--streaming",
            "--output_dir",
            str(tmp_path / "out"),
            "--skew_window_seconds",
            str(WINDOW),
        ]
    )
    settings = skew.validate(options)

    expected_age = _age_measures([r["age"] for r in shifted if r["age"] is not None])
    thresholds = skew.DEFAULT_THRESHOLDS
    expected_anomalies = sorted(m for m, v in expected_age.items() if v > thresholds[m])
    assert "out_of_range" in expected_anomalies  # ages above 79 - 20 leave the training range
    features = set(TRAINING["features"]) - {"churned"}

    def check(rows):
        by_window = {}
        for row in rows:
            assert datetime.datetime.fromisoformat(row["window_end"]) - datetime.datetime.fromisoformat(
                row["window_start"]
            ) == datetime.timedelta(seconds=WINDOW)
            by_window.setdefault(row["window_start"], {})[row["feature"]] = row
        assert set(by_window) == {_iso(T0), _iso(T0 + WINDOW)}
        for window_start, rows_ in by_window.items():
            assert set(rows_) == features
            for feature, row in rows_.items():
                measures = json.loads(row["measures"])
                if window_start == _iso(T0 + WINDOW) and feature == "age":
                    assert sorted(a["measure"] for a in row["anomalies"]) == expected_anomalies
                    for name, value in expected_age.items():
                        assert measures[name] == pytest.approx(value, abs=1e-9), name
                    assert measures["missing_change"] == pytest.approx(0, abs=1e-12)
                else:  # the training rows themselves: nothing moved
                    assert row["anomalies"] == [], (window_start, feature)
                    for name, value in measures.items():
                        if isinstance(value, float):
                            assert value == pytest.approx(0, abs=1e-9), (window_start, feature, name)

    with beam.Pipeline(options=options) as pipeline:
        outputs = skew.build(pipeline, options, settings, source=stream)
        assert_that(outputs.rows, check)
        assert_that(
            outputs.report | beam.Map(lambda r: (r["serving_rows"], r["anomalies"])),
            equal_to([(len(train), 0), (len(train), len(expected_anomalies))]),
            label="ReportsPerWindow",
        )
        assert_that(
            outputs.dead_letters | beam.Map(lambda d: (d["reason"], d["step"], d["payload_string"], d["attributes"])),
            equal_to([("invalid_json", "ServingValues", '{"age": ', [{"key": "request_id", "value": "r-1"}])]),
            label="DeadLetters",
        )


def test_flag_errors_name_the_flag():
    with pytest.raises(SystemExit, match="--skew_window_seconds must be positive"):
        skew.run(["--skew_window_seconds", "0"])
    with pytest.raises(SystemExit, match="give only one input flag, got --input_files and --input_subscription"):
        skew.run(["--input_subscription", "projects/p/subscriptions/s", "--input_files", "x.jsonl"])


def _wait_for_alert(subscriber, subscription, feature, timeout=120):
    alerts, deadline = [], time.time() + timeout
    while time.time() < deadline and not any(a["feature"] == feature for a in alerts):
        alerts += wait_for_messages(subscriber, subscription, 1, timeout=deadline - time.time())
    return [a for a in alerts if a["feature"] == feature]


def _cancel(result, publisher, topic):
    """cancel() waits for the runner's Pub/Sub pull in flight, which an idle subscription holds ~30 s: a
    message published a moment later ends it (the job is shutting down: nothing processes it)."""
    threading.Timer(1, lambda: publisher.publish(topic, b"{}").result(timeout=30)).start()
    result.cancel()


def test_out_of_range_feature_raises_an_alert_end_to_end(tmp_path, services, project):
    window = 4
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {n: publisher.topic_path(project, n) for n in ("skew-serving", "skew-alerts", "skew-dead-letters")}
    subs = {n: subscriber.subscription_path(project, f"{n}-check") for n in topics}
    for name, topic in topics.items():
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subs[name], topic=topic)
    bq = bq_client(services, project)
    bq.create_dataset("ml", exists_ok=True)
    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--input_subscription",
            subs["skew-serving"],
            "--skew_window_seconds",
            str(window),
            "--anomalies_topic",
            topics["skew-alerts"],
            "--anomalies_table",
            f"{project}:ml.skew_stream_anomalies",
            "--dead_letter_topic",
            topics["skew-dead-letters"],
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    settings = skew.validate(options)
    pipeline = beam.Pipeline(options=options)
    skew.build(pipeline, options, settings)
    result = pipeline.run()
    serving = topics["skew-serving"]
    try:
        # a malformed message first: its dead letter shows the job is pulling
        publisher.publish(serving, b'{"age": ', request_id="bad-1").result(timeout=30)
        dead = wait_for_messages(subscriber, subs["skew-dead-letters"], 1)
        time.sleep(window - time.time() % window + 0.3)  # just after a window boundary
        started = time.time()
        for i in range(20):  # every age above the training maximum (79)
            row = {
                "user_id": f"s-{i}",
                "age": 100 + i,
                "income": 30000.0,
                "tenure_days": 500,
                "country": "DE",
                "device": "android",
                "review": "fine",
            }
            publisher.publish(serving, json.dumps(row).encode()).result(timeout=30)
        time.sleep(max(0.0, started - started % window + window + 0.5 - time.time()))
        # past the window's end: this pull moves the direct runner's watermark, and the window fires
        publisher.publish(serving, b"not json", request_id="bad-2").result(timeout=30)
        alerts = _wait_for_alert(subscriber, subs["skew-alerts"], "age")
        dead += wait_for_messages(subscriber, subs["skew-dead-letters"], 1)
        deadline, rows = time.time() + 60, []
        while time.time() < deadline and not rows:
            time.sleep(1)
            try:
                rows = [
                    dict(r)
                    for r in bq.query(
                        "SELECT window_start, window_end FROM ml.skew_stream_anomalies WHERE feature = 'age'"
                    ).result()
                ]
            except Exception:  # noqa: BLE001 - the table appears with the first write
                continue
    finally:
        _cancel(result, publisher, serving)

    assert alerts, "no alert for age"
    alert = alerts[0]
    out_of_range = [a for a in alert["anomalies"] if a["measure"] == "out_of_range"]
    assert out_of_range == [{"measure": "out_of_range", "value": 1.0, "threshold": 0.01}]  # 20 of 20 outside
    assert json.loads(alert["measures"])["out_of_range"] == 1.0
    start, end = (datetime.datetime.fromisoformat(alert[k]) for k in ("window_start", "window_end"))
    assert end - start == datetime.timedelta(seconds=window) and start.timestamp() % window == 0
    assert alert["training_dir"] == str(skew.SAMPLES / "training")
    assert sorted((d["reason"], d["payload_string"], d["attributes"]) for d in dead) == sorted(
        [
            ("invalid_json", '{"age": ', [{"key": "request_id", "value": "bad-1"}]),
            ("invalid_json", "not json", [{"key": "request_id", "value": "bad-2"}]),
        ]
    )
    assert rows and all(math.isclose(r["window_end"].timestamp() - r["window_start"].timestamp(), window) for r in rows)
    assert start in {r["window_start"] for r in rows}
