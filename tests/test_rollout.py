"""Model rollouts (pipelines.score --canary_model_dir/--shadow_model_dir, transforms/scoring/rollout.py): the
hash routing, the router on arbitrary batches, the divergence of the versions' predictions against numpy, the
per-version SLI rows of a batch run counted by hand, and a streaming run through the Pub/Sub emulator where a
canary that fails on half its inputs is rolled back."""

import datetime
import hashlib
import json
import random
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from google.cloud import bigquery, pubsub_v1
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import score
from pipelines.samples import SCORE_DIR
from tests.test_sli_e2e import bq_client
from tests.test_slo_queries import _schema
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_jsonl
from transforms.scoring.model import ScoringBatch, ScoringRequest
from transforms.scoring.requests import failed_batch_dead_letters
from transforms.scoring.rollout import (
    CANARY_TAG,
    DIVERGENCE_PATH,
    FAILED,
    SHADOW_TAG,
    SUCCEEDED,
    RollbackControl,
    RollbackMessages,
    RouteRequests,
    canary_bucket,
    divergence,
    divergence_events,
    failure_event,
    prediction_value,
)
from transforms.sli.config import parse_sli_config
from transforms.sli.rows import SLI_ROW_BQ_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = SCORE_DIR / "canary_slos.yaml"
FAIL_FROM = 0.5  # the canary fails on x >= this


class Doubler(tf.Module):
    """Version 1: y = 2x. Version 2 (`fails_from`): y = 3x, and an error for x >= fails_from."""

    def __init__(self, factor, fails_from=None):
        super().__init__()
        self._factor, self._fails_from = factor, fails_from

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        if self._fails_from is not None:
            tf.debugging.assert_less(x, tf.constant(self._fails_from), message="canary: x out of its range")
        return {"y": x * self._factor}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout") / "models"
    for version, module in (("1", Doubler(2.0)), ("2", Doubler(3.0, FAIL_FROM))):
        tf.saved_model.save(module, str(root / version), signatures={"serving_default": module.serve})
    return root


def read_outputs(output_dir, name):
    return read_jsonl(str(output_dir / f"{name}*.jsonl"))


def goes_to_canary(request_id, fraction):
    """The routing rule computed a second way: the SHA-256 hex digest's first 16 digits as a fraction."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:16], 16) / 16**16 < fraction


# -- the routing rule and the router ------------------------------------------------------------------------


def test_bucket_is_the_sha256_prefix_and_near_the_fraction():
    ids = [f"req-{i}" for i in range(20_000)]
    for request_id in ids[:50]:
        assert canary_bucket(request_id) == int(hashlib.sha256(request_id.encode()).hexdigest()[:16], 16) / 16**16
    share = np.mean([canary_bucket(i) < 0.2 for i in ids])
    assert abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / len(ids))  # within 4 standard deviations of a binomial


def _batch(request_ids):
    requests = [ScoringRequest(r, f"k{i}", 0.0) for i, r in enumerate(request_ids)]
    return ScoringBatch(requests, {"x": np.arange(len(request_ids), dtype=np.float32)})


def _route(router, batch):
    outputs = {None: [], CANARY_TAG: [], SHADOW_TAG: [], DEAD_LETTER_TAG: []}
    for output in router.process(batch):
        tag, value = (output.tag, output.value) if isinstance(output, beam.pvalue.TaggedOutput) else (None, output)
        outputs[tag].append(value)
    return outputs


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=30), st.floats(0.01, 0.99))
def test_router_splits_any_batch_into_exactly_its_requests(request_ids, fraction):
    router = RouteRequests("score", fraction)
    router.setup()
    outputs = _route(router, _batch(request_ids))
    assert not outputs[DEAD_LETTER_TAG]
    seen = []
    for tag in (None, CANARY_TAG):
        for part in outputs[tag]:
            for request, x in zip(part.requests, part.examples["x"], strict=True):
                assert request_ids[int(x)] == request.request_id  # the rows stay with their requests
                assert goes_to_canary(request.request_id, fraction) == (tag == CANARY_TAG)
                seen.append(int(x))
    assert sorted(seen) == list(range(len(request_ids)))


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())))
def test_router_on_a_value_that_is_no_batch_gives_one_dead_letter(value):
    router = RouteRequests("score", 0.5)
    router.setup()
    outputs = _route(router, value)
    assert len(outputs[DEAD_LETTER_TAG]) == 1 and not outputs[None] and not outputs[CANARY_TAG]
    assert outputs[DEAD_LETTER_TAG][0]["step"] == "RouteRequests"


def test_shadow_gets_every_request_and_a_rollback_sends_all_to_the_primary(tmp_path):
    batch = _batch([f"r{i}" for i in range(40)])
    shadow = RouteRequests("score", shadow=True)
    shadow.setup()
    outputs = _route(shadow, batch)
    assert outputs[None] == [batch] and outputs[SHADOW_TAG] == [batch]
    control = tmp_path / "rollback.json"
    canary = RouteRequests("score", 0.5, control_file=str(control), poll_seconds=0.001)
    canary.setup()
    assert len(_route(canary, batch)[CANARY_TAG][0].requests) == sum(goes_to_canary(f"r{i}", 0.5) for i in range(40))
    control.write_text("{}")
    time.sleep(0.002)  # past the poll interval: the next batch reads the file
    outputs = _route(canary, batch)
    assert outputs[None] == [batch] and not outputs[CANARY_TAG]


def test_control_file_is_read_at_most_once_per_poll_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "rollback.json"
    control = RollbackControl(str(path), 10, clock=lambda: now[0])
    assert not control.rolled_back()
    path.write_text("{}")
    now[0] = 9.9
    assert not control.rolled_back()  # not looked at again yet
    now[0] = 10.0
    assert control.rolled_back()
    path.unlink()
    now[0] = 100.0
    assert control.rolled_back()  # a rollback stays


def test_only_firing_alerts_of_canary_slos_give_rollback_messages():
    alert = {
        "slo": "canary-availability",
        "state": "FIRING",
        "severity": "page",
        "at": "2026-12-02T00:01:00+00:00",
        "burn_rate_long": 50.0,
        "burn_rate_short": 50.0,
        "threshold": 5.76,
    }
    fn = RollbackMessages(frozenset(["canary-availability"]), "2", "1")
    [message] = fn.process(alert)
    assert (message["action"], message["canary_version"], message["primary_version"]) == ("rollback", "2", "1")
    assert not list(fn.process({**alert, "state": "RESOLVED"}))
    assert not list(fn.process({**alert, "slo": "primary-availability"}))


# -- start-up checks -----------------------------------------------------------------------------------------


def _options(models, tmp_path, *flags):
    return PipelineOptions(["--model_path", str(models / "1"), "--output_dir", str(tmp_path / "out"), *flags])


def _score_batch(models, tmp_path, xs, *flags):
    """Scores requests {id: x} from a file on FnApiRunner with `flags`; returns the output folder."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"id": r, "features": {"x": x}}) + "\n" for r, x in xs.items()))
    options = _options(models, tmp_path, "--runner", "FnApiRunner", "--input_files", str(requests), *flags)
    settings_ = score.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        score.build(pipeline, options, settings_)
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--canary_model_dir", "M2", "--shadow_model_dir", "M2"], "not both"),
        (["--canary_model_dir", "M2", "--canary_fraction", "1.5"], "--canary_fraction must be between 0 and 1"),
        (["--canary_model_dir", "M2", "--divergence_threshold", "0"], "--divergence_threshold must be between 0 and 1"),
        (["--rollback_topic", "projects/p/topics/t"], "--rollback_topic needs a second model"),
        (["--canary_model_dir", "M1"], "has the version '1' of --model_path"),
        (["--canary_model_dir", "M2", "--rollout_slo_config", str(SAMPLE_CONFIG)], "give --rollback_control_file"),
        (
            ["--canary_model_dir", "M3", "--rollout_slo_config", str(SAMPLE_CONFIG), "--rollback_control_file", "c"],
            "no journey of service 'scoring' matches model version '3'",
        ),
    ],
)
def test_bad_rollout_flags_are_named(models, tmp_path, flags, message):
    (models.parent / "3").mkdir(exist_ok=True)
    paths = {"M1": str(models / "1"), "M2": str(models / "2"), "M3": str(models / "2")}
    if "M3" in flags:  # a copy of version 2 under another version
        import shutil

        shutil.copytree(models / "2", models.parent / "3", dirs_exist_ok=True)
        paths["M3"] = str(models.parent / "3")
    flags = [paths.get(f, f) for f in flags]
    with pytest.raises(ValueError, match=message):
        score.validate(_options(models, tmp_path, *flags))


def test_sample_config_loads_with_one_journey_per_version():
    config = parse_sli_config(SAMPLE_CONFIG.read_text(), str(SAMPLE_CONFIG))
    assert [j.path for j in config.services[0].journeys] == ["/model/1", "/model/2", DIVERGENCE_PATH]


# -- the divergence of the versions' predictions ----------------------------------------------------------


def js_by_numpy(primary, second):
    """The divergence worked out a second way: numpy's histogram of the primary (10 bins), the second
    version's values in those bins plus one below and one above, Jensen-Shannon in base 2."""
    counts, edges = np.histogram(primary, bins=10)
    inside, _ = np.histogram(second, bins=edges)
    p = np.concatenate([[0], counts, [0]]) / len(primary)
    q = np.concatenate([[np.sum(second < edges[0])], inside, [np.sum(second > edges[-1])]]) / len(second)
    m = (p + q) / 2

    def kl(a):
        return np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0]))

    return (kl(p) + kl(q)) / 2


def _rows(values, at):
    scored_at = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat()
    return [{"top_k": [], "outputs": json.dumps({"y": v}), "scored_at": scored_at, "latency_ms": 0.0} for v in values]


def test_divergence_per_window_is_bad_for_a_shifted_version_and_good_for_an_identical_one():
    rng = np.random.default_rng(5)
    primary_a, primary_b = rng.normal(0, 1, 400).tolist(), rng.normal(0, 1, 400).tolist()
    shifted = [v + 1.0 for v in rng.normal(0, 1, 300).tolist()]
    expected = js_by_numpy(np.array(primary_a), np.array(shifted))
    assert divergence(primary_a, shifted) == pytest.approx(expected, rel=1e-9)
    assert expected > 0.1 and divergence(primary_b, primary_b) == 0.0
    start = 1_800_000_000  # a minute's start: window A is [start, start + 60), B the next minute
    config = parse_sli_config(SAMPLE_CONFIG.read_text(), str(SAMPLE_CONFIG))
    with beam.Pipeline("FnApiRunner") as pipeline:
        primary = pipeline | "Primary" >> beam.Create([_rows(primary_a, start + 10), _rows(primary_b, start + 70)])
        second = pipeline | "Second" >> beam.Create([_rows(shifted, start + 20), _rows(primary_b, start + 80)])
        (events,) = divergence_events(config, primary, second, 0.1)
        statuses = events | beam.Map(lambda e: (e.path, e.timestamp, e.status)) | beam.combiners.Count.PerElement()
        assert_that(  # one event per prediction of the second version
            statuses,
            equal_to(
                [
                    ((DIVERGENCE_PATH, start + 59.999999, FAILED), len(shifted)),
                    ((DIVERGENCE_PATH, start + 119.999999, SUCCEEDED), len(primary_b)),
                ]
            ),
        )


def test_divergence_equals_hand_worked_jensen_shannon():
    # primary [1, 1]: one bin [1, 1]; second [1, 5]: half in it, half above. p = (0, 1, 0), q = (0, 1/2, 1/2),
    # m = (0, 3/4, 1/4): JS = (log2(4/3) + (1/2 log2(2/3) + 1/2 log2(2))) / 2 = 0.311278...
    assert divergence([1.0, 1.0], [1.0, 5.0]) == pytest.approx(0.3112781244591328, rel=1e-12)
    # primary [0, 10]: ten bins of width 1, 0 in the first, 10 in the last (closed); 0.5 and 10 land there too
    assert divergence([0.0, 10.0], [0.5, 10.0]) == 0.0
    assert divergence([0.0, 10.0], [20.0, 20.0]) == pytest.approx(1.0)  # all above the primary's range


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30),
)
def test_divergence_of_any_values_is_between_0_and_1_and_0_for_the_same(primary, second):
    assert 0.0 <= divergence(primary, second) <= 1.0 + 1e-12
    assert divergence(primary, primary) == 0.0


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())))
def test_prediction_value_of_any_outputs_is_a_finite_number_or_none(outputs):
    value = prediction_value({"top_k": [], "outputs": json.dumps(outputs)})
    assert value is None or (isinstance(value, float) and np.isfinite(value))


# -- a batch run: predictions, dead letters and per-version SLI rows counted by hand, and the manual's
# per-version query on the BigQuery emulator -----------------------------------------------------------------


def test_batch_canary_scores_each_request_once_and_counts_per_version(models, tmp_path, services, project):
    rng = random.Random(3)
    xs = {f"b{i}": round(rng.random(), 3) for i in range(300)}
    control = tmp_path / "rollback.json"
    out = _score_batch(
        models,
        tmp_path,
        xs,
        *("--canary_model_dir", str(models / "2"), "--canary_fraction", "0.3"),
        *("--rollout_slo_config", str(SAMPLE_CONFIG), "--rollback_control_file", str(control)),
    )
    predictions = read_outputs(out, "predictions")
    dead = read_outputs(out, "dead_letters")
    canary = {r for r in xs if goes_to_canary(r, 0.3)}
    failing = {r for r in canary if xs[r] >= FAIL_FROM}
    assert sorted(p["request_id"] for p in predictions) == sorted(set(xs) - failing)
    assert sorted(json.loads(d["payload_string"])["request_id"] for d in dead) == sorted(failing)
    assert {d["reason"] for d in dead} == {"inference_failed"}
    for p in predictions:
        version, factor = ("2", 3.0) if p["request_id"] in canary else ("1", 2.0)
        assert p["model_version"] == version
        assert json.loads(p["outputs"])["y"] == pytest.approx(factor * xs[p["request_id"]], rel=1e-6)
    version_rows = [r for r in read_outputs(out, "rollout_sli_rows") if r["journey"] != "divergence"]
    rows = [r for r in version_rows if r["sli_name"] == "failed_requests"]
    totals = {}
    for row in rows:
        total, bad = totals.get(row["journey"], (0, 0))
        totals[row["journey"]] = (total + row["total"], bad + row["bad"])
    assert totals == {"model-1": (len(xs) - len(canary), 0), "model-2": (len(canary), len(failing))}
    versions_query(services, project, version_rows, totals)
    # half the canary's requests fail: a burn rate far over the threshold, the canary SLO's alert fires
    rollbacks = read_outputs(out, "rollbacks")
    # 3x against 2x: every minute diverges as well, so the divergence SLO fires too
    assert {r["slo"] for r in rollbacks} == {"canary-availability", "canary-divergence"}
    assert json.loads(control.read_text())["canary_version"] == "2"


def test_batch_canary_that_diverges_but_never_fails_is_rolled_back(models, tmp_path):
    xs = {f"d{i}": i / 400 for i in range(200)}  # x < 0.5: the canary (3x) never fails, it only diverges
    control = tmp_path / "rollback.json"
    out = _score_batch(
        models,
        tmp_path,
        xs,
        *("--canary_model_dir", str(models / "2"), "--canary_fraction", "0.5"),
        *("--rollout_slo_config", str(SAMPLE_CONFIG), "--rollback_control_file", str(control)),
    )
    canary = {r for r in xs if goes_to_canary(r, 0.5)}
    assert len(canary) >= 20  # the sample's min_events
    assert sorted(p["request_id"] for p in read_outputs(out, "predictions")) == sorted(xs)
    assert not read_outputs(out, "dead_letters")
    divergence_rows = [
        r for r in read_outputs(out, "rollout_sli_rows") if r["journey"] == "divergence" and r["sli_kind"] != "latency"
    ]
    # one event per canary prediction, every one bad: all requests went through scoring in a minute or two
    assert sum(r["total"] for r in divergence_rows) == sum(r["bad"] for r in divergence_rows) == len(canary)
    assert {r["slo"] for r in read_outputs(out, "rollbacks")} == {"canary-divergence"}
    assert json.loads(control.read_text())["slo"] == "canary-divergence"


def test_batch_shadow_writes_only_the_primary_and_counts_the_shadow_apart(models, tmp_path):
    xs = {f"h{i}": i / 40 for i in range(40)}  # x >= 0.5 for h20..h39: the shadow fails on half
    out = _score_batch(
        models, tmp_path, xs, "--shadow_model_dir", str(models / "2"), "--rollout_slo_config", str(SAMPLE_CONFIG)
    )
    predictions = read_outputs(out, "predictions")
    assert sorted(p["request_id"] for p in predictions) == sorted(xs)
    assert {p["model_version"] for p in predictions} == {"1"} and not read_outputs(out, "dead_letters")
    totals = {}
    for row in read_outputs(out, "rollout_sli_rows"):
        if row["sli_name"] == "failed_requests":
            total, bad = totals.get(row["journey"], (0, 0))
            totals[row["journey"]] = (total + row["total"], bad + row["bad"])
    compared, diverging = totals.pop("divergence")
    assert totals == {"model-1": (40, 0), "model-2": (40, 20)}
    # 3x on x < 0.5 against 2x on every x: every minute diverges, one bad event per shadow prediction
    assert (compared, diverging) == (20, 20)
    assert not read_outputs(out, "rollbacks")  # a shadow is never rolled back: it serves nothing


def versions_query(services, project, sli_rows, totals):
    """The per-version query of docs/score.md on the BigQuery emulator over the run's SLI rows."""
    sql = (ROOT / "sql" / "rollout_versions.sql").read_text()
    assert sql.strip() in (ROOT / "docs" / "score.md").read_text()
    client = bq_client(services, project)
    client.create_dataset("ml", exists_ok=True)
    table = bigquery.Table(f"{project}.ml.rollout_sli_rows", schema=_schema(SLI_ROW_BQ_SCHEMA["fields"]))
    client.delete_table(table, not_found_ok=True)
    client.create_table(table)
    assert client.insert_rows_json(table, sli_rows, retry=None) == []
    since = bigquery.ScalarQueryParameter("since", "TIMESTAMP", min(r["window_start"] for r in sli_rows))
    got = [dict(r) for r in client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=[since])).result()]
    assert [(r["journey"], r["requests"]) for r in got] == [(j, totals[j][0]) for j in sorted(totals)]
    for r in got:
        assert r["failed_rate"] == pytest.approx(totals[r["journey"]][1] / totals[r["journey"]][0])
        assert (
            r["slow_rate"]
            == sum(x["bad"] for x in sli_rows if x["journey"] == r["journey"] and x["sli_kind"] == "latency")
            / r["requests"]
        )


def test_a_failed_request_counts_from_its_receipt_to_its_failure():
    """The failed event of a request the model failed on: at the request's receipt, its latency the time to
    the failure (both read back from the dead letter's own timestamps), so a slow failure is slow too."""
    received_at = 1795341600.25  # 2026-11-22T10:00:00.25Z
    batch = ScoringBatch([ScoringRequest("slow", "k", received_at), ScoringRequest("b/1", "k", received_at, 1)], {})
    letters = list(failed_batch_dead_letters((batch, ("E", "boom", [])), "score"))
    for letter, request_id in zip(letters, ("slow", "b/1"), strict=True):
        event = failure_event(letter, "scoring", "2")
        failed_at = datetime.datetime.fromisoformat(letter["failed_at"]).timestamp()
        assert event.timestamp == received_at and event.value.timestamp == received_at
        assert event.value.latency_ms == pytest.approx((failed_at - received_at) * 1000)
        assert (event.value.path, event.value.status) == ("/model/2", FAILED)
        assert json.loads(letter["payload_string"]) == {"request_id": request_id}
    # a dead letter without the receipt time (not a scoring failure): at the failure, latency 0
    other = {**letters[0], "attributes": []}
    event = failure_event(other, "scoring", "2")
    assert event.value.latency_ms == 0.0
    assert event.timestamp == datetime.datetime.fromisoformat(other["failed_at"]).timestamp()


def test_scoring_freshness_counts_from_each_requests_publish_time(models, tmp_path):
    """The scorer's health rows: a request's lag runs from its Pub/Sub publish time, so that a backlog in the
    subscription makes the scorer stale. The lists of predictions cannot tell it by their Beam timestamps: the
    batching before the model stamps them at the end of the global window. Requests published 200-260 s
    before they are read (timestamped at their publish time, as the Pub/Sub read does), threshold 120 s."""
    now = int(time.time())  # TestStream watermarks are whole milliseconds
    published = {f"old{i}": now - 200 - 10 * i for i in range(7)}
    messages = [
        beam.window.TimestampedValue(
            PubsubMessage(
                json.dumps({"id": r, "features": {"x": 0.1}}).encode(),
                {},
                publish_time=datetime.datetime.fromtimestamp(at, datetime.UTC),
            ),
            at,
        )
        for r, at in published.items()
    ]
    stream = TestStream().advance_watermark_to(now - 300).add_elements(messages).advance_watermark_to_infinity()
    health = tmp_path / "health"
    options = _options(
        models, tmp_path, "--runner", "BundleBasedDirectRunner", "--streaming", "--health_output_dir", str(health)
    )
    with beam.Pipeline(options=options) as pipeline:
        score.build(pipeline, options, score.validate(options), source=stream)
    finished = time.time()
    rows = [r for r in read_jsonl(str(health / "health_rows*.jsonl")) if r["sli_name"] == "freshness"]
    assert sum(r["total"] for r in rows) == sum(r["bad"] for r in rows) == len(published)
    oldest_lag = max(now - at for at in published.values())
    assert oldest_lag * 1000 <= max(r["latency_max_ms"] for r in rows) <= (finished - now + oldest_lag) * 1000


# -- streaming through the Pub/Sub emulator: the canary fails, is rolled back, nothing is lost -------------


class Drain:
    """Pulls subscriptions, keeping every JSON message (duplicates included)."""

    def __init__(self, subscriber, subscription):
        self._subscriber, self._subscription, self.messages = subscriber, subscription, []

    def pull(self):
        response = self._subscriber.pull(subscription=self._subscription, max_messages=100, timeout=2)
        self.messages += [json.loads(m.message.data) for m in response.received_messages]
        if response.received_messages:
            self._subscriber.acknowledge(
                subscription=self._subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )


def _dead_letter_id(dead_letter):
    return json.loads(dead_letter["payload_string"])["request_id"]


def test_streaming_canary_is_rolled_back_and_every_request_is_scored_once(models, services, project, tmp_path):
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    names = ("rollout-requests", "rollout-predictions", "rollout-dead-letters", "rollbacks")
    topics = {n: publisher.topic_path(project, n) for n in names}
    subs = {n: subscriber.subscription_path(project, f"{n}-check") for n in names}
    for name in names:
        publisher.create_topic(name=topics[name])
        subscriber.create_subscription(name=subs[name], topic=topics[name])
    control = tmp_path / "rollback.json"
    options = PipelineOptions(
        ["--runner", "BundleBasedDirectRunner", "--project", project, "--streaming"]
        + ["--input_subscription", subs["rollout-requests"], "--model_path", str(models / "1")]
        + ["--canary_model_dir", str(models / "2"), "--canary_fraction", "0.5"]
        + ["--rollout_slo_config", str(SAMPLE_CONFIG), "--rollback_control_file", str(control)]
        + ["--rollback_poll_seconds", "1", "--rollback_topic", topics["rollbacks"]]
        + ["--predictions_topic", topics["rollout-predictions"], "--dead_letter_topic", topics["rollout-dead-letters"]]
        + ["--max_batch_duration_secs", "1"]
    )
    pipeline = beam.Pipeline(options=options)
    score.build(pipeline, options, score.validate(options))
    result = pipeline.run()
    predictions = Drain(subscriber, subs["rollout-predictions"])
    dead = Drain(subscriber, subs["rollout-dead-letters"])
    rollbacks = Drain(subscriber, subs["rollbacks"])
    rng, sent, after_rollback = random.Random(5), {}, []

    def publish(request_id):
        sent[request_id] = round(rng.random(), 3)
        body = json.dumps({"id": request_id, "features": {"x": sent[request_id]}}).encode()
        publisher.publish(topics["rollout-requests"], body)

    def answered():
        return {p["request_id"] for p in predictions.messages} | {_dead_letter_id(d) for d in dead.messages}

    started = time.time()
    try:
        deadline = time.time() + 240
        while not rollbacks.messages and time.time() < deadline:  # ~10 requests a second until the rollback
            for _ in range(5):
                publish(f"s{len(sent)}")
            for drain in (predictions, dead, rollbacks):
                drain.pull()
        assert rollbacks.messages, "no rollback message within 240 s"
        rolled_back_at = time.time()
        time.sleep(2)  # the router reads the control file within --rollback_poll_seconds
        for request_id in (f"after{i}" for i in range(100)):
            if goes_to_canary(request_id, 0.5) and len(after_rollback) < 12:  # ids the canary would get
                publish(request_id)
                after_rollback.append(request_id)
        deadline = time.time() + 60
        while not set(sent) <= answered() and time.time() < deadline:
            predictions.pull()
            dead.pull()
        predictions.pull()  # a last pull: a request scored twice would show here
        dead.pull()
    finally:
        drained_at = time.time()
        publisher.publish(topics["rollout-requests"], b"{}").result(timeout=30)  # ends the runner's waiting pull
        result.cancel()
    print(
        f"\nrollback message {rolled_back_at - started:.0f} s after the start, all {len(sent)} requests answered "
        f"{drained_at - rolled_back_at:.0f} s later; cancelled in {time.time() - drained_at:.0f} s"
    )
    # the failures fire canary-availability; on a loaded machine canary-latency (2 s) may fire as well
    by_slo = {m["slo"]: m for m in rollbacks.messages}
    # (and canary-divergence, once a minute of 3x against 2x has closed)
    allowed = {"canary-availability", "canary-latency", "canary-divergence"}
    assert "canary-availability" in by_slo and set(by_slo) <= allowed
    for message in by_slo.values():
        assert (message["canary_version"], message["primary_version"]) == ("2", "1")
        assert message["burn_rate_long"] > message["threshold"]
    assert json.loads(control.read_text())["slo"] in by_slo
    answers = [p["request_id"] for p in predictions.messages] + [_dead_letter_id(d) for d in dead.messages]
    assert sorted(answers) == sorted(sent)  # every request once: a prediction or a dead letter
    by_id = {p["request_id"]: p for p in predictions.messages}
    failed = {_dead_letter_id(d) for d in dead.messages}
    for request_id in failed:  # only the canary failed, only where it fails
        assert goes_to_canary(request_id, 0.5) and sent[request_id] >= FAIL_FROM
    assert all(by_id[r]["model_version"] == "1" for r in after_rollback)  # traffic is back on the primary
    assert any(p["model_version"] == "2" for p in predictions.messages)  # the canary did serve before
