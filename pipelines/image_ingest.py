"""Image ingestion: labelled images from Pub/Sub or files to validated, deduplicated, resized, split
TFRecords of `tf.train.Example`, with a manifest accounting for every input, a label map and a per-label
report.

Local default (a bundled folder of small labelled images, with duplicates, a corrupt file, a non-image
and an unlabelled file; outputs in output/image_ingest, then a report):

    python -m pipelines.image_ingest

Batch on Dataflow, from a folder tree gs://B/images/<label>/<file>:

    python -m pipelines.image_ingest --runner DataflowRunner --project P --region us-central1 \\
        --temp_location gs://B/tmp --setup_file ./setup.py \\
        --input_dir gs://B/images --output_dir gs://B/datasets/flowers-v1 --image_size 224x224 \\
        --manifest_table P:ml.image_manifest --dead_letter_table P:ml.dead_letters

Streaming (the label map of an earlier batch run fixes the label ids):

    python -m pipelines.image_ingest --runner DataflowRunner ... --streaming \\
        --input_subscription projects/P/subscriptions/images \\
        --label_map gs://B/datasets/flowers-v1/label_map.txt --output_dir gs://B/datasets/flowers-stream
"""

import json
import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection

from pipelines.launch import (
    apply_udf,
    dead_letters_by_reason,
    metric_counts,
    read_records,
    run_pipeline,
    write_dead_letters,
    write_health_rows,
)
from pipelines.options import (
    HealthOptions,
    ImageFolderInputOptions,
    ImageLimitOptions,
    LabelMapOptions,
    OutputOptions,
    PubsubInputOptions,
    TfRecordOutputOptions,
    UdfOptions,
    check_health,
    check_image_limits,
    check_input,
    check_outputs,
    check_udf,
)
from pipelines.samples import IMAGES_DIR
from transforms.images.ingest import (
    MANIFEST_BQ_SCHEMA,
    MANIFEST_TAG,
    AssignLabelIds,
    AssignSplits,
    DeduplicateByContent,
    LabelReportFn,
    ProcessImages,
    ToImageInputs,
    WriteTfRecordSplits,
    manifest_row,
    manifest_row_from_dead_letter,
    utc_now_iso,
)
from transforms.images.pixels import (
    DEDUP_KEYS,
    ENCODINGS,
    EXIF_ORIENTATIONS,
    RESIZE_METHODS,
    parse_image_size,
    parse_label_map,
    parse_splits,
)
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.files import read_text
from transforms.io.sinks import BigQueryTarget, WriteRecords
from transforms.io.sources import Input, ReadRecords

PIPELINE = "image_ingest"
SAMPLE_DIR = IMAGES_DIR


class ImageIngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input_manifest",
            type=str,
            default=None,
            help='CSV (uri,label) or JSONL ({"uri", "label"}) manifest, local or gs://; relative uris are '
            "read from the manifest's folder.",
        )
        parser.add_argument(
            "--image_size",
            type=str,
            default="224x224",
            help="Output size WIDTHxHEIGHT (or one number for both). Default: 224x224.",
        )
        parser.add_argument(
            "--resize_method",
            type=str,
            default="pad",
            choices=RESIZE_METHODS,
            help="pad: keep the aspect ratio, black borders; crop: keep it, cut the centre; stretch: ignore "
            "it. Bilinear, antialiased when shrinking. Default: pad.",
        )
        parser.add_argument(
            "--encoding",
            type=str,
            default="jpeg",
            choices=ENCODINGS,
            help="How image/encoded is stored: jpeg, png, or raw (HxWx3 uint8 bytes). Default: jpeg.",
        )
        parser.add_argument(
            "--jpeg_quality", type=int, default=90, help="JPEG quality 1-95 with --encoding jpeg. Default: 90."
        )
        parser.add_argument(
            "--exif_orientation",
            type=str,
            default="apply",
            choices=EXIF_ORIENTATIONS,
            help="apply: turn each image as its EXIF Orientation tag says, as a person sees the photo; ignore: "
            "keep the pixels as stored (what tf.io.decode_image does). Default: apply.",
        )
        parser.add_argument(
            "--dedup_by",
            type=str,
            default="bytes",
            choices=DEDUP_KEYS,
            help="What makes two images duplicates: bytes (MD5 of the source file) or pixels (MD5 of the decoded, "
            "oriented RGB pixels with their size, before the resize: lossless re-encodes and metadata edits "
            "are duplicates, lossy re-encodes are not). Default: bytes.",
        )
        parser.add_argument(
            "--unknown_label",
            type=str,
            default="dead_letter",
            choices=("dead_letter", "fail"),
            help="An image whose label is not in --label_map: dead-letter it, or fail the job. Default: dead_letter.",
        )
        parser.add_argument(
            "--splits",
            type=str,
            default="train=0.7,eval=0.3",
            help="Split names and fractions, summing to 1, e.g. train=0.8,eval=0.1,test=0.1. Assigned by content "
            "hash: exactly stratified per label in batch, in expectation in streaming. Default: "
            "train=0.7,eval=0.3.",
        )
        parser.add_argument(
            "--max_per_label",
            type=int,
            default=None,
            help="Batch: keep at most this many images per label (chosen by content hash), to limit class "
            "imbalance; the rest are listed in the manifest as over_cap.",
        )
        parser.add_argument(
            "--imbalance_ratio",
            type=float,
            default=3.0,
            help="The label report warns when the largest class has more than this many times the images of "
            "another. Default: 3.",
        )
        parser.add_argument(
            "--dedup_retention_seconds",
            type=int,
            default=7 * 24 * 3600,
            help="Streaming: how long (event time) a content hash is remembered for deduplication. Batch runs "
            "deduplicate across the whole input. Default: 604800 (7 days).",
        )
        parser.add_argument(
            "--shard_seconds",
            type=int,
            default=60,
            help="Streaming: a new set of TFRecord shards every this many seconds. Default: 60.",
        )
        parser.add_argument(
            "--manifest_table",
            type=str,
            default=None,
            help="BigQuery table PROJECT:DATASET.TABLE for the manifest (one row per input: accepted with its "
            "split, duplicate, over_cap or rejected with the reason), created if missing.",
        )


INPUT_FLAGS = ("input_subscription", "input_topic", "input_dir", "input_manifest")
OPTION_CLASSES = (
    ImageIngestOptions,
    ImageLimitOptions,
    PubsubInputOptions,
    ImageFolderInputOptions,
    LabelMapOptions,
    TfRecordOutputOptions,
    UdfOptions,
    HealthOptions,
)


class Settings(NamedTuple):
    """Flags after validation, parsed."""

    input: Input
    image_size: tuple
    splits: list
    labels: list  # None: found in the data (batch)


class ImageIngestOutputs(NamedTuple):
    split_images: PCollection  # (split, ProcessedImage, label id)
    manifest: PCollection
    dead_letters: PCollection
    label_report: PCollection  # None in streaming
    health_rows: PCollection = None  # with a --health_* sink


def validate(options):
    """Cross-flag checks before any graph is built; returns the parsed Settings."""
    opts = options.view_as(ImageIngestOptions)
    source = check_input(options, INPUT_FLAGS, Input(input_dir=str(SAMPLE_DIR)))
    streaming = options.view_as(StandardOptions).streaming
    check_image_limits(options)
    for flag in ("shard_seconds", "dedup_retention_seconds"):
        if getattr(opts, flag) <= 0:
            raise ValueError(f"--{flag} must be positive, got {getattr(opts, flag)}")
    if not 1 <= opts.jpeg_quality <= 95:
        raise ValueError(f"--jpeg_quality must be within 1-95, got {opts.jpeg_quality}")
    if options.view_as(TfRecordOutputOptions).num_shards < 0:
        raise ValueError(f"--num_shards must be >= 0, got {options.view_as(TfRecordOutputOptions).num_shards}")
    if opts.max_per_label is not None and (opts.max_per_label <= 0 or streaming):
        raise ValueError("--max_per_label must be positive, and applies to batch runs only")
    if opts.imbalance_ratio < 1:
        raise ValueError(f"--imbalance_ratio must be >= 1, got {opts.imbalance_ratio}")
    label_map = options.view_as(LabelMapOptions).label_map
    if streaming and not label_map:
        raise ValueError(
            "streaming needs --label_map (label ids must not depend on which images came first): "
            "use the label_map.txt of a batch run, or write one label per line"
        )
    if source.input_dir and options.view_as(UdfOptions).udf_path:
        raise ValueError("--udf_path reshapes Pub/Sub messages and manifest lines; it does not apply to --input_dir")
    check_udf(options)
    check_health(options)
    check_outputs(options, PIPELINE, ())
    labels = None
    if label_map:
        try:
            labels = parse_label_map(read_text(label_map), label_map)
        except OSError as e:
            raise ValueError(f"--label_map: cannot read {label_map}: {e}") from None
    return Settings(source, parse_image_size(opts.image_size), parse_splits(opts.splits), labels)


def _count_manifest(row):
    Metrics.counter(PIPELINE, "inputs").inc()
    Metrics.counter(PIPELINE, f"manifest_{row['status']}").inc()
    if row["split"]:
        Metrics.counter(PIPELINE, f"split_{row['split']}").inc()
    return row


def build(pipeline, options, settings, source=None):
    """Wires the graph. `source` replaces the input (Create/TestStream in tests): PubsubMessage,
    ImageInput, or manifest lines."""
    opts = options.view_as(ImageIngestOptions)
    out = options.view_as(OutputOptions)
    streaming = options.view_as(StandardOptions).streaming
    limits = options.view_as(ImageLimitOptions)
    raw = read = read_records(
        pipeline,
        PIPELINE,
        source or ReadRecords(settings.input, max_file_bytes=limits.max_image_bytes),
        "ReadImageSources",
    )
    raw, dead_letter_sources = apply_udf(options, raw, PIPELINE)
    inputs = raw | "ToImageInputs" >> beam.ParDo(
        ToImageInputs(opts.input_manifest, limits.max_image_bytes, PIPELINE)
    ).with_outputs(DEAD_LETTER_TAG, main="images")
    width, height = settings.image_size
    processed = inputs.images | "ProcessImages" >> beam.ParDo(
        ProcessImages(
            PIPELINE,
            dict(
                width=width,
                height=height,
                method=opts.resize_method,
                encoding=opts.encoding,
                jpeg_quality=opts.jpeg_quality,
                max_bytes=limits.max_image_bytes,
                max_pixels=limits.max_image_pixels,
                exif_orientation=opts.exif_orientation,
                dedup_by=opts.dedup_by,
            ),
        )
    ).with_outputs(DEAD_LETTER_TAG, main="images")
    unique = processed.images | "DeduplicateByContent" >> DeduplicateByContent(
        opts.dedup_retention_seconds if streaming else None, PIPELINE
    )
    if settings.labels is None:
        labels = (
            unique.images
            | "Labels" >> beam.Map(lambda image: image.label)
            | "DistinctLabels" >> beam.Distinct()
            | "LabelList" >> beam.combiners.ToList()
            | "SortLabels" >> beam.Map(sorted)
        )
        (
            labels
            | "LabelMapText" >> beam.Map("\n".join)
            | "WriteLabelMap"
            >> beam.io.WriteToText(FileSystems.join(out.output_dir, "label_map"), ".txt", shard_name_template="")
        )
    else:
        labels = pipeline | "LabelMap" >> beam.Create([settings.labels])
    labelled = unique.images | "AssignLabelIds" >> beam.ParDo(
        AssignLabelIds(opts.unknown_label == "fail", PIPELINE), beam.pvalue.AsSingleton(labels)
    ).with_outputs(DEAD_LETTER_TAG, main="labelled")
    split = labelled.labelled | "AssignSplits" >> AssignSplits(settings.splits, opts.max_per_label, streaming, PIPELINE)
    tfrecords = options.view_as(TfRecordOutputOptions)
    split.split | "WriteTfRecords" >> WriteTfRecordSplits(
        out.output_dir,
        [name for name, _ in settings.splits],
        tfrecords.compression == "gzip",
        tfrecords.num_shards,
        opts.shard_seconds if streaming else None,
    )

    record_dead_letters = (
        *dead_letter_sources,
        inputs[DEAD_LETTER_TAG],
        processed[DEAD_LETTER_TAG],
        labelled[DEAD_LETTER_TAG],
    ) | "RecordDeadLetters" >> beam.Flatten()
    accepted = split.split | "AcceptedRows" >> beam.Map(
        lambda s: manifest_row(
            "accepted", s[1].source_id, s[1].source, s[1].label, utc_now_iso(), split=s[0], md5=s[1].md5
        )
    )
    rejected = record_dead_letters | "RejectedRows" >> beam.Map(manifest_row_from_dead_letter)
    manifest = (
        (accepted, unique[MANIFEST_TAG], split[MANIFEST_TAG], rejected)
        | "FlattenManifest" >> beam.Flatten()
        | "CountManifest" >> beam.Map(_count_manifest)
    )
    manifest_bq = (
        BigQueryTarget(opts.manifest_table, MANIFEST_BQ_SCHEMA, "recorded_at", ["status"])
        if opts.manifest_table
        else None
    )
    sink_failures = manifest | "WriteManifest" >> WriteRecords(
        PIPELINE,
        manifest_bq,
        out.bq_write_method,
        local_prefix=FileSystems.join(out.output_dir, "manifest"),
        streaming=streaming,
    )
    label_report = None
    if not streaming:
        label_report = manifest | "LabelReport" >> beam.CombineGlobally(LabelReportFn(opts.imbalance_ratio))
        (
            label_report
            | "LabelReportJson" >> beam.Map(lambda r: json.dumps(r, indent=2, sort_keys=True))
            | "WriteLabelReport"
            >> beam.io.WriteToText(FileSystems.join(out.output_dir, "label_report"), ".json", shard_name_template="")
        )
    dead_letters = write_dead_letters(options, PIPELINE, read, (record_dead_letters, *sink_failures))
    health_rows = write_health_rows(options, PIPELINE, split.split, dead_letters)
    return ImageIngestOutputs(split.split, manifest, dead_letters, label_report, health_rows)


def report(result, options, _settings):
    """Counts from Beam metrics, then the label report's table and warnings (batch)."""
    output_dir = options.view_as(OutputOptions).output_dir
    counts = metric_counts(result, PIPELINE)
    lines = [
        f"inputs: {counts.get('inputs', 0)}  accepted: {counts.get('manifest_accepted', 0)}  "
        f"duplicates: {counts.get('manifest_duplicate', 0)}  over the cap: {counts.get('manifest_over_cap', 0)}  "
        f"rejected (dead letters): {counts.get('manifest_rejected', 0)}"
    ]
    by_reason = dead_letters_by_reason(counts, "rejected by reason")
    if by_reason:
        lines.append(by_reason)
    report_path = FileSystems.join(output_dir, "label_report.json")
    if FileSystems.exists(report_path):
        label_report = json.loads(read_text(report_path))
        splits = sorted(
            {k for c in label_report["labels"].values() for k in c} - {"accepted", "duplicate", "over_cap", "rejected"}
        )
        columns = [*splits, "accepted", "duplicate", "over_cap", "rejected"]
        lines.append(f"{'label':<16}" + "".join(f"{c:>10}" for c in columns))
        for label, c in label_report["labels"].items():
            lines.append(f"{label:<16}" + "".join(f"{c.get(k, 0):>10}" for k in columns))
        lines.extend(f"warning: {w}" for w in label_report["warnings"])
    lines.append(
        f"outputs: {output_dir}/<split>/images-*.tfrecord*, label_map.txt, label_report.json, "
        f"manifest-*.jsonl, dead_letters-*.jsonl"
    )
    return "\n".join(lines)


def run(argv=None):
    return run_pipeline(argv, __doc__, OPTION_CLASSES, validate, build, report)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
