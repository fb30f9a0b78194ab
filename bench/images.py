"""Benchmark: the image-ingestion pipeline on the local runner against a plain Python loop doing the
same per-image work (read the file, validate, decode, resize, re-encode as JPEG, all with Pillow through
the same function) in one process. The ratio is the pipeline's overhead per image: Beam's bundling,
the two shuffles (deduplication, per-label split), the manifest and writing TFRecords.

    python -m bench.images [--images 2000] [--size 640x480] [--workers 1]

Each side runs in its own process over the same generated folder <root>/<label>/<n>.jpg; wall time
and peak RSS are that process's.
"""

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.samples.images import LABELS, draw

SETTINGS = dict(
    width=224,
    height=224,
    method="pad",
    encoding="jpeg",
    jpeg_quality=90,
    max_bytes=20 * 1024 * 1024,
    max_pixels=40_000_000,
)


def make_folder(root, count, width, height):
    rng = random.Random(0)
    for n in range(count):
        label = LABELS[n % len(LABELS)]
        (root / label).mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        draw(label, rng, width, height).save(buffer, "JPEG", quality=90)
        (root / label / f"{n:06d}.jpg").write_bytes(buffer.getvalue())


def plain_loop(root):
    from transforms.images.pixels import process_image
    from transforms.io.sources import ImageInput

    done = 0
    for path in sorted(Path(root).rglob("*.jpg")):
        process_image(ImageInput(path.name, str(path), path.parent.name, path.read_bytes()), **SETTINGS)
        done += 1
    return done


def pipeline(root, out, workers):
    from pipelines import image_ingest

    result = image_ingest.run(
        [
            "--input_dir",
            str(root),
            "--output_dir",
            str(out),
            "--runner",
            "FnApiRunner",
            "--direct_num_workers",
            str(workers),
            "--direct_running_mode",
            "multi_processing" if workers > 1 else "in_memory",
        ]
    )
    from pipelines.launch import metric_counts

    return metric_counts(result, "image_ingest").get("manifest_accepted", 0)


def _child(kind, root, out, workers):
    import resource

    start = time.perf_counter()
    done = plain_loop(root) if kind == "loop" else pipeline(root, out, workers)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"RESULT {done} {seconds:.3f} {max(peak_mib, children_mib):.0f}")


def measure(kind, root, out, workers):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.images",
            "--child",
            kind,
            "--root",
            str(root),
            "--out",
            str(out),
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = [out for out in proc.stdout.splitlines() if out.startswith("RESULT ")][-1]
    done, seconds, rss = line.split()[1:]
    return int(done), float(seconds), float(rss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="How many images to generate. Default: 2000.")
    parser.add_argument("--size", type=str, default="640x480", help="Source image size. Default: 640x480.")
    parser.add_argument("--workers", type=int, default=1, help="--direct_num_workers for the pipeline. Default: 1.")
    parser.add_argument("--child", choices=("loop", "pipeline"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.root, args.out, args.workers)
        return
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_folder(root, args.images, width, height)
        print(f"{args.images} JPEG images of {width}x{height} -> 224x224 pad, JPEG q90; {os.cpu_count()} CPUs")
        loop_done, loop_s, loop_rss = measure("loop", root, Path(tmp) / "unused", 1)
        pipe_done, pipe_s, pipe_rss = measure("pipeline", root, Path(tmp) / "out", args.workers)
        assert loop_done == pipe_done == args.images, (loop_done, pipe_done)
        print(f"{'':<34}{'images/s':>10}{'seconds':>10}{'peak RSS MiB':>14}")
        print(f"{'plain loop (baseline)':<34}{loop_done / loop_s:>10.0f}{loop_s:>10.1f}{loop_rss:>14.0f}")
        print(
            f"{f'pipeline, FnApiRunner x{args.workers}':<34}{pipe_done / pipe_s:>10.0f}{pipe_s:>10.1f}{pipe_rss:>14.0f}"
        )
        print(f"pipeline / plain loop throughput: {loop_s / pipe_s:.2f}x")


if __name__ == "__main__":
    main()
