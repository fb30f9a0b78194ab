"""Benchmark: what bounding a Python UDF costs. The same UDF (udf/mask_pii.py) over the same JSONL file on
the local runner, two ways, each in its own process:

- baseline: the UDF called in the SDK worker itself (ApplyUdf as a plain ParDo, no time limit), the
  fastest honest way to run it and what the pipelines did before UDFs were bounded;
- bounded: the way every pipeline now runs a Python UDF (pipelines.launch.apply_udf), in a long-lived
  subprocess through Beam's with_exception_handling(use_subprocess=True, timeout=--udf_timeout_ms).

    python -m bench.udf [--records 20000]

Both sides must write the same records; the ratio and the cost per record are printed.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UDF = Path(__file__).resolve().parent.parent / "udf" / "mask_pii.py"


def make_records(path, records):
    rng = random.Random(0)
    with open(path, "w") as f:
        for n in range(records):
            f.write(
                json.dumps(
                    {
                        "time": "2026-11-22T00:00:00Z",
                        "method": "GET",
                        "uri": f"/profile/u{n}?email=user{n}@example.com&token={rng.randrange(10**9)}",
                        "remote_addr": f"10.0.{n % 256}.{rng.randrange(256)}",
                        "status": 200,
                    }
                )
                + "\n"
            )


def child(mode, input_path, output_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.launch import apply_udf
    from transforms.io.udf import ApplyUdf

    options = PipelineOptions(["--runner", "FnApiRunner", "--udf_path", str(UDF)])
    started = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        lines = p | beam.io.ReadFromText(str(input_path))
        if mode == "bounded":
            out, _ = apply_udf(options, lines, "bench")
        else:
            applied = lines | beam.ParDo(ApplyUdf(str(UDF), "process", "bench")).with_outputs(
                "dead_letters", main="records"
            )
            out = applied.records
        (
            out
            | beam.Map(lambda r: r if isinstance(r, str) else json.dumps(r))
            | beam.io.WriteToText(str(output_path), shard_name_template="")
        )
    print(f"RESULT {time.perf_counter() - started}")


def measure(mode, input_path, output_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.udf", "--child", mode, str(input_path), str(output_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1].split()[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_records(tmp / "in.jsonl", args.records)
        baseline_s = measure("in_process", tmp / "in.jsonl", tmp / "baseline.txt")
        bounded_s = measure("bounded", tmp / "in.jsonl", tmp / "bounded.txt")
        baseline, bounded = ((tmp / n).read_text().splitlines() for n in ("baseline.txt", "bounded.txt"))
        assert sorted(baseline) == sorted(bounded) and len(baseline) == args.records
        print(f"{args.records} records through {UDF.name}")
        print(f"{'':<44}{'records/s':>10}{'seconds':>10}")
        print(f"{'UDF in the worker, unbounded (baseline)':<44}{args.records / baseline_s:>10.0f}{baseline_s:>10.1f}")
        print(f"{'UDF in a subprocess, --udf_timeout_ms':<44}{args.records / bounded_s:>10.0f}{bounded_s:>10.1f}")
        print(
            f"bounded / baseline throughput: {baseline_s / bounded_s:.2f}x; "
            f"cost of the bound: {(bounded_s - baseline_s) / args.records * 1e6:.0f} us per record"
        )


if __name__ == "__main__":
    main()
