"""The serving loop on the local emulators, in one command (`make loop`; docs/serving_loop.md).

Three streaming jobs run as the manuals launch them, on Beam's local runner:
- `pipelines.window_features` turns card transactions (Pub/Sub) into window features in the Bigtable
  online store;
- `pipelines.score` scores requests with those features read at each request's time, sends half of the
  traffic to a canary model, and rolls the canary back when a burn-rate alert of its SLOs fires;
- `pipelines.sli --sli_rows_subscription` evaluates the SLOs of both pipelines from the health rows they
  publish (`--health_topic`), so that a stalled pipeline pages.

This script publishes transactions and requests and prints what each job does as it happens. Once the canary
has been rolled back, predictions have read features and the feature job's first health row is out, it stops
the feature job (a stall) while requests go on, until the stall has paged; then it stops the traffic and waits
for every answer. It then checks the loop's promises: every request answered exactly once (a prediction or a
dead letter), through the stall too, only the canary failing, traffic back on the primary after the rollback,
every feature read equal to the sum of what was published in its window, features gone stale in the stall
read as no events, and the freshness alert of the stalled pipeline.

    python -m scripts.serving_loop                  # starts the emulators itself (tests/harness.py)
    python -m scripts.serving_loop --workdir output/serving_loop
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.harness import PROJECT, LocalServices, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "pipelines" / "samples"
WINDOW_SPEC = SAMPLES / "window_features" / "transactions.yaml"
CANARY_SLOS = SAMPLES / "score" / "canary_slos.yaml"
PIPELINE_SLOS = SAMPLES / "pipeline_slos" / "pipeline_slos.yaml"
INSTANCE, TABLE = "serving-loop", "card_features"
TOPICS = ("transactions", "requests", "predictions", "dead-letters", "rollbacks", "pipeline-health", "alerts")
CARDS = [f"c-{i:02d}" for i in range(12)]  # cards with transactions
NEW_CARDS = [f"new-{i}" for i in range(4)]  # requests only: no features, so the canary fails on them
CANARY_FRACTION = 0.5
STALLED_SLO = "window-features-freshness"


def log(started, message):
    print(f"[{time.time() - started:5.0f} s] {message}", flush=True)


def save_models(root):
    """Version 1 returns the card's spend over the last 10 minutes (amount_sum_10m), so each prediction shows
    the feature it read. Version 2, the canary, returns 1.5 times that and fails on a card without
    transactions in the window (a cold-start bug: it asserts amount_count_10m > 0)."""
    import tensorflow as tf

    class Spend(tf.Module):
        def __init__(self, factor, needs_history):
            super().__init__()
            self._factor, self._needs_history = factor, needs_history

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="amount_count_10m"),
                tf.TensorSpec([None], tf.float32, name="amount_sum_10m"),
            ]
        )
        def serve(self, amount_count_10m, amount_sum_10m):
            if self._needs_history:
                tf.debugging.assert_positive(amount_count_10m, message="canary: a card without history")
            return {"spend": amount_sum_10m * self._factor}

    for version, module in (("1", Spend(1.0, False)), ("2", Spend(1.5, True))):
        tf.saved_model.save(module, str(root / version), signatures={"serving_default": module.serve})


def goes_to_canary(request_id):
    """The routing rule (transforms/scoring/rollout.py canary_bucket), computed here on its own."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:16], 16) / 16**16 < CANARY_FRACTION


class Topics:
    """The loop's topics (`loop-<name>`): the jobs read the inputs through `loop-<name>-in` subscriptions, and
    this script watches the outputs through `loop-<name>-watch` ones, each pulled by a thread of its own that
    keeps every message, duplicates included."""

    JOB_INPUTS = ("transactions", "requests", "pipeline-health")
    WATCHED = ("predictions", "dead-letters", "rollbacks", "pipeline-health", "alerts")

    def __init__(self, project):
        from google.cloud import pubsub_v1

        self.publisher, self.subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        self.topic = {name: self.publisher.topic_path(project, f"loop-{name}") for name in TOPICS}
        self.job_sub = {n: self.subscriber.subscription_path(project, f"loop-{n}-in") for n in self.JOB_INPUTS}
        watch = {n: self.subscriber.subscription_path(project, f"loop-{n}-watch") for n in self.WATCHED}
        for name in TOPICS:
            self.publisher.create_topic(name=self.topic[name])
        for subscriptions in (self.job_sub, watch):
            for name, subscription in subscriptions.items():
                self.subscriber.create_subscription(name=subscription, topic=self.topic[name])
        self.messages = {name: [] for name in self.WATCHED}
        self._seen = dict.fromkeys(self.WATCHED, 0)
        self._lock, self._closed = threading.Lock(), threading.Event()
        self._pulls = [threading.Thread(target=self._pull, args=(n, watch[n]), daemon=True) for n in self.WATCHED]
        for pull in self._pulls:
            pull.start()

    def _pull(self, name, subscription):
        while not self._closed.is_set():
            try:
                received = self.subscriber.pull(subscription=subscription, max_messages=500, timeout=10)
            except Exception:  # noqa: BLE001 - a pull that timed out or failed: pull again
                continue
            messages = received.received_messages
            if messages:
                self.subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in messages])
                with self._lock:
                    self.messages[name] += [json.loads(m.message.data) for m in messages]

    def publish(self, name, record):
        return self.publisher.publish(self.topic[name], json.dumps(record).encode())

    def new(self, name):
        """The messages of a topic that came since the last call."""
        with self._lock:
            fresh = self.messages[name][self._seen[name] :]
            self._seen[name] = len(self.messages[name])
        return fresh

    def close(self):
        self._closed.set()
        for pull in self._pulls:
            pull.join(timeout=15)


def job_commands(project, topics, workdir, delay_seconds):
    """The three jobs' command lines, as the manuals give them."""
    common = ["--project", project]
    health = ["--health_topic", topics.topic["pipeline-health"]]
    commands = {
        "window_features": [
            *("pipelines.window_features", "--window_spec", str(WINDOW_SPEC)),
            *("--input_subscription", topics.job_sub["transactions"]),
            *("--bigtable_instance", INSTANCE, "--bigtable_table", TABLE),
            *("--output_dir", str(workdir / "window_features"), *health),
        ],
        "score": [
            *("pipelines.score", "--input_subscription", topics.job_sub["requests"]),
            *("--model_path", str(workdir / "models" / "1"), "--canary_model_dir", str(workdir / "models" / "2")),
            *("--canary_fraction", str(CANARY_FRACTION), "--rollout_slo_config", str(CANARY_SLOS)),
            *("--rollback_control_file", str(workdir / "rollback.json"), "--rollback_poll_seconds", "1"),
            *("--rollback_topic", topics.topic["rollbacks"], "--predictions_topic", topics.topic["predictions"]),
            *("--dead_letter_topic", topics.topic["dead-letters"], "--max_batch_duration_secs", "1"),
            *("--feature_store_instance", INSTANCE, "--feature_store_table", TABLE),
            *("--feature_window_spec", str(WINDOW_SPEC), "--output_dir", str(workdir / "score"), *health),
        ],
        "evaluator": [
            *("pipelines.sli", "--sli_config", str(PIPELINE_SLOS)),
            *("--sli_rows_subscription", topics.job_sub["pipeline-health"]),
            *("--sli_rows_delay_seconds", str(delay_seconds), "--alerts_topic", topics.topic["alerts"]),
            *("--output_dir", str(workdir / "evaluator")),
        ],
    }
    return {name: [sys.executable, "-m", argv[0], *common, *argv[1:]] for name, argv in commands.items()}


def launch(argv, log_path):
    """A job as a process of its own (its own process group, so that stop_process_group ends its workers too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def table_exists(project):
    from google.cloud import bigtable

    client = bigtable.Client(project=project, admin=True)
    try:
        return client.instance(INSTANCE).table(TABLE).exists()
    finally:
        client.close()


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def expected_sum(transactions, card, window_end):
    """What card spent in the 10-minute window ending at `window_end`, from what this script published."""
    return sum(amount for c, t, amount in transactions if c == card and window_end - 600 <= t < window_end)


def run_loop(project, env, workdir, delay_seconds=30, rate=10, request_rate=4, deadline_seconds=480):
    """Runs the loop; returns its summary (timings, counts and the checks, each (description, passed))."""
    workdir = Path(workdir)
    started = time.time()
    os.environ.update(env)  # this process's clients and the jobs talk to the emulators
    (workdir / "rollback.json").unlink(missing_ok=True)  # a control file left by an earlier run
    topics = Topics(project)
    commands = job_commands(project, topics, workdir, delay_seconds)
    jobs = {name: launch(commands[name], workdir / "logs" / f"{name}.log") for name in ("window_features", "evaluator")}
    save_models(workdir / "models")  # meanwhile
    jobs["score"] = launch(commands["score"], workdir / "logs" / "score.log")
    log(started, f"started window_features, score and the SLO evaluator (logs: {workdir / 'logs'})")
    rng = random.Random(7)
    transactions, requests, cards_of = [], {}, {}
    after_rollback, events = [], {}
    serving = False  # requests start once the online store's table exists (a lookup of a missing one fails)
    try:
        while time.time() - started < deadline_seconds and "paged" not in events:
            now = time.time()
            # no transactions in the 2 s before a minute ends: the direct runner's Pub/Sub watermark is the
            # wall clock, so one published there could reach its window after the watermark closed it
            if now % 60 < 58:
                for _ in range(rate):
                    card = rng.choice(CARDS)
                    amount = round(rng.uniform(1, 100), 2)
                    at = time.time()
                    iso = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")
                    topics.publish("transactions", {"card_id": card, "event_time": iso, "amount": amount})
                    transactions.append((card, _epoch(iso), amount))
            if not serving and table_exists(project):
                serving = True
                log(started, f"the online store {INSTANCE}/{TABLE} exists: requests start")
            if serving:
                for _ in range(request_rate):
                    request_id = f"r{len(requests)}"
                    card = rng.choice(CARDS + NEW_CARDS)
                    topics.publish("requests", {"id": request_id, "card_id": card})
                    requests[request_id], cards_of[request_id] = time.time(), card
                    if "rolled_back" in events and now > events["rolled_back"] + 3 and goes_to_canary(request_id):
                        after_rollback.append(request_id)
            _watch(topics, started, events)
            ready = len(after_rollback) >= 10 and {"features_read", "features_health"} <= events.keys()
            if ready and "stalled" not in events:
                # the stall: the feature job stops (its input keeps coming), its health rows with it, while
                # the scorer goes on getting requests and reading the features it left
                stop_process_group(jobs["window_features"], 20)
                events["stalled"] = time.time()
                log(started, "window_features STOPPED (a stall): its health rows stop, the evaluator should page")
            time.sleep(max(0.0, 1 - (time.time() - now)))
        log(started, f"published {len(transactions)} transactions and {len(requests)} requests; draining")
        drain_until = time.time() + 120
        while time.time() < drain_until and not set(requests) <= set(_answered(topics)):
            _watch(topics, started, events)
            time.sleep(1)
    finally:
        for job in jobs.values():
            stop_process_group(job, 20)
        topics.close()
    summary = _summary(topics, started, events, transactions, requests, cards_of, after_rollback)
    summary["diagnostics"] = _diagnostics(workdir)
    return summary


def _diagnostics(workdir):
    """What the scoring job's own files say of its canary SLOs, for a run whose rollback did not come: the
    last status rows of canary-availability and the watermark warnings in its log."""
    status = []
    for path in sorted((workdir / "score").glob("rollout_slo_status-*.jsonl")):
        status += [json.loads(line) for line in path.read_text().splitlines()]
    canary = sorted((row for row in status if row["slo"] == "canary-availability"), key=lambda r: r["evaluated_at"])
    log_text = (workdir / "logs" / "score.log").read_text(errors="replace")
    return {
        "canary_availability_last_minutes": [
            {k: row[k] for k in ("evaluated_at", "events", "bad_events", "burn_rates", "alerts_firing")}
            for row in canary[-5:]
        ],
        "score_log_watermark_warnings": log_text.count("Watermark moved backwards"),
    }


def _watch(topics, started, events):
    """Prints what is new on the output topics and notes the loop's milestones in `events`."""
    for prediction in topics.new("predictions"):
        ten = _window_time(prediction, "10m")
        if ten and "features_read" not in events:
            events["features_read"] = time.time()
            log(started, f"score: request {prediction['request_id']} read window features (10m window up to {ten})")
    for dead in topics.new("dead-letters"):
        if "first_failure" not in events:
            events["first_failure"] = time.time()
            log(started, f"score: the canary failed a request ({dead['reason']}: {dead['error_message'][:80]})")
    for rollback in topics.new("rollbacks"):
        events.setdefault("rolled_back", time.time())
        log(
            started,
            f"score: ROLLBACK of model {rollback['canary_version']} on {rollback['slo']} (burn rate "
            f"{rollback['burn_rate_long']:.1f} > {rollback['threshold']:.2f}); traffic returns to the primary",
        )
    for row in topics.new("pipeline-health"):
        if row["sli_name"] == "freshness":
            log(
                started,
                f"health: {row['journey']} minute {row['window_start'][11:16]}: {row['total']} outputs, "
                f"{row['bad']} stale, max lag {row['latency_max_ms'] / 1000:.1f} s; published "
                f"{time.time() - _epoch(row['window_start']) - 60:.0f} s after the minute",
            )
            if row["journey"] == "window_features":
                events.setdefault("features_health", time.time())
    for alert in topics.new("alerts"):
        log(started, f"evaluator: {alert['state']} {alert['severity']} {alert['slo']} at {alert['at'][11:19]}")
        if alert["slo"] == STALLED_SLO and alert["state"] == "FIRING" and "stalled" in events:
            events.setdefault("paged", time.time())


def _window_time(prediction, window):
    for entry in prediction.get("feature_time_index") or []:
        if entry["window_name"] == window:
            return entry["time_index"]
    return None


def _dead_letter_id(dead):
    return json.loads(dead["payload_string"])["request_id"]


def _answered(topics):
    return [p["request_id"] for p in topics.messages["predictions"]] + [
        _dead_letter_id(d) for d in topics.messages["dead-letters"]
    ]


def _summary(topics, started, events, transactions, requests, cards_of, after_rollback):
    predictions, dead = topics.messages["predictions"], topics.messages["dead-letters"]
    answered = _answered(topics)
    unanswered = set(requests) - set(answered)
    stalled_at = events.get("stalled", math.inf)
    in_stall = {r for r, at in requests.items() if at > stalled_at}
    by_id = {p["request_id"]: p for p in predictions}
    wrong_features, read, stale_in_stall = [], 0, 0
    for p in predictions:
        if p["model_version"] != "1":
            continue
        ten = _window_time(p, "10m")
        card = cards_of[p["request_id"]]
        # no current 10m window (a card without transactions, or one whose last window the stall left
        # stale): the value of no events, a sum of 0
        want = 0.0 if ten is None else expected_sum(transactions, card, _epoch(ten))
        read += ten is not None
        stale_in_stall += ten is None and card in CARDS and requests[p["request_id"]] > stalled_at
        spend = json.loads(p["outputs"])["spend"]
        if not math.isclose(spend, want, rel_tol=1e-6, abs_tol=1e-3):  # the model computes in float32
            wrong_features.append((p["request_id"], spend, want))
    alerts = topics.messages["alerts"]
    checks = [
        ("every request answered exactly once", sorted(answered) == sorted(requests)),
        (
            "requests were answered through the stall",
            bool(in_stall) and not in_stall & unanswered,
        ),
        ("only canary requests failed", all(goes_to_canary(_dead_letter_id(d)) for d in dead)),
        ("the canary was rolled back", "rolled_back" in events),
        (
            "after the rollback, the canary's requests went to the primary",
            bool(after_rollback) and all(by_id.get(r, {}).get("model_version") == "1" for r in after_rollback),
        ),
        ("predictions read online features", read > 0),
        ("every feature read is the sum of what was published in its window", read > 0 and not wrong_features),
        ("features the stall left stale were read as no events (sum 0)", stale_in_stall > 0 and not wrong_features),
        ("the stalled feature pipeline paged", "paged" in events),
    ]
    return {
        "seconds": {name: round(at - started, 1) for name, at in events.items()},
        "transactions": len(transactions),
        "requests": len(requests),
        "predictions": len(predictions),
        "dead_letters": len(dead),
        "predictions_with_features": read,
        "stale_in_stall": stale_in_stall,
        "wrong_features": wrong_features[:10],
        "unanswered": {r: round(at - started, 1) for r, at in requests.items() if r in unanswered},
        "rollbacks": topics.messages["rollbacks"],
        "alerts": alerts,
        "prediction_rows": predictions,
        "dead_letter_rows": dead,
        "checks": checks,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="output/serving_loop", help="models, job logs and job outputs")
    parser.add_argument("--rate", type=int, default=10, help="transactions a second. Default: 10")
    parser.add_argument(
        "--request_rate",
        type=int,
        default=4,
        help="scoring requests a second. Default: 4 (the local runner's scorer keeps up with about 7 here)",
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["CLOUDSDK_CONFIG"] = tempfile.mkdtemp(prefix="gcloud-config-")  # never real credentials
    services = LocalServices().start()
    try:
        summary = run_loop(PROJECT, services.env, workdir, rate=args.rate, request_rate=args.request_rate)
    finally:
        services.stop()
    shown = (
        *("seconds", "transactions", "requests", "predictions", "dead_letters"),
        *("predictions_with_features", "stale_in_stall"),
    )
    print(json.dumps({k: summary[k] for k in (*shown, "wrong_features", "unanswered")}, indent=1))
    for description, passed in summary["checks"]:
        print(f"{'ok  ' if passed else 'FAIL'} {description}")
    if not all(passed for _, passed in summary["checks"]):
        print(json.dumps(summary["diagnostics"], indent=1))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
