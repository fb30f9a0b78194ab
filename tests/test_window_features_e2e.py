"""Window features end to end: events through the Pub/Sub emulator into the streaming pipeline on the
direct runner and the Bigtable emulator (every window end kept as a cell version), and the same events
through the batch backfill; both must equal the values worked out in tests/window_oracle.py. Malformed
messages end on the dead-letter topic."""

import datetime
import json
import random
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import bigtable, pubsub_v1

from pipelines import window_features
from tests.pubsub_wait import wait_for_messages
from tests.test_window_features import SPEC, assert_same_features, row_values
from tests.window_oracle import expected_features, valid_events
from transforms.window_features.aggregate import BIGTABLE_COLUMN_FAMILY

WINDOWS = [(w.name, w.size, w.step) for w in SPEC.windows]


def make_events(seed=5):
    """40 events of 3 cards, 2 to 6 minutes old: behind the direct runner's wall-clock watermark, so each
    one arrives late (allowed) and updates its windows with a LATE pane."""
    rng, start = random.Random(seed), (int(time.time()) // 60 - 6) * 60
    return [
        json.dumps(
            {
                "card_id": f"c-{rng.randrange(3)}",
                "amount": round(rng.uniform(1, 100), 2),
                "merchant": f"m-{rng.randrange(6)}",
                "event_time": datetime.datetime.fromtimestamp(start + rng.uniform(0, 240), datetime.UTC).isoformat(),
            }
        )
        for _ in range(40)
    ]


def bigtable_values(table):
    """{(entity, window, window end seconds): {feature: value}} from every cell version of the online store."""
    values = {}
    for row in table.read_rows():
        for qualifier, cells in row.cells.get(BIGTABLE_COLUMN_FAMILY, {}).items():
            feature = qualifier.decode()
            for cell in cells:
                key = (row.row_key.decode(), feature.rsplit("_", 1)[1], cell.timestamp.timestamp())
                values.setdefault(key, {})[feature] = json.loads(cell.value)
    return values


@pytest.fixture(scope="module")
def streamed(services, project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("window_e2e")
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(json.dumps(SPEC.model_dump(exclude_none=True)))
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {n: publisher.topic_path(project, n) for n in ("transactions", "window-dead-letters")}
    subs = {n: subscriber.subscription_path(project, f"{n}-sub") for n in topics}
    for name, topic in topics.items():
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subs[name], topic=topic)
    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--window_spec",
            str(spec_path),
            "--input_subscription",
            subs["transactions"],
            "--bigtable_instance",
            "stream",
            "--bigtable_table",
            "online",
            "--dead_letter_topic",
            topics["window-dead-letters"],
            "--allowed_lateness_seconds",
            "3600",
        ]
    )
    spec = window_features.validate(options)
    pipeline = beam.Pipeline(options=options)
    window_features.build(pipeline, options, spec)
    result = pipeline.run()
    events = make_events()
    expected = {
        k: {f: v for f, v in features.items() if v is not None}
        for k, features in expected_features(valid_events(events), WINDOWS).items()
    }
    table = bigtable.Client(project=project, admin=True).instance("stream").table("online")
    try:
        for line in [*events, '{"card_id": "c-0", "amount": ', '{"amount": 3, "event_time": "2026-11-25T10:00:00Z"}']:
            publisher.publish(topics["transactions"], line.encode()).result(timeout=30)
        deadline, online = time.time() + 180, {}
        while time.time() < deadline:
            online = bigtable_values(table) if table.exists() else {}
            if online.keys() == expected.keys() and all(online[k] == pytest.approx(v) for k, v in expected.items()):
                break
            time.sleep(3)
        dead = wait_for_messages(subscriber, subs["window-dead-letters"], 2)
    finally:
        result.cancel()
    return {"events": events, "expected": expected, "online": online, "dead": dead, "tmp": tmp, "spec_path": spec_path}


def test_streaming_online_store_matches_the_oracle(streamed):
    assert_same_features(streamed["online"], streamed["expected"])


def test_backfill_gives_the_streaming_values(streamed):
    tmp = streamed["tmp"]
    events_file = tmp / "events.jsonl"
    events_file.write_text("\n".join(streamed["events"]) + "\n")
    window_features.run(
        [
            "--window_spec",
            str(streamed["spec_path"]),
            "--input_files",
            str(events_file),
            "--output_dir",
            str(tmp / "backfill"),
            "--progress",
            "off",
        ]
    )
    rows = [
        json.loads(line)
        for path in (tmp / "backfill").glob("feature_rows*.jsonl")
        for line in path.read_text().splitlines()
    ]
    backfill = {k: {f: v for f, v in features.items() if v is not None} for k, features in row_values(rows).items()}
    assert_same_features(backfill, streamed["online"])


def test_malformed_messages_are_dead_letters(streamed):
    dead = sorted(streamed["dead"], key=lambda d: d["reason"])
    assert [d["reason"] for d in dead] == ["invalid_json", "missing_entity"]
    assert all(d["pipeline"] == "window_features" and d["step"] == "ParseEvents" for d in dead)
    assert dead[0]["payload_string"] == '{"card_id": "c-0", "amount": '
