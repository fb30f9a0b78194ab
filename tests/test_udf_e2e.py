"""The UDF path end to end: Pub/Sub emulator -> UDF -> SLI pipeline (streaming, direct runner), with a
JavaScript and a Python UDF that rename, enrich, filter and throw."""

import json
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import pubsub_v1

from pipelines import sli
from tests.collect import AppendJsonLines
from tests.test_udf import JS_SAMPLE, PY_SAMPLE


def _records(now):
    records = []
    for i in range(30):  # 30 requests to view-profile over the last two minutes, every 5th a 503
        records.append(
            {
                "time": now - 120 + 4 * i,
                "method": "GET",
                "url": f"/profile/u{i}",
                "status": 503 if i % 5 == 0 else 200,
                "request_time": 0.05,
            }
        )
    records += [{"drop": True, "i": i} for i in range(3)]
    records += [{"explode": f"record {i}"} for i in range(2)]
    return [json.dumps(r) for r in records]


@pytest.mark.parametrize("name, source", [("udf.js", JS_SAMPLE), ("udf.py", PY_SAMPLE)], ids=["javascript", "python"])
def test_udf_through_the_streaming_pipeline(services, project, tmp_path, name, source):
    udf_path = tmp_path / name
    udf_path.write_text(source)
    run_id = uuid.uuid4().hex[:8]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead_topic = (publisher.topic_path(project, f"{n}-{run_id}") for n in ("logs", "dead"))
    sub, dead_sub = (subscriber.subscription_path(project, f"{n}-{run_id}") for n in ("logs", "dead"))
    for t, s in ((topic, sub), (dead_topic, dead_sub)):
        publisher.create_topic(name=t)
        subscriber.create_subscription(name=s, topic=t)

    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--input_subscription",
            sub,
            "--udf_path",
            str(udf_path),
            "--udf_function",
            "process",
            "--dead_letter_topic",
            dead_topic,
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    config = sli.validate(options)
    pipeline = beam.Pipeline(options=options)
    outputs = sli.build(pipeline, options, config)
    rows_file = tmp_path / "rows.jsonl"
    outputs.sli_rows | beam.ParDo(AppendJsonLines(str(rows_file)))
    result = pipeline.run()
    records = _records(time.time())
    try:
        for f in [publisher.publish(topic, r.encode()) for r in records]:
            f.result(timeout=30)
        deadline, events = time.time() + 240, 0  # a Python UDF first starts its subprocess
        while time.time() < deadline and events < 30:
            time.sleep(3)
            latest = {}
            if rows_file.exists():
                for row in map(json.loads, rows_file.read_text().splitlines()):
                    key = (row["sli_id"], row["window_start"])
                    if key not in latest or row["pane_index"] > latest[key]["pane_index"]:
                        latest[key] = row
            avail = [r for r in latest.values() if r["sli_id"] == "profile-web/view-profile/availability"]
            events = sum(r["total"] for r in avail)
    finally:
        result.cancel()
    assert events == 30  # renamed url->uri and enriched with the service, or they would not match
    assert sum(r["bad"] for r in avail) == 6
    dead = [
        json.loads(m.message.data)
        for m in subscriber.pull(subscription=dead_sub, max_messages=50, timeout=10).received_messages
    ]
    assert sorted(d["payload_string"] for d in dead) == sorted(r for r in records if "explode" in r)
    assert all(d["step"] == "ApplyUdf" and "cannot handle record" in d["error_message"] for d in dead)
    # published = events + dead letters + filtered (the 3 "drop" records)
    assert len(records) == events + len(dead) + 3
