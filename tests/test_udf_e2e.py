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


def _start(project, tmp_path, name, source):
    """Topics, subscriptions and the running streaming job of one UDF."""
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
    return {"result": pipeline.run(), "topic": topic, "dead_sub": dead_sub, "rows": rows_file, "dead": []}


def _latest_availability(rows_file):
    latest = {}
    if rows_file.exists():
        for row in map(json.loads, rows_file.read_text().splitlines()):
            key = (row["sli_id"], row["window_start"])
            if key not in latest or row["pane_index"] > latest[key]["pane_index"]:
                latest[key] = row
    return [r for r in latest.values() if r["sli_id"] == "profile-web/view-profile/availability"]


@pytest.fixture(scope="module")
def udf_runs(services, project, tmp_path_factory):
    """Both UDFs' streaming jobs at once (each waits about half a minute for its windows to close), fed
    the same records; runs until each has its 30 events in rows and its 2 dead letters, or 240 s (a
    Python UDF first starts its subprocess)."""
    runs = {
        kind: _start(project, tmp_path_factory.mktemp(kind), name, source)
        for kind, name, source in (("javascript", "udf.js", JS_SAMPLE), ("python", "udf.py", PY_SAMPLE))
    }
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    records = _records(time.time())
    try:
        for f in [publisher.publish(run["topic"], r.encode()) for run in runs.values() for r in records]:
            f.result(timeout=30)
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(3)
            for run in runs.values():
                run["avail"] = _latest_availability(run["rows"])
                received = subscriber.pull(subscription=run["dead_sub"], max_messages=50, timeout=5).received_messages
                if received:
                    subscriber.acknowledge(subscription=run["dead_sub"], ack_ids=[m.ack_id for m in received])
                    run["dead"] += [json.loads(m.message.data) for m in received]
            if all(sum(r["total"] for r in run["avail"]) >= 30 and len(run["dead"]) >= 2 for run in runs.values()):
                break
    finally:
        for run in runs.values():
            run["result"].cancel()
    return records, runs


@pytest.mark.parametrize("kind", ["javascript", "python"])
def test_udf_through_the_streaming_pipeline(udf_runs, kind):
    records, runs = udf_runs
    avail, dead = runs[kind]["avail"], runs[kind]["dead"]
    events = sum(r["total"] for r in avail)
    assert events == 30  # renamed url->uri and enriched with the service, or they would not match
    assert sum(r["bad"] for r in avail) == 6
    assert sorted(d["payload_string"] for d in dead) == sorted(r for r in records if "explode" in r)
    assert all(d["step"] == "ApplyUdf" and "cannot handle record" in d["error_message"] for d in dead)
    # published = events + dead letters + filtered (the 3 "drop" records)
    assert len(records) == events + len(dead) + 3
