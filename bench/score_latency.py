"""Benchmark: publish-to-prediction latency of near-real-time scoring through the Pub/Sub emulator, for
the streaming pipeline (`python -m pipelines.score --input_subscription ...` on the local streaming runner)
against a baseline: a plain Pub/Sub subscriber that calls the same SavedModel in TensorFlow on each
request alone and publishes the prediction (the smallest service a team would write by hand).

    python -m bench.score_latency [--rate 20] [--seconds 20]

The model is bench.score's small CNN (its signature decodes JPEG bytes). Each system gets its own
request topic and runs in its own process; they are measured one after the other. After a warm-up
request has come back (runner start, model load), requests are published at a steady rate (open loop)
and a request's latency runs from the publish call until its prediction reaches this process.
"""

import argparse
import base64
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULT_TIMEOUT_S = 120


def baseline_service(model_path, subscription, topic):
    """The hand-written service: one model call per request, as it arrives."""
    import tensorflow as tf
    from google.cloud import pubsub_v1

    signature = tf.saved_model.load(model_path).signatures["serving_default"]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()

    def score(message):
        request = json.loads(message.data)
        image = base64.b64decode(request["image_bytes"]["b64"])
        scores = signature(image_bytes=tf.constant([image]))["scores"].numpy()[0]
        publisher.publish(topic, json.dumps({"request_id": request["id"], "scores": scores.tolist()}).encode())
        message.ack()

    subscriber.subscribe(subscription, score).result()  # serves until the process is stopped


class Arrivals:
    """Arrival times of predictions on a subscription, by request id (a streaming pull in the background)."""

    def __init__(self, subscriber, subscription):
        self.times, self._lock = {}, threading.Lock()
        self._future = subscriber.subscribe(subscription, self._arrived)

    def _arrived(self, message):
        now = time.time()
        request_id = json.loads(message.data)["request_id"]
        with self._lock:
            self.times.setdefault(request_id, now)  # a redelivered prediction keeps its first arrival
        message.ack()

    def wait_for(self, request_ids, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if all(i in self.times for i in request_ids):
                    return True
            time.sleep(0.05)
        return False

    def stop(self):
        self._future.cancel()


def measure(name, command, requests_topic, predictions_sub, images, rate, seconds):
    """Starts the system, warms it up, publishes at `rate`/s for `seconds` and returns the latencies (ms)
    of the requests whose predictions came back, and how many did not."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    arrivals = Arrivals(subscriber, predictions_sub)
    system = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:

        def publish(request_id, image):
            body = json.dumps({"id": request_id, "image_bytes": {"b64": base64.b64encode(image).decode()}}).encode()
            sent = time.time()
            publisher.publish(requests_topic, body)
            return sent

        publish(f"{name}-warm-up", images[0])
        if not arrivals.wait_for([f"{name}-warm-up"], timeout=180):
            system.kill()
            raise RuntimeError(f"{name}: no prediction for the warm-up request\n{system.communicate()[1][-3000:]}")
        sent, start = {}, time.time()
        for n in range(int(rate * seconds)):
            time.sleep(max(0.0, start + n / rate - time.time()))
            sent[f"{name}-{n}"] = publish(f"{name}-{n}", images[n % len(images)])
        arrivals.wait_for(list(sent), timeout=RESULT_TIMEOUT_S)
    finally:
        system.terminate()
        system.wait(timeout=30)
        arrivals.stop()
    latencies = [(arrivals.times[i] - t) * 1000 for i, t in sent.items() if i in arrivals.times]
    return np.array(latencies), len(sent) - len(latencies)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20, help="Requests per second. Default: 20.")
    parser.add_argument("--seconds", type=float, default=20, help="How long requests are sent. Default: 20.")
    parser.add_argument("--child", choices=("baseline",), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--subscription", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        baseline_service(args.model, args.subscription, args.topic)
        return

    import os

    from google.cloud import pubsub_v1

    from bench.score import make_cnn
    from pipelines.samples.images import LABELS
    from pipelines.samples.score_model import encoded_image
    from tests.harness import PROJECT, LocalServices

    services = LocalServices().start()
    os.environ.update(services.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_cnn(Path(tmp))
            rng = random.Random(5)
            images = [encoded_image(LABELS[n % 3], rng) for n in range(50)]
            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()

            def topic_and_subscription(name):
                topic = publisher.create_topic(name=publisher.topic_path(PROJECT, name)).name
                sub = subscriber.subscription_path(PROJECT, name)
                subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
                return topic, sub

            systems = {}
            for name in ("pipeline", "baseline"):
                requests, requests_sub = topic_and_subscription(f"{name}-requests")
                predictions, predictions_sub = topic_and_subscription(f"{name}-predictions")
                command = (
                    [
                        sys.executable,
                        "-m",
                        "pipelines.score",
                        "--runner",
                        "BundleBasedDirectRunner",
                        "--project",
                        PROJECT,
                        "--input_subscription",
                        requests_sub,
                        "--model_path",
                        str(model),
                        "--predictions_topic",
                        predictions,
                        "--output_dir",
                        str(Path(tmp) / "out"),
                    ]
                    if name == "pipeline"
                    else [
                        sys.executable,
                        "-m",
                        "bench.score_latency",
                        "--child",
                        "baseline",
                        "--model",
                        str(model),
                        "--subscription",
                        requests_sub,
                        "--topic",
                        predictions,
                    ]
                )
                systems[name] = (command, requests, predictions_sub)
            print(
                f"{args.rate:g} requests/s for {args.seconds:g} s per system; latency from publish to the "
                f"prediction's arrival, in ms"
            )
            print(f"{'system':<42}{'received':>10}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
            results = {}
            for name, (command, requests, predictions_sub) in systems.items():
                latencies, lost = measure(name, command, requests, predictions_sub, images, args.rate, args.seconds)
                results[name] = np.percentile(latencies, [50, 95, 99, 100])
                label = {
                    "pipeline": "pipeline (BundleBasedDirectRunner)",
                    "baseline": "baseline (plain subscriber, TF per request)",
                }[name]
                print(
                    f"{label:<42}{f'{len(latencies)}/{len(latencies) + lost}':>10}"
                    + "".join(f"{v:>8.0f}" for v in results[name])
                )
            p50, _, p99, _ = results["pipeline"] / results["baseline"]
            print(f"pipeline / baseline latency: p50 {p50:.1f}x, p99 {p99:.1f}x")
    finally:
        services.stop()


if __name__ == "__main__":
    main()
