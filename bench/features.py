"""Benchmark: the feature pipeline (read, cleanse, split, statistics, tf.Transform analyze on train,
transform every split, encode and write TFRecords) on the local runner, and its statistics alone (read,
cleanse, split, statistics, written as JSON), against

(a) pyarrow + numpy computing the same per-split statistics in one process over the same file: the
    ceiling for the statistics alone;
(b) a plain tf.Transform AnalyzeDataset over the same rows with the same preprocessing function, on
    the same runner, in its fastest input mode: Arrow RecordBatches (Beam's batched Parquet read, one-value
    list columns, a TFXIO TensorAdapterConfig); what tf.Transform itself costs, before the pipeline's own
    statistics, transform and writes. The same analyze from instance dicts is printed too.

    python -m bench.features [--rows 1000000]
    python -m bench.features --profile [--rows 200000]   # the whole pipeline under cProfile: where the time goes

The input is a generated Parquet file of --rows rows x 20 columns (a key, a label, 10 numeric and 8
categorical features), and the same rows as CSV for one more run of the pipeline (its CSV reader). Each
measurement runs in its own process; wall time and peak RSS are that process's (the runner's SDK harness
runs in the same process).
"""

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUMERIC = [f"n{i}" for i in range(10)]
CATEGORICAL = [f"c{i}" for i in range(8)]
SPEC = (
    "\n".join(
        [
            "key: id",
            "label: y",
            "splits: {train: 0.7, eval: 0.3}",
            "features:",
            *[f"  - {{name: {n}, type: numeric, default: 0, transforms: [scale_to_0_1, z_score]}}" for n in NUMERIC],
            *[
                f"  - {{name: {c}, type: categorical, default: '', transforms: [{{vocabulary: {{top_k: 100}}}}]}}"
                for c in CATEGORICAL
            ],
            "  - {name: y, type: label}",
        ]
    )
    + "\n"
)


def make_file(path, rows):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    columns = {"id": [f"k{i}" for i in range(rows)], "y": rng.choice(["no", "yes"], rows, p=[0.8, 0.2])}
    for i, name in enumerate(NUMERIC):
        values = rng.normal(i, 1 + i, rows)
        columns[name] = pa.array(values, mask=rng.random(rows) < 0.02)
    for i, name in enumerate(CATEGORICAL):
        columns[name] = rng.choice([f"v{j}" for j in range(5 + 40 * i)], rows)
    table = pa.table(columns)
    pq.write_table(table, path, row_group_size=100_000)
    pcsv.write_csv(table, path.with_suffix(".csv"))  # the same rows for the CSV reader's run


def ceiling(path):
    """pyarrow + numpy: count, missing, min, max, mean, std, quantiles and histograms per numeric column,
    top values and distinct counts per categorical, for each split."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    keys = table.column("id").to_pylist()
    train = np.fromiter(
        (int(hashlib.md5(k.encode()).hexdigest()[:15], 16) / 16**15 < 0.7 for k in keys), bool, len(keys)
    )
    for mask in (train, ~train):
        part = table.filter(mask)
        for name in NUMERIC:
            column = part.column(name)
            values = column.drop_null().to_numpy()
            _ = (
                len(column),
                column.null_count,
                values.min(),
                values.max(),
                values.mean(),
                values.std(),
                np.quantile(values, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]),
                np.histogram(values, 10),
            )
        for name in [*CATEGORICAL, "y"]:
            counts = pc.value_counts(part.column(name))
            _ = (len(counts), sorted(counts.to_pylist(), key=lambda vc: -vc["counts"])[:10])
    return table.num_rows


def plain_tft(path, tmp):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from transforms.features.spec import make_preprocessing_fn, parse_feature_spec, tf_feature_spec

    spec = parse_feature_spec(SPEC, "bench.features SPEC")
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(tf_feature_spec(spec)))

    def filled(row):
        return {k: (0.0 if v is None and k in NUMERIC else v) for k, v in row.items()}

    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as pipeline:
        with tft_beam.Context(temp_dir=str(tmp)):
            rows = pipeline | beam.io.ReadFromParquet(str(path)) | beam.Map(filled)
            _ = (rows, metadata) | tft_beam.AnalyzeDataset(make_preprocessing_fn(spec))
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def plain_tft_record_batches(path, tmp):
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.compute as pc
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    from transforms.features.spec import make_preprocessing_fn, parse_feature_spec, tf_feature_spec

    spec = parse_feature_spec(SPEC, "bench.features SPEC")
    schema = schema_utils.schema_from_feature_spec(tf_feature_spec(spec))
    names = ["id", *NUMERIC, *CATEGORICAL, "y"]
    arrow_schema = pa.schema([(n, pa.list_(pa.float32() if n in NUMERIC else pa.binary())) for n in names])
    config = tensor_adapter.TensorAdapterConfig(
        arrow_schema, tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    )

    def record_batch(table):
        offsets = pa.array(np.arange(table.num_rows + 1, dtype=np.int32))
        columns = []
        for field in arrow_schema:
            column = table.column(field.name).combine_chunks()
            if field.name in NUMERIC:
                column = pc.fill_null(column, 0.0)
            columns.append(pa.ListArray.from_arrays(offsets, pc.cast(column, field.type.value_type, safe=False)))
        return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)

    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as pipeline:
        with tft_beam.Context(temp_dir=str(tmp)):
            batches = pipeline | beam.io.ReadFromParquetBatched(str(path)) | beam.Map(record_batch)
            _ = (batches, config) | tft_beam.AnalyzeDataset(make_preprocessing_fn(spec))
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def statistics_only(path, tmp):
    """The pipeline's own steps up to the statistics JSON: batched read, cleanse, split, statistics."""
    import json

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.features.cleanse import CleanseTables, batches_by_split, raw_of_split
    from transforms.features.spec import parse_feature_spec
    from transforms.features.statistics import ComputeStatistics
    from transforms.io.deadletter import DEAD_LETTER_TAG
    from transforms.io.record_batches import ReadRecordBatches

    spec = parse_feature_spec(SPEC, "bench.features SPEC")
    splits = list(spec.splits)
    numeric = [f.name for f in spec.inputs if f.is_numeric]
    strings = [f.name for f in spec.inputs if f.name not in numeric]
    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as pipeline:
        cleansed = (
            pipeline
            | ReadRecordBatches(str(path), "parquet", "bench")
            | beam.ParDo(CleanseTables(spec, "bench")).with_outputs(DEAD_LETTER_TAG, main="batches")
        )
        (
            cleansed.batches
            | beam.FlatMap(batches_by_split, splits)
            | beam.Map(raw_of_split)
            | ComputeStatistics(splits, numeric, strings)
            | beam.combiners.ToList()
            | beam.Map(json.dumps)
            | beam.io.WriteToText(str(Path(tmp) / "statistics"), ".json", shard_name_template="")
        )
    stats = json.loads((Path(tmp) / "statistics.json").read_text())
    return sum(split["rows"] for split in stats)


def full_pipeline_csv(path, tmp):
    """The whole pipeline on the same rows as CSV: pyarrow's CSV reader in byte-range chunks."""
    return full_pipeline(Path(path).with_suffix(".csv"), tmp)


def full_pipeline(path, tmp):
    from pipelines import feature_stats
    from pipelines.launch import metric_counts

    Path(tmp).mkdir(parents=True, exist_ok=True)
    (Path(tmp) / "spec.yaml").write_text(SPEC)
    result = feature_stats.run(
        [
            "--feature_spec",
            str(Path(tmp) / "spec.yaml"),
            "--input_files",
            str(path),
            "--output_dir",
            str(Path(tmp) / "out"),
            "--runner",
            "FnApiRunner",
        ]
    )
    return metric_counts(result, "feature_stats").get("records_in", 0)


def _child(kind, path, tmp, profile=False):
    run = {
        "ceiling": ceiling,
        "tft": plain_tft_record_batches,
        "tft_dicts": plain_tft,
        "statistics": statistics_only,
        "pipeline": full_pipeline,
        "pipeline_csv": full_pipeline_csv,
    }[kind]
    args = (path,) if kind == "ceiling" else (path, tmp)
    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        rows = profiler.runcall(run, *args)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(
            r"pipelines|transforms|tensorflow_transform|tfx_bsl|io/", 40
        )
    else:
        rows = run(*args)
    seconds = time.perf_counter() - start
    print(f"RESULT {rows} {seconds:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True)
    os._exit(0)  # TensorFlow and pyarrow can crash while tearing down at exit; the result is out


def measure(kind, path, tmp, profile=False):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.features", "--child", kind, "--path", str(path), "--tmp", str(tmp)]
        + ["--profile"] * profile,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    if profile:
        print(proc.stdout)
    rows, seconds, rss = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1].split()[1:]
    return int(rows), float(seconds), float(rss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows in the generated file. Default: 1000000.")
    parser.add_argument(
        "--child",
        choices=("ceiling", "tft", "tft_dicts", "statistics", "pipeline", "pipeline_csv"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--profile", action="store_true", help="Only the whole pipeline, under cProfile: its slowest functions."
    )
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.path, args.tmp, args.profile)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        make_file(path, args.rows)
        if args.profile:
            rows, seconds, rss = measure("pipeline", path, Path(tmp) / "pipeline", profile=True)
            print(f"pipeline under cProfile: {rows:,} rows in {seconds:.1f} s, peak RSS {rss:,.0f} MiB")
            return
        print(
            f"{args.rows:,} rows x 20 columns (Parquet); statistics per split; 10 numeric features scaled to "
            f"[0, 1] and z-scored, 8 vocabularies (top 100)"
        )
        print(f"{'run':<52}{'rows/s':>10}{'seconds':>9}{'peak RSS MiB':>14}", flush=True)
        names = {
            "ceiling": "(a) pyarrow + numpy statistics (ceiling)",
            "statistics": "statistics alone: read, cleanse, split, statistics",
            "tft": "(b) plain tf.Transform analyze, RecordBatches",
            "tft_dicts": "    plain tf.Transform analyze, instance dicts",
            "pipeline": "pipeline: statistics + analyze + transform + write",
            "pipeline_csv": "    the same pipeline on the rows as CSV",
        }
        results = {}
        for kind, name in names.items():
            rows, seconds, rss = results[kind] = measure(kind, path, Path(tmp) / kind)
            assert rows == args.rows, (kind, rows)
            print(f"{name:<52}{rows / seconds:>10,.0f}{seconds:>9.1f}{rss:>14,.0f}", flush=True)
        (_, ceiling_s, _), (_, stats_s, _) = results["ceiling"], results["statistics"]
        (_, tft_s, tft_rss), (_, pipeline_s, pipeline_rss) = results["tft"], results["pipeline"]
        print(
            f"statistics alone / ceiling throughput: {ceiling_s / stats_s:.3f}x (target >= 0.3x); "
            f"pipeline / plain RecordBatch analyze: {tft_s / pipeline_s:.2f}x (target >= 1.0x); "
            f"pipeline / instance-dict analyze: {results['tft_dicts'][1] / pipeline_s:.2f}x; "
            f"pipeline on CSV / plain RecordBatch analyze: {tft_s / results['pipeline_csv'][1]:.2f}x; "
            f"peak RSS pipeline / plain RecordBatch analyze: {pipeline_rss / tft_rss:.2f}x (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
