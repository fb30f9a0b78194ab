"""Expected SLI rows worked out independently of the pipeline: from the generator's ground truth
(requests as generated, before being formatted as logs) with journeys matched by hand-written rules."""

import datetime
import math

from pipelines.samples.request_logs import generate_with_truth

AVAIL = ("availability", lambda r: r["status"] >= 500)
ERRORS = ("error_rate", lambda r: r["status"] >= 500 or r["status"] == 429)
THROUGHPUT = ("throughput", lambda r: False)


def _latency(ms):
    return (f"latency_{ms}ms", lambda r: r["latency_ms"] > ms)


DEFAULT = (AVAIL, _latency(100), _latency(500), THROUGHPUT, ERRORS)


def profile_journey(request):
    """The profile sample's journeys, matched without the pipeline's matcher."""
    method, parts = request["method"], request["path"].split("/")
    if method == "GET" and len(parts) == 3 and parts[1] == "profile" and parts[2]:
        return "view-profile", DEFAULT
    if method == "GET" and len(parts) == 4 and parts[1] == "profile" and parts[3] == "avatar":
        return "view-avatar", (AVAIL, _latency(200))
    if method in ("PUT", "POST") and request["path"].startswith("/api/v1/profile/") and len(parts) == 5:
        return "update-profile", DEFAULT
    if method == "POST" and request["path"] == "/login":
        return "login", DEFAULT
    return "_unmatched", ()


def window_start_iso(t, window_seconds=60):
    start = math.floor(t / window_seconds) * window_seconds
    return datetime.datetime.fromtimestamp(start, datetime.UTC).isoformat()


def expected_rows(truths, window_seconds=60):
    """{(sli_id, window_start): {"total", "good", "bad", "latencies"}} for the profile sample."""
    out = {}
    for r in truths:
        journey, slis = profile_journey(r)
        start = window_start_iso(r["t"], window_seconds)
        if not slis:
            slis = (("", lambda r: False),)  # unmatched: counted, no good/bad
        for name, is_bad in slis:
            sli_id = f"profile-web/{journey}/{name}" if name else f"profile-web/{journey}"
            cell = out.setdefault((sli_id, start), {"total": 0, "bad": 0, "latencies": []})
            cell["total"] += 1
            cell["bad"] += bool(is_bad(r))
            cell["latencies"].append(r["latency_ms"])
    for cell in out.values():
        cell["good"] = cell["total"] - cell["bad"]
    return out


def sample_truth(**kwargs):
    lines, truths = [], []
    for line, truth in generate_with_truth(28800, **kwargs):
        lines.append(line)
        if truth is not None:
            truths.append(truth)
    return lines, truths
