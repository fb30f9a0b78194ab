"""Benchmark: what health rows cost a pipeline (transforms/slo/health.py PipelineHealth: a health event per
output element, per-minute JourneyWindowStats with the lag's DDSketch, two SLI rows per minute), against

(a) plain_count: the plainest per-minute count of the same elements (key by processing minute, the same
    fixed windows, CombinePerKey(sum)): what counting outputs per minute costs at least on this runner.

    python -m bench.pipeline_health [--elements 200000]

Elements are generated inside the pipeline (one output row each, event times over an hour, the worst case:
pipelines that emit lists are counted a list at a time) on FnApiRunner. Each side runs in its own process;
wall time and peak RSS are that process's.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

SHARDS = 100


def _elements(shard, per_shard):
    from apache_beam.transforms.window import TimestampedValue

    base = 1795341600 + shard * 36  # an hour of event times over the shards
    for i in range(per_shard):
        yield TimestampedValue({"entity": f"e{i % 1000}", "value": i}, base + i * 36 / per_shard)


def _minute_key(element):
    return int(time.time() // 60), 1


def run_side(side, elements):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import window

    from transforms.slo.health import PipelineHealth

    per_shard = elements // SHARDS
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        outputs = p | beam.Create(range(SHARDS)) | "Generate" >> beam.FlatMap(_elements, per_shard)
        if side == "plain_count":
            (
                outputs
                | beam.Map(_minute_key)
                | beam.WindowInto(window.FixedWindows(60))
                | beam.CombinePerKey(sum)
                | beam.Map(lambda kv: kv)
            )
        else:
            dead_letters = p | "NoDeadLetters" >> beam.Create([])
            (outputs, dead_letters) | PipelineHealth("bench", freshness_seconds=120)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "seconds": seconds, "rss_mb": rss_mb}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=200_000)
    parser.add_argument("--side", choices=("plain_count", "health"))
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.elements)
        return
    results = {}
    for side in ("plain_count", "health"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.pipeline_health", "--side", side, "--elements", str(args.elements)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    base, health = results["plain_count"], results["health"]
    print(f"elements: {args.elements}")
    for r in (base, health):
        rate = args.elements / r["seconds"]
        print(f"{r['side']:<12} {r['seconds']:7.2f} s  {rate:9.0f} elements/s  peak RSS {r['rss_mb']:.0f} MB")
    ratio, memory = health["seconds"] / base["seconds"], health["rss_mb"] / base["rss_mb"]
    print(f"health / plain_count: {ratio:.2f}x time, {memory:.2f}x memory")


if __name__ == "__main__":
    main()
