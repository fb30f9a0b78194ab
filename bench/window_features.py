"""Benchmark: the window-features backfill on the local runner against pandas computing the same features
over the same file in one process (the ceiling): per card, over 10 minutes every minute, an hour and a
day, the count, sum, mean, min, max and last amount and the distinct merchants.

    python -m bench.window_features [--events 200000] [--cards 2000]

Events are generated like the bundled sample (a day of card transactions, JSONL). Each side runs in its
own process; its wall time, CPU time (process_time: on a shared machine the steadier of the two) and peak
RSS are those of the work (pandas: the features in DataFrames; the pipeline: the whole run, feature rows
written and its report), taken before the results are read back for the comparison. Both sides' feature
values are compared before the ratio is printed.
"""

import argparse
import datetime
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from pipelines.window_features import SAMPLE_SPEC

WINDOWS = (("10m", 600, 60), ("1h", 3600, 3600), ("1d", 86400, 86400))  # as in the sample spec
DAY = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC).timestamp()


def make_events(path, events, cards):
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(events):
            at = datetime.datetime.fromtimestamp(DAY + rng.uniform(0, 86400), datetime.UTC)
            f.write(
                json.dumps(
                    {
                        "card_id": f"c-{rng.randrange(cards):05d}",
                        "event_time": at.isoformat(),
                        "amount": round(rng.lognormvariate(3, 1), 2),
                        "merchant": f"m-{rng.randrange(500):03d}",
                    }
                )
                + "\n"
            )


def with_pandas(path):
    """{window name: DataFrame of the features per (card, window end)} computed with pandas: events repeated
    once per window end that holds them, then one groupby per window."""
    import numpy as np
    import pandas as pd

    events = pd.read_json(path, lines=True, convert_dates=False, precise_float=True)
    events["t"] = pd.to_datetime(events["event_time"], format="ISO8601").astype("int64") / 1e9
    frames = {}
    for name, size, step in WINDOWS:
        first_end = (np.floor(events["t"] / step) + 1) * step
        copies = [events.assign(end=first_end + k * step) for k in range(size // step)]
        exploded = pd.concat(copies, ignore_index=True)
        exploded = exploded[exploded["end"] - size <= exploded["t"]].sort_values("t")
        frames[name] = exploded.groupby(["card_id", "end"]).agg(
            count=("amount", "size"),
            sum=("amount", "sum"),
            mean=("amount", "mean"),
            min=("amount", "min"),
            max=("amount", "max"),
            last=("amount", "last"),
            merchants=("merchant", "nunique"),
        )
    return frames


def pandas_results(frames):
    """{(card, window, end): (count, sum, max)} of with_pandas' frames."""
    return {
        (card, name, float(end)): (int(count), float(total), float(high))
        for name, frame in frames.items()
        for (card, end), count, total, high in zip(frame.index, frame["count"], frame["sum"], frame["max"], strict=True)
    }


def with_pipeline(path, out):
    from pipelines import window_features

    window_features.run(
        [
            "--window_spec",
            SAMPLE_SPEC,
            "--input_files",
            str(path),
            "--output_dir",
            str(out),
            "--runner",
            "FnApiRunner",
            "--progress",
            "off",
        ]
    )
    return out


def pipeline_results(out):
    """{(card, window, end): (count, sum, max)} of the pipeline's feature rows, read line by line."""
    results = {}
    for part in Path(out).glob("feature_rows*.jsonl"):
        with open(part, "rb") as f:
            for line in f:
                row = orjson.loads(line)
                values = {f["name"]: f["value"] for f in row["features"]}
                end = datetime.datetime.fromisoformat(row["time_index"]).timestamp()
                w = row["window"]
                results[(row["entity"], w, end)] = (
                    values[f"amount_count_{w}"],
                    values[f"amount_sum_{w}"],
                    values[f"amount_max_{w}"],
                )
    return results


def _child(kind, path, out):
    """Times the work alone and takes its peak RSS before the results are read back for the comparison."""
    start, cpu_start = time.perf_counter(), time.process_time()
    done = with_pandas(path) if kind == "pandas" else with_pipeline(path, out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = pandas_results(done) if kind == "pandas" else pipeline_results(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps(sorted([list(k), v] for k, v in results.items())))
    print(f"RESULT {len(results)} {seconds:.3f} {cpu:.3f} {peak:.0f}")


def measure(kind, path, out):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.window_features", "--child", kind, "--path", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    rows, seconds, cpu, peak = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1].split()[1:]
    return int(rows), float(seconds), float(cpu), int(peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="Events to generate. Default: 200000.")
    parser.add_argument("--cards", type=int, default=2000, help="Distinct cards. Default: 2000.")
    parser.add_argument("--child", choices=("pandas", "pipeline"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.path, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "events.jsonl"
        make_events(path, args.events, args.cards)
        print(f"{args.events} events of {args.cards} cards; windows 10m every 1m, 1h, 1d; 7 features each")
        print(
            f"{'run':<36}{'events/s':>10}{'seconds':>9}{'CPU s':>8}{'events/CPU s':>14}{'feature rows':>14}"
            f"{'peak RSS MiB':>14}"
        )
        runs = {}
        for kind, label in (("pandas", "pandas, one process (ceiling)"), ("pipeline", "pipeline, FnApiRunner")):
            rows, seconds, cpu, peak = runs[kind] = measure(kind, path, root / kind)
            print(
                f"{label:<36}{args.events / seconds:>10.0f}{seconds:>9.2f}{cpu:>8.2f}{args.events / cpu:>14.0f}"
                f"{rows:>14}{peak:>14}"
            )
        expected = dict((tuple(k), v) for k, v in json.loads((root / "pandas" / "summary.json").read_text()))
        got = dict((tuple(k), v) for k, v in json.loads((root / "pipeline" / "summary.json").read_text()))
        assert got.keys() == expected.keys(), "the pipeline and pandas found different windows"
        worst = max(abs(got[k][1] - expected[k][1]) / max(1.0, abs(expected[k][1])) for k in expected)
        bad = [(k, got[k], expected[k]) for k in expected if got[k][0] != expected[k][0] or got[k][2] != expected[k][2]]
        assert not bad and worst < 1e-9, (worst, bad[:3])
        (_, p_seconds, p_cpu, p_peak), (_, seconds, cpu, peak) = runs["pandas"], runs["pipeline"]
        print(
            f"pipeline vs pandas: {p_seconds / seconds:.3f}x the events/s ({p_cpu / cpu:.3f}x per CPU second), "
            f"{peak / p_peak:.2f}x the peak RSS; same counts, sums and maxima in all {len(expected)} rows"
        )


if __name__ == "__main__":
    main()
