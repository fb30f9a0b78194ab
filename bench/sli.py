"""Benchmarks: (1) the SLI batch path on the local runner against DuckDB SQL doing the same per-minute
work; (2) the cost of evaluating 1,000 SLOs for one minute, against recomputing their windows from the
minute buckets (what a sliding-window design pays).

    python -m bench.sli [--events 1000000] [--workers 1] [--repeats 1] [--slos 1000] [--skip_pipeline]

Both read the same generated gzip JSONL file (three log formats mixed, as in the bundled sample), parse
every format, match journeys, and compute per journey and minute: count, 5xx count, count over 100 ms
and 500 ms, and p50/p90/p95/p99 latency. Each runs in its own process; wall time and peak RSS are that
process's (with --repeats, those of each engine's fastest run). The pipeline runs the bundled config without
its SLOs (DuckDB computes no SLO status), and its rows are checked against DuckDB's per journey and minute
(after every run) before the ratios are printed. DuckDB is the
ceiling (vectorized C++ over one file); the ratio says what Beam's portability costs on one machine,
before Dataflow spreads the work over many.
"""

import argparse
import datetime
import gzip
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipelines.samples.request_logs import generate
from transforms.io.files import read_jsonl

REQUESTS_SQL = r"""
WITH raw AS (SELECT json AS j FROM read_ndjson_objects('__FILE__', compression = 'gzip', ignore_errors = true)),
req AS (
  SELECT
    COALESCE(TRY_CAST(j->>'timestamp' AS TIMESTAMPTZ), TRY_CAST(j->>'@timestamp' AS TIMESTAMPTZ),
             make_timestamp(TRY_CAST(j->>'timeMillis' AS BIGINT) * 1000), TRY_CAST(j->>'time' AS TIMESTAMPTZ)) AS ts,
    upper(COALESCE(j->'httpRequest'->>'requestMethod', j->'contextMap'->>'http.method', j->'http'->>'method', j->>'method')) AS method,
    COALESCE(regexp_extract(j->'httpRequest'->>'requestUrl', '^(?:https?://[^/]+)?([^?]*)', 1),
             j->'contextMap'->>'http.path', j->'http'->>'path', j->>'uri') AS path,
    TRY_CAST(COALESCE(j->'httpRequest'->>'status', j->'contextMap'->>'http.status', j->'http'->>'status', j->>'status') AS INT) AS status,
    COALESCE(TRY_CAST(rtrim(j->'httpRequest'->>'latency', 's') AS DOUBLE) * 1000,
             TRY_CAST(j->'contextMap'->>'http.latency_ms' AS DOUBLE), TRY_CAST(j->'http'->>'latency_ms' AS DOUBLE),
             TRY_CAST(j->>'request_time' AS DOUBLE) * 1000) AS latency_ms
  FROM raw
),
matched AS (
  SELECT *, CASE
    WHEN method = 'GET' AND regexp_full_match(path, '/profile/[^/]+') THEN 'view-profile'
    WHEN method = 'GET' AND regexp_full_match(path, '/profile/[^/]+/avatar') THEN 'view-avatar'
    WHEN method IN ('POST', 'PUT') AND regexp_full_match(path, '/api/v1/profile/[^/]+') THEN 'update-profile'
    WHEN method = 'POST' AND path = '/login' THEN 'login'
    ELSE '_unmatched' END AS journey
  FROM req WHERE ts IS NOT NULL AND status BETWEEN 100 AND 599 AND latency_ms >= 0
)
"""
DUCKDB_SQL = (
    REQUESTS_SQL
    + r"""
SELECT journey, time_bucket(INTERVAL 1 MINUTE, ts) AS minute, count(*) AS total,
       count(*) FILTER (status >= 500) AS bad_5xx,
       count(*) FILTER (latency_ms > 100) AS over_100ms, count(*) FILTER (latency_ms > 500) AS over_500ms,
       quantile_cont(latency_ms, [0.5, 0.9, 0.95, 0.99]) AS percentiles
FROM matched GROUP BY ALL
"""
)
# Not timed: the same requests per journey and minute with their sorted latencies, to check Beam's rows.
CHECK_SQL = (
    REQUESTS_SQL
    + r"""
SELECT journey, epoch(time_bucket(INTERVAL 1 MINUTE, ts))::BIGINT AS minute, count(*) AS total,
       count(*) FILTER (status >= 500) AS bad_5xx,
       count(*) FILTER (latency_ms > 100) AS over_100ms, count(*) FILTER (latency_ms > 500) AS over_500ms,
       list(latency_ms ORDER BY latency_ms) AS latencies
FROM matched GROUP BY ALL
"""
)


def run_duckdb(path):
    import duckdb

    rows = duckdb.sql(DUCKDB_SQL.replace("__FILE__", path.replace("'", "''"))).fetchall()
    return sum(r[2] for r in rows), len(rows)


def run_beam(path, workers, out):
    """The SLI pipeline on the bundled config without its SLOs: the per-minute rows DuckDB computes too."""
    import yaml

    from pipelines import sli

    config = yaml.safe_load(sli.SAMPLE_CONFIG.read_text())
    config.pop("slos", None)
    config.pop("alerting", None)
    config_path = os.path.join(out, "sli_config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    argv = ["--input_files", path, "--output_dir", out, "--sli_config", config_path]
    if workers > 1:
        argv += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    sli.run(argv)


def measure(engine, path, workers, out=None):
    """Runs one engine in a child process; returns (seconds, CPU seconds, peak RSS in MiB). CPU time (user +
    system, the children's SDK workers included) is the steadier measure on a shared machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sli", "--engine", engine, "--file", path, "--workers", str(workers)]
        + (["--out", out] if out else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{engine} run failed (status {status}); rerun with --engine {engine} --file {path}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def check_rows(path, out):
    """Beam's SLI rows against DuckDB's per journey and minute: totals, 5xx and over-threshold counts exact,
    percentiles within DDSketch's relative accuracy of the latencies at their rank. Returns the rows checked."""
    import duckdb

    from transforms.sli.stats import LATENCY_RELATIVE_ACCURACY, PERCENTILES

    expected = {}
    for journey, minute, total, bad_5xx, over_100, over_500, latencies in duckdb.sql(
        CHECK_SQL.replace("__FILE__", path.replace("'", "''"))
    ).fetchall():
        expected[(journey, minute)] = (
            total,
            {"availability": bad_5xx, "latency_100ms": over_100, "latency_500ms": over_500},
            np.array(latencies),
        )
    rows = {}
    for row in read_jsonl(os.path.join(out, "sli_rows*.jsonl")):
        minute = int(datetime.datetime.fromisoformat(row["window_start"]).timestamp())
        rows.setdefault((row["journey"], minute), []).append(row)
    problems = sorted(set(expected) ^ set(rows))[:5]
    for key, (total, bad, latencies) in expected.items():
        for row in rows.get(key, ()):
            wrong = [f"total {row['total']} != {total}"] if row["total"] != total else []
            if row["sli_name"] in bad and row["bad"] != bad[row["sli_name"]]:
                wrong.append(f"{row['sli_name']} bad {row['bad']} != {bad[row['sli_name']]}")
            for p in PERCENTILES:
                rank = p / 100 * (len(latencies) - 1)
                low = latencies[math.floor(rank)] * (1 - LATENCY_RELATIVE_ACCURACY)
                high = latencies[math.ceil(rank)] * (1 + LATENCY_RELATIVE_ACCURACY)
                if not low <= row[f"latency_p{p}_ms"] <= high:
                    wrong.append(f"p{p} {row[f'latency_p{p}_ms']} not in [{low}, {high}]")
            if wrong:
                problems.append((key, row["sli_name"], wrong))
    if problems:
        raise SystemExit(f"Beam's rows differ from DuckDB's: {problems[:5]}")
    return sum(len(r) for r in rows.values())


def bench_slos(n_slos, minutes=30):
    """Seconds per evaluated minute for n_slos SLOs (28-day window, default alert rules), each fed one
    SLI bucket a minute after 3 days of history, against summing each window from the buckets."""
    from transforms.sli.config import Alerting, Slo
    from transforms.slo.evaluator import SloEvaluator

    alerting = Alerting()
    slo = Slo(name="s", sli="a/b/availability", target=0.999, window_days=28)
    start = 29_000_000
    history = 3 * 24 * 60
    evaluators = []
    for _ in range(n_slos):
        ev = SloEvaluator(slo, alerting)
        for m in range(start, start + history):
            ev.add(m, 0, 995, 1000)
        ev.advance_to(start + history - 1)
        evaluators.append(ev)
    t = time.perf_counter()
    for m in range(start + history, start + history + minutes):
        for ev in evaluators:
            ev.add(m, 0, 995, 1000)
            ev.advance_to(m)
    ours = (time.perf_counter() - t) / minutes

    # baseline: every minute, every window summed again from the minute buckets
    buckets = {m: (995, 1000) for m in range(start, start + history + minutes)}
    windows = sorted({w for r in alerting.rules for w in (r.long_window_minutes, r.short_window_minutes)})
    t = time.perf_counter()
    sample = max(1, n_slos // 20)  # time a twentieth of the SLOs, scale up
    for m in range(start + history, start + history + minutes):
        for _ in range(sample):
            for w in windows + [history]:  # compliance over the history held (3 days; 28 in production)
                good = total = 0
                for k in range(m - w + 1, m + 1):
                    g, n = buckets[k]
                    good += g
                    total += n
    naive = (time.perf_counter() - t) / minutes * n_slos / sample
    return ours, naive


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="Log lines to generate. Default: 1000000.")
    parser.add_argument("--workers", type=int, default=1, help="Beam SDK worker processes. Default: 1.")
    parser.add_argument("--file", type=str, default=None, help="Use this JSONL(.gz) file instead of generating one.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Runs of each engine, alternating; each engine's fastest counts (the machine's speed drifts on a "
        "shared host). Default: 1.",
    )
    parser.add_argument("--slos", type=int, default=1000, help="SLOs for the SLO evaluation benchmark. Default: 1000.")
    parser.add_argument("--skip_pipeline", action="store_true", help="Only run the SLO evaluation benchmark.")
    parser.add_argument("--engine", choices=["beam", "duckdb"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine == "beam":
        return run_beam(args.file, args.workers, args.out)
    if args.engine == "duckdb":
        return print(run_duckdb(args.file))

    if not args.skip_pipeline:  # first: a child's peak RSS starts from this process's size when it forks
        bench_pipeline(args)
    ours, naive = bench_slos(args.slos)
    print(
        f"SLO evaluation, {args.slos:,} SLOs: {ours * 1000:.1f} ms per minute (running sums) vs "
        f"{naive * 1000:.0f} ms (windows summed again, baseline): {naive / ours:.0f}x faster"
    )


def bench_pipeline(args):
    path = args.file
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="bench-sli-"), "logs.jsonl.gz")
        t = time.perf_counter()
        with gzip.open(path, "wt", compresslevel=1) as f:
            for line in generate(args.events, malformed_every=0):
                f.write(line + "\n")
        print(f"generated {args.events:,} lines in {time.perf_counter() - t:.0f}s: {path}")
    lines = sum(1 for _ in gzip.open(path, "rt")) if path.endswith(".gz") else sum(1 for _ in open(path))
    duck_runs, beam_runs = [], []
    for _ in range(args.repeats):
        duck_runs.append(measure("duckdb", path, 1))
        out = tempfile.mkdtemp(prefix="bench-sli-out-")
        beam_runs.append(measure("beam", path, args.workers, out))
        checked = check_rows(path, out)
    (duck_s, duck_cpu, duck_mb), (beam_s, beam_cpu, beam_mb) = min(duck_runs), min(beam_runs)
    print(f"Beam's {checked:,} SLI rows match DuckDB's per journey and minute (counts exact, percentiles within 1%)")
    print(f"{'engine':<28} {'seconds':>8} {'events/s':>10} {'CPU s':>7} {'peak RSS MiB':>13}")
    for label, seconds, cpu, mb in (
        ("DuckDB SQL (baseline)", duck_s, duck_cpu, duck_mb),
        (f"Beam FnApiRunner x{args.workers}", beam_s, beam_cpu, beam_mb),
    ):
        print(f"{label:<28} {seconds:>8.1f} {lines / seconds:>10,.0f} {cpu:>7.1f} {mb:>13,.0f}")
    print(
        f"ratio Beam/DuckDB: throughput {duck_s / beam_s:.3f}x ({duck_cpu / beam_cpu:.3f}x per CPU second), "
        f"peak memory {beam_mb / duck_mb:.2f}x"
    )


if __name__ == "__main__":
    main()
