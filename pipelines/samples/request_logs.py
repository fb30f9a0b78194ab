"""Generates realistic request logs for the profile web service in all three supported formats.

The bundled sample (`request_logs.jsonl.gz`, one day, 2026-11-22 UTC) was made with `python -m
pipelines.samples.request_logs`; the benchmark uses the same generator for larger files. Traffic has
a 5xx incident on view-profile 14:00-14:20 and a 5x latency regression on view-profile 18:00-19:00,
some requests no journey matches, and a few malformed records of every kind.
"""

import argparse
import datetime
import gzip
import json
import random

DAY_START = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)
INCIDENT = (14 * 3600, 14 * 3600 + 20 * 60)  # seconds after DAY_START
REGRESSION = (18 * 3600, 19 * 3600)

# (method, path template, share of traffic, median latency ms)
_JOURNEYS = [
    ("GET", "/profile/{}", 0.55, 60.0),
    ("GET", "/profile/{}/avatar", 0.25, 25.0),
    ("PUT", "/api/v1/profile/{}", 0.08, 120.0),
    ("POST", "/login", 0.10, 180.0),
    ("GET", "/static/app-{}.js", 0.02, 5.0),  # matches no journey
]
MALFORMED = [
    "{not json",
    "[1, 2, 3]",
    '{"timestamp": "2026-11-22T09:00:00Z", "httpRequest": {"requestMethod": "GET", "status": 200, "latency": "0.1s"}}',
    '{"timestamp": "yesterday", "httpRequest": {"requestMethod": "GET", "requestUrl": "/profile/a", '
    '"status": 200, "latency": "0.1s"}}',
    '{"time": "2026-11-22T09:00:00Z", "method": "GET", "uri": "/profile/a", "status": 999, "request_time": 0.1}',
    '{"time": "2026-11-22T09:00:00Z", "method": "GET", "uri": "/profile/a", "status": 200, "request_time": "fast"}',
    '{"@timestamp": "2026-11-22T09:00:00Z", "level": "INFO", "logger_name": "web", "message": "no request fields"}',
]


def _request(rng, t):
    r = rng.random()
    for method, template, share, median in _JOURNEYS:  # noqa: B007 - the journey is where the loop stops
        if r < share:
            break
        r -= share
    path = template.format(rng.choice(["alice", "bob", "carol", "dave", "erin"]) + str(rng.randrange(100)))
    latency = rng.lognormvariate(0, 0.6) * median
    if template == "/profile/{}" and REGRESSION[0] <= t < REGRESSION[1]:
        latency *= 5
    status = 200 if method == "GET" else 204
    if template == "/profile/{}" and INCIDENT[0] <= t < INCIDENT[1] and rng.random() < 0.3:
        status = 503
    elif rng.random() < 0.0002:
        status = rng.choice([500, 502])
    elif rng.random() < 0.01:
        status = rng.choice([404, 429])
    return method, path, status, latency


def _iso(ts, digits=6):
    dt = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text + "123"[: max(0, digits - 6)] + "Z"  # Cloud Logging writes nanoseconds


def format_record(rng, ts, method, path, status, latency_ms):
    kind = rng.random()
    if kind < 0.5:  # Cloud Logging LogEntry from a Cloud Run service
        return {
            "insertId": f"{rng.getrandbits(48):012x}",
            "timestamp": _iso(ts, 9),
            "receiveTimestamp": _iso(ts + 0.05, 9),
            "severity": "ERROR" if status >= 500 else "INFO",
            "logName": "projects/demo/logs/run.googleapis.com%2Frequests",
            "resource": {
                "type": "cloud_run_revision",
                "labels": {"service_name": "profile-web", "location": "us-central1"},
            },
            "httpRequest": {
                "requestMethod": method,
                "requestUrl": f"https://profile.example.com{path}?v=1",
                "status": status,
                "latency": f"{latency_ms / 1000:.6f}s",
                "userAgent": "Mozilla/5.0",
                "protocol": "HTTP/1.1",
            },
        }
    if kind < 0.65:  # log4j2 JsonLayout: timeMillis, loggerName, contextMap
        return {
            "timeMillis": int(ts * 1000),
            "thread": "http-nio-8080-exec-3",
            "level": "INFO",
            "loggerName": "com.example.web.AccessLog",
            "message": f"{method} {path} {status}",
            "contextMap": {
                "http.method": method,
                "http.path": path,
                "http.status": str(status),
                "http.latency_ms": round(latency_ms, 3),
                "service": "profile-web",
            },
        }
    if kind < 0.8:  # logstash-logback-encoder: @timestamp, logger_name, MDC at the top level
        return {
            "@timestamp": _iso(ts)[:-4] + "+00:00",
            "@version": "1",
            "level": "INFO",
            "logger_name": "com.example.web.AccessLog",
            "thread_name": "main",
            "message": f"{method} {path} {status}",
            "service": "profile-web",
            "http": {"method": method, "path": path, "status": status, "latency_ms": round(latency_ms, 3)},
        }
    return {
        "time": _iso(ts)[:-4] + "+00:00",
        "service": "profile-web",
        "remote_addr": "10.0.0.7",
        "method": method,
        "uri": path,
        "status": status,
        "request_time": round(latency_ms / 1000, 6),
    }


def generate_with_truth(n_events, seconds=86400, seed=7, malformed_every=4000, start=None):
    """Yields (JSON line, truth) pairs: n_events requests spread over `seconds` from `start` (default
    DAY_START), truth being the request as generated ({"t", "method", "path", "status", "latency_ms"});
    after every `malformed_every` requests a malformed line (cycling through the kinds) with truth None."""
    rng = random.Random(seed)
    start = (start or DAY_START).timestamp()
    for i in range(n_events):
        t = seconds * i / n_events + rng.random() * seconds / n_events
        method, path, status, latency = _request(rng, t)
        latency = round(latency, 3)
        line = json.dumps(format_record(rng, start + t, method, path, status, latency), separators=(",", ":"))
        yield line, {"t": start + t, "method": method, "path": path, "status": status, "latency_ms": latency}
        if malformed_every and i % malformed_every == malformed_every - 1:
            yield MALFORMED[(i // malformed_every) % len(MALFORMED)], None


def generate(n_events, **kwargs):
    """Just the lines of `generate_with_truth`."""
    for line, _ in generate_with_truth(n_events, **kwargs):
        yield line


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=28800, help="Number of requests. Default: 28800.")
    parser.add_argument(
        "--output", type=str, default="pipelines/samples/sli/request_logs.jsonl.gz", help="Output file; .gz compresses."
    )
    args = parser.parse_args()
    opener = gzip.open if args.output.endswith(".gz") else open
    with opener(args.output, "wt") as f:
        for line in generate(args.events):
            f.write(line + "\n")


if __name__ == "__main__":
    main()
