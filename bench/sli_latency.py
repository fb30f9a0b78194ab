"""Benchmark: publish-to-row latency of the streaming SLI pipeline through the Pub/Sub emulator, once a
window's end has passed the watermark, against a baseline: a plain Pub/Sub subscriber that counts requests
per journey and window in a dict and writes each window's row to Bigtable as soon as the wall clock passes
its end (the smallest service a team would write by hand; it ignores late data).

    python -m bench.sli_latency [--rate 100] [--seconds 40] [--window_seconds 2]

Requests (the three log formats mixed, event time = publish time) are published at a steady rate (open
loop) to each system's own topic, one system after the other, each in its own process (traffic goes on
after the measured --seconds until their rows are in, so the watermark keeps moving); both write rows
to the Bigtable emulator, which this process polls every 50 ms. A (journey, window) row's latency runs
from the publish call of that window's last request of the journey until the row is seen in Bigtable.
Windows are short (--window_seconds) so that one run holds many of them; the config is the bundled
profile_service.yaml without its SLOs (which need 60 s windows).
"""

import argparse
import calendar
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import yaml

from pipelines import sli
from pipelines.samples.request_logs import generate_with_truth
from transforms.sli.config import UNMATCHED_JOURNEY

SLI_FOR_LATENCY = "availability"  # the row watched per journey and window
COLUMN_FAMILY = "sli"


def baseline_service(subscription, instance, table_id, window_seconds, config_path):
    """The hand-written service: parse, match and count in the subscriber callback; a loop writes each
    window's rows once the wall clock passes the window's end."""
    from google.cloud import bigtable, pubsub_v1

    from transforms.sli.config import JourneyMatcher, load_sli_config
    from transforms.sli.parsing import LogParser

    config = load_sli_config(config_path)
    parser, matcher = LogParser(config.formats), JourneyMatcher(config)
    table = bigtable.Client(project="local-project", admin=True).instance(instance).table(table_id)
    counts, lock = {}, threading.Lock()  # (service, journey, window start) -> [total, bad]

    def count(message):
        try:
            event = parser.event(message.data)
        except ValueError:
            message.ack()
            return
        service, journey, _ = matcher.classify(event.service, event.host, event.method, event.path)
        start = int(event.timestamp // window_seconds) * window_seconds
        with lock:
            cell = counts.setdefault((service, journey, start), [0, 0])
            cell[0] += 1
            cell[1] += event.status >= 500
        message.ack()

    pubsub_v1.SubscriberClient().subscribe(subscription, count)
    while True:
        time.sleep(0.01)
        now = time.time()
        with lock:
            done = [key for key in counts if key[2] + window_seconds <= now]
            cells = {key: counts.pop(key) for key in done}
        for (service, journey, start), (total, bad) in cells.items():
            row = table.direct_row(f"{service}/{journey}/{SLI_FOR_LATENCY}#{start}".encode())
            row.set_cell(COLUMN_FAMILY, b"row", json.dumps({"total": total, "bad": bad}).encode())
            row.commit()


def _row_window(key):
    """Row key -> (journey, window start in seconds), for both systems' key formats."""
    sli_id, when = key.decode().split("#")
    start = int(when) if when.isdigit() else calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"))
    return sli_id.split("/")[1], start


def measure(name, command, topic, table, args):
    """Starts the system, warms it up until its first row, publishes at args.rate/s for args.seconds and
    returns the latencies (ms) of the (journey, window) rows that came back, and how many did not."""
    from google.cloud import pubsub_v1
    from google.cloud.bigtable.row_filters import RowKeyRegexFilter

    publisher = pubsub_v1.PublisherClient()
    watched = RowKeyRegexFilter(f".*/{SLI_FOR_LATENCY}#.*".encode())
    system = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, polling = {}, threading.Event()

    def poll():
        now = time.time()
        for row in table.read_rows(filter_=watched):
            seen.setdefault(_row_window(row.row_key), now)

    def poll_while_publishing():
        while polling.is_set():
            poll()
            time.sleep(0.05)

    try:
        warm_deadline = time.time() + 300
        while not seen and time.time() < warm_deadline:  # runner start: requests until a first row shows
            for line, _ in generate_with_truth(20, seconds=1, seed=1, malformed_every=0, start=_utc(time.time())):
                publisher.publish(topic, line.encode())
            time.sleep(1)
            poll()
        if not seen:
            system.kill()
            raise RuntimeError(f"{name}: no row within 300 s\n{system.communicate()[1][-3000:]}")
        time.sleep(2 * args.window_seconds)
        poll()
        warm = set(seen)
        start = time.time() + 1
        tail = 60  # traffic goes on after the measured windows until their rows are in, at most this long
        n = int(args.rate * (args.seconds + tail))
        lines = generate_with_truth(n, seconds=args.seconds + tail, seed=5, malformed_every=0, start=_utc(start))
        last_publish = {}  # (journey, window start) -> publish time of its last request, measured windows only
        matcher = _matcher()
        polling.set()
        poller = threading.Thread(target=poll_while_publishing, daemon=True)
        poller.start()
        for line, truth in lines:
            time.sleep(max(0.0, truth["t"] - time.time()))
            sent = time.time()
            publisher.publish(topic, line.encode())
            journey = matcher.classify("profile-web", "", truth["method"], truth["path"])[1]
            if truth["t"] < start + args.seconds and journey != UNMATCHED_JOURNEY:  # unmatched: no availability row
                last_publish[(journey, int(truth["t"] // args.window_seconds) * args.window_seconds)] = sent
            elif truth["t"] >= start + args.seconds and set(last_publish) <= set(seen):
                break
        polling.clear()
        poller.join()
    finally:
        system.terminate()
        system.wait(timeout=30)
    latencies = [(seen[k] - t) * 1000 for k, t in last_publish.items() if k in seen and k not in warm]
    return np.array(latencies), len(set(last_publish) - set(seen))


def _utc(seconds):
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _matcher():
    from transforms.sli.config import JourneyMatcher, load_sli_config

    return JourneyMatcher(load_sli_config(sli.SAMPLE_CONFIG))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100, help="Requests per second. Default: 100.")
    parser.add_argument("--seconds", type=float, default=40, help="How long requests are sent. Default: 40.")
    parser.add_argument("--window_seconds", type=int, default=2, help="SLI window length. Default: 2.")
    parser.add_argument("--child", choices=("baseline",), help=argparse.SUPPRESS)
    parser.add_argument("--subscription", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        baseline_service(args.subscription, "sre", args.table, args.window_seconds, args.config)
        return

    from google.cloud import bigtable, pubsub_v1

    from tests.harness import PROJECT, LocalServices

    services = LocalServices().start()
    os.environ.update(services.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = yaml.safe_load(sli.SAMPLE_CONFIG.read_text())
            config.pop("slos", None)
            config.pop("alerting", None)
            config_path = os.path.join(tmp, "sli.yaml")
            with open(config_path, "w") as f:
                yaml.safe_dump(config, f)
            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
            instance = bigtable.Client(project=PROJECT, admin=True).instance("sre")
            print(
                f"{args.rate:g} requests/s for {args.seconds:g} s per system, {args.window_seconds} s windows; "
                f"latency from the publish of a window's last request to its row in Bigtable, in ms"
            )
            print(f"{'system':<46}{'rows':>10}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
            results = {}
            for name in ("pipeline", "baseline"):
                topic = publisher.create_topic(name=publisher.topic_path(PROJECT, f"{name}-logs")).name
                sub = subscriber.subscription_path(PROJECT, f"{name}-logs")
                subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
                dead = publisher.create_topic(name=publisher.topic_path(PROJECT, f"{name}-dead")).name
                table_id = f"{name}_sli"
                table = instance.table(table_id)
                table.create(column_families={COLUMN_FAMILY: None})
                common = ["--window_seconds", str(args.window_seconds)]
                command = (
                    [sys.executable, "-m", "pipelines.sli", "--runner", "BundleBasedDirectRunner", "--streaming"]
                    + ["--project", PROJECT, "--input_subscription", sub, "--sli_config", config_path]
                    + ["--bigtable_instance", "sre", "--bigtable_table", table_id, "--dead_letter_topic", dead]
                    if name == "pipeline"
                    else [sys.executable, "-m", "bench.sli_latency", "--child", "baseline", "--subscription", sub]
                    + ["--table", table_id, "--config", config_path]
                ) + common
                latencies, lost = measure(name, command, topic, table, args)
                results[name] = np.percentile(latencies, [50, 95, 99, 100])
                label = {
                    "pipeline": "pipeline (BundleBasedDirectRunner)",
                    "baseline": "baseline (plain subscriber, dict of counts)",
                }[name]
                print(
                    f"{label:<46}{f'{len(latencies)}/{len(latencies) + lost}':>10}"
                    + "".join(f"{v:>8.0f}" for v in results[name])
                )
            p50, _, p99, _ = results["pipeline"] / results["baseline"]
            print(
                f"pipeline / baseline latency: p50 {p50:.1f}x, p99 {p99:.1f}x; "
                f"pipeline p99 {results['pipeline'][2] / 1000:.2f} s (target: under 2 s)"
            )
    finally:
        services.stop()


if __name__ == "__main__":
    main()
