"""Benchmark: the batch scoring pipeline on the local runner against the same model called in plain
TensorFlow on the same rows in large batches (the ceiling), for two models:

- cnn: a small CNN whose serving signature takes JPEG bytes, decodes them and resizes to 64x64 in the
  graph (as a serving input function does): a realistic per-row cost;
- tabular: a tiny dense model over 8 named float features: almost no per-row cost, so the ratio shows
  the pipeline's per-element overhead.

    python -m bench.score [--rows 20000] [--batch_sizes 32,256] [--repeats 3] [--models cnn,tabular]

The pipeline reads JSONL requests, parses and checks each against the signature, batches, scores through
RunInference, and writes prediction rows to JSONL; their latency_ms (read to prediction) gives the
latency percentiles (publish-to-prediction latency in streaming is measured by tests/test_score_e2e.py).
The ceiling calls the model on the rows already decoded in memory: model time only. Each run is its own
process, and each measurement is the fastest of --repeats runs.
"""

import argparse
import base64
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = [f"f{i}" for i in range(8)]
STARTUP_ROWS = 50


def make_cnn(root):
    import tensorflow as tf

    from pipelines.samples.score_model import ImageBytesServing

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((64, 64, 3)),
            tf.keras.layers.Conv2D(32, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(64, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(128, 3, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    module = ImageBytesServing(model)
    path = root / "cnn" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def make_tabular(root):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = [tf.keras.Input((), name=name) for name in FEATURES]
    stacked = tf.keras.layers.Concatenate()([tf.keras.layers.Reshape((1,))(i) for i in inputs])
    hidden = tf.keras.layers.Dense(16, activation="relu")(stacked)
    path = root / "tabular.keras"
    tf.keras.Model(inputs, tf.keras.layers.Dense(1, activation="sigmoid")(hidden)).save(path)
    return path


MODELS = {"cnn": make_cnn, "tabular": make_tabular}


def make_requests(kind, rows, path):
    from pipelines.samples.images import LABELS
    from pipelines.samples.score_model import encoded_image

    rng = random.Random(1)
    with open(path, "w") as f:
        for n in range(rows):
            if kind == "cnn":
                image = encoded_image(LABELS[n % 3], rng, "JPEG")
                record = {"id": f"r{n}", "image_bytes": {"b64": base64.b64encode(image).decode()}}
            else:
                record = {"id": f"r{n}", "features": {name: rng.random() for name in FEATURES}}
            f.write(json.dumps(record) + "\n")


def ceiling(model_path, requests, batch_size):
    """Rows decoded in memory first (not timed), then the model alone, batch_size rows per call."""
    from transforms.scoring.model import LoadedModel, prepare_example, stack_examples

    model = LoadedModel(str(model_path))
    examples = [prepare_example(json.loads(line), model.inputs)[2] for line in open(requests)]
    batches = [stack_examples(examples[i : i + batch_size], model.inputs) for i in range(0, len(examples), batch_size)]
    model(batches[0])  # warm-up: tracing and first allocations
    model(batches[-1])
    start = time.perf_counter()
    for batch in batches:
        model(batch)
    return len(examples), time.perf_counter() - start


def pipeline(model_path, requests, out, batch_size):
    from pipelines import score
    from pipelines.launch import metric_counts

    shutil.rmtree(out, ignore_errors=True)  # a repeat's predictions replace the last run's
    start = time.perf_counter()
    result = score.run(
        [
            "--model_path",
            str(model_path),
            "--input_files",
            str(requests),
            "--output_dir",
            str(out),
            "--runner",
            "FnApiRunner",
            "--min_batch_size",
            str(batch_size),
            "--max_batch_size",
            str(batch_size),
        ]
    )
    return metric_counts(result, "score").get("scored", 0), time.perf_counter() - start


def latency_percentiles(out):
    """p50 and p99 of the rows' latency_ms: from reading the request to its prediction."""
    latencies = [
        json.loads(line)["latency_ms"]
        for path in Path(out).glob("predictions-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    return tuple(np.percentile(latencies, [50, 99]))


def _child(args):
    if args.child == "ceiling":
        done, seconds = ceiling(args.model, args.requests, args.batch_size)
    else:
        done, seconds = pipeline(args.model, args.requests, args.out, args.batch_size)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {done} {seconds:.4f} {peak_mb:.0f}")


def measure(repeats, *flags):
    """(rows done, seconds, peak RSS in MB): the fastest of `repeats` runs, each in its own process, so
    that another tenant's load on a shared machine inflates neither side of a ratio."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-m", "bench.score", *flags], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
        done, seconds, peak_mb = result.split()[1:]
        runs.append((int(done), float(seconds), int(peak_mb)))
    return min(runs, key=lambda run: run[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows",
        type=int,
        default=20000,
        help="Requests per model: enough that the runner's start (about half a second) is a small "
        "part of the run, as in a real batch job. Default: 20000.",
    )
    parser.add_argument(
        "--batch_sizes",
        type=str,
        default="32,256",
        help="Pipeline batch sizes to compare (min = max). Default: 32,256.",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs of each measurement; the fastest counts. Default: 3."
    )
    parser.add_argument(
        "--models", type=str, default="cnn,tabular", help="Models to run, of cnn and tabular. Default: both."
    )
    parser.add_argument("--child", choices=("ceiling", "pipeline"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    kinds = args.models.split(",")
    if set(kinds) - set(MODELS):
        parser.error(f"--models: unknown {sorted(set(kinds) - set(MODELS))}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(
            f"{args.rows} requests per model. Ceiling: the faster of plain TF at each batch size. Pipeline "
            f"seconds include the start-up (the runner's start and the model load: the seconds of a "
            f"{STARTUP_ROWS}-row run); 'steady' leaves it out"
        )
        print(
            f"{'model':<9}{'run':<26}{'rows/s':>8}{'seconds':>9}{'start-up':>10}{'vs ceiling':>12}{'steady':>9}"
            f"{'overhead/row':>14}{'latency p50/p99 ms':>20}{'peak RSS':>10}"
        )
        for kind in kinds:
            make = MODELS[kind]
            model_path, requests, small = make(root), root / f"{kind}.jsonl", root / f"{kind}-small.jsonl"
            make_requests(kind, args.rows, requests)
            make_requests(kind, STARTUP_ROWS, small)
            ceilings = {}
            for batch_size in batch_sizes:
                done, ceilings[batch_size], peak_mb = measure(
                    args.repeats,
                    "--child",
                    "ceiling",
                    "--model",
                    str(model_path),
                    "--requests",
                    str(requests),
                    "--batch_size",
                    str(batch_size),
                )
                print(
                    f"{kind:<9}{f'plain TF, batch {batch_size}':<26}{done / ceilings[batch_size]:>8.0f}"
                    f"{ceilings[batch_size]:>9.2f}{'':>65}{peak_mb:>7} MB"
                )
            ceiling_s = min(ceilings.values())
            for batch_size in batch_sizes:

                def run(path, name, model_path=model_path, batch_size=batch_size):
                    return measure(
                        args.repeats,
                        "--child",
                        "pipeline",
                        "--model",
                        str(model_path),
                        "--requests",
                        str(path),
                        "--out",
                        str(root / name),
                        "--batch_size",
                        str(batch_size),
                    )

                _, startup_s, _ = run(small, f"startup-{kind}-{batch_size}")
                scored, seconds, peak_mb = run(requests, f"out-{kind}-{batch_size}")
                assert scored == done == args.rows, (scored, done)
                steady = (scored - STARTUP_ROWS) / (seconds - startup_s)
                overhead_us = (1 / steady - ceiling_s / scored) * 1e6
                p50, p99 = latency_percentiles(root / f"out-{kind}-{batch_size}")
                print(
                    f"{kind:<9}{f'pipeline, batch {batch_size}':<26}{scored / seconds:>8.0f}{seconds:>9.2f}"
                    f"{startup_s:>10.2f}{ceiling_s / seconds:>11.2f}x{steady * ceiling_s / scored:>8.2f}x"
                    f"{overhead_us:>11.0f} us{f'{p50:,.0f} / {p99:,.0f}':>20}{peak_mb:>7} MB"
                )


if __name__ == "__main__":
    main()
