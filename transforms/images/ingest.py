"""The image-ingestion steps as Beam transforms: read, validate/decode/resize, deduplicate, label, split,
write TFRecords, and account for every input in a manifest."""

import csv
import datetime
import hashlib
import io
import posixpath

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.core.records import record_dict
from transforms.core.splits import assign_splits, streaming_split
from transforms.images.pixels import inputs_from_message, process_image, to_example
from transforms.io.deadletter import GuardedDoFn, RecordError
from transforms.io.sinks import ReleaseToSinks
from transforms.io.sources import ImageInput

MANIFEST_TAG = "manifest"  # inputs that are not written: duplicates and images over the per-label cap
# Dead letters keep at most this much of a too-large image (BigQuery rows and Pub/Sub messages cap at 10 MB).

MANIFEST_BQ_SCHEMA = {
    "fields": [
        {"name": "source_id", "type": "STRING", "mode": "NULLABLE"},
        {"name": "source", "type": "STRING", "mode": "NULLABLE"},
        {"name": "label", "type": "STRING", "mode": "NULLABLE"},
        {"name": "status", "type": "STRING", "mode": "REQUIRED"},  # accepted, duplicate, over_cap, rejected
        {"name": "split", "type": "STRING", "mode": "NULLABLE"},
        {"name": "reason", "type": "STRING", "mode": "NULLABLE"},
        {"name": "md5", "type": "STRING", "mode": "NULLABLE"},
        {"name": "duplicate_of", "type": "STRING", "mode": "NULLABLE"},
        {"name": "recorded_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    ]
}


def utc_now_iso():
    return datetime.datetime.now(datetime.UTC).isoformat()


def manifest_row(status, source_id, source, label, recorded_at, split=None, reason=None, md5=None, duplicate_of=None):
    return {
        "source_id": source_id,
        "source": source,
        "label": label,
        "status": status,
        "split": split,
        "reason": reason,
        "md5": md5,
        "duplicate_of": duplicate_of,
        "recorded_at": recorded_at,
    }


def manifest_row_from_dead_letter(dead_letter):
    attributes = {a["key"]: a["value"] for a in dead_letter["attributes"]}
    return manifest_row(
        "rejected",
        attributes.get("image.source_id"),
        attributes.get("image.source"),
        attributes.get("image.label") or None,
        dead_letter["failed_at"],
        reason=f"{dead_letter['step']}: {dead_letter['reason']}",
    )


def image_attributes(item, attributes=None):
    """A dead letter's attributes for an image: the message's, and where the image came from."""
    return {
        **(attributes or {}),
        "image.source_id": item.source_id,
        "image.source": item.source,
        "image.label": item.label or "",
    }


class ToImageInputs(GuardedDoFn):
    """PubsubMessage (one or several images), manifest line (`uri,label` CSV or {"uri", "label"} JSON; a
    relative uri is resolved against the manifest's folder) or ImageInput -> ImageInput, one per image;
    anything unreadable -> dead letter."""

    STEP = "ToImageInputs"

    def __init__(self, manifest_path, max_bytes, pipeline_name):
        super().__init__(pipeline_name)
        self._manifest_dir = posixpath.dirname(manifest_path) if manifest_path else None
        self._max_bytes = max_bytes

    def handle(self, record):
        if isinstance(record, ImageInput):
            yield record
        elif isinstance(record, PubsubMessage):
            message_id = record.message_id or hashlib.md5(record.data).hexdigest()
            for payload, item in inputs_from_message(record.data, record.attributes, message_id):
                if isinstance(item, RecordError):
                    yield self.dead_letter(payload, item, record.attributes)
                else:
                    yield item
        else:
            yield from self._from_manifest_line(record)

    def _from_manifest_line(self, line):
        text = (line.decode("utf-8") if isinstance(line, bytes) else line).lstrip("\ufeff").strip()
        if not text or text.lower().replace(" ", "") == "uri,label":  # blank line or CSV header
            return
        try:
            if text.startswith("{"):
                try:
                    entry = record_dict(text)
                except RecordError as e:
                    raise RecordError("bad_manifest_line", f"cannot parse: {e}") from None
                uri, label = entry.get("uri"), entry.get("label")
                if not isinstance(uri, str) or not isinstance(label, (str, type(None))):
                    raise RecordError("wrong_type", "the manifest's uri and label must be strings")
            else:
                fields = next(csv.reader(io.StringIO(text)))
                uri, label = fields[0].strip(), (fields[1].strip() if len(fields) > 1 else None)
            if not uri:
                raise RecordError("missing_field", "the manifest line has no uri (expected `uri,label`)")
        except RecordError:
            raise
        except (ValueError, csv.Error) as e:
            raise RecordError("bad_manifest_line", f"cannot parse: {e}") from None
        if self._manifest_dir and "://" not in uri and not posixpath.isabs(uri):
            uri = FileSystems.join(self._manifest_dir, uri)
        item = ImageInput(uri, uri, label, b"")
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                data = f.read(self._max_bytes + 1)  # over the limit: ProcessImages dead-letters it as too_large
        except Exception as e:  # noqa: BLE001 - missing file, permissions: the line's dead letter
            yield self.dead_letter(
                line, RecordError("unreadable_file", f"cannot read {uri}: {e}"), image_attributes(item)
            )
            return
        yield item._replace(data=data)


class ProcessImages(GuardedDoFn):
    """ImageInput -> ProcessedImage: validated, decoded (pixel cap), resized, re-encoded."""

    STEP = "ProcessImages"

    def __init__(self, pipeline_name, settings):
        super().__init__(pipeline_name)
        self._settings = settings  # keyword arguments of transforms.images.pixels.process_image

    def handle(self, item):
        yield process_image(item, **self._settings)

    def dead_letter_payload(self, item):
        return item.data, image_attributes(item)


class _FirstOfEachContent(beam.DoFn):
    """(dedup key, images) -> the image with the smallest source id; the others go to the manifest."""

    def __init__(self, pipeline_name):
        self._duplicates = Metrics.counter(pipeline_name, "duplicates")

    def process(self, keyed):
        _, images = keyed
        first, *duplicates = sorted(images, key=lambda i: i.source_id)
        for duplicate in duplicates:
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                MANIFEST_TAG,
                manifest_row(
                    "duplicate",
                    duplicate.source_id,
                    duplicate.source,
                    duplicate.label,
                    utc_now_iso(),
                    md5=duplicate.md5,
                    duplicate_of=first.source_id,
                    reason=None if duplicate.label == first.label else f"label conflict: kept '{first.label}'",
                ),
            )
        yield first


class _FirstWithinRetention(beam.DoFn):
    """Streaming: keeps the first image of each dedup key; later copies within the retention (event
    time since the first) go to the manifest. The state of a key expires with an event-time timer."""

    FIRST = ReadModifyWriteStateSpec("first_source_id", StrUtf8Coder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, retention_seconds, pipeline_name):
        self._retention = retention_seconds
        self._duplicates = Metrics.counter(pipeline_name, "duplicates")

    def process(
        self,
        keyed,
        timestamp=beam.DoFn.TimestampParam,
        first=beam.DoFn.StateParam(FIRST),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        _, image = keyed
        kept = first.read()
        if kept is None:
            first.write(image.source_id)
            expiry.set(timestamp + self._retention)
            yield image
        else:
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                MANIFEST_TAG,
                manifest_row(
                    "duplicate",
                    image.source_id,
                    image.source,
                    image.label,
                    utc_now_iso(),
                    md5=image.md5,
                    duplicate_of=kept,
                ),
            )

    @on_timer(EXPIRY)
    def expire(self, first=beam.DoFn.StateParam(FIRST)):
        first.clear()


class DeduplicateByContent(beam.PTransform):
    """One image per dedup key (MD5 of the source bytes, or the pixel key: see `process_image`): across
    the whole run in batch, within `retention_seconds` in streaming. Outputs: main (unique images) and
    MANIFEST_TAG (duplicates)."""

    def __init__(self, retention_seconds, pipeline_name):
        super().__init__()
        self._retention, self._pipeline = retention_seconds, pipeline_name

    def expand(self, images):
        keyed = images | "KeyByMd5" >> beam.Map(lambda i: (i.dedup_key, i))
        if self._retention is None:
            return (
                keyed
                | "GroupByMd5" >> beam.GroupByKey()
                | "KeepFirst"
                >> beam.ParDo(_FirstOfEachContent(self._pipeline)).with_outputs(MANIFEST_TAG, main="images")
            )
        return keyed | "KeepFirstWithinRetention" >> beam.ParDo(
            _FirstWithinRetention(self._retention, self._pipeline)
        ).with_outputs(MANIFEST_TAG, main="images")


class AssignLabelIds(GuardedDoFn):
    """ProcessedImage -> (image, label id) from the label list (side input; id = position). An unknown
    label is a dead letter, or fails the job when `fail_on_unknown`."""

    STEP = "AssignLabelIds"

    def __init__(self, fail_on_unknown, pipeline_name):
        super().__init__(pipeline_name)
        self._fail = fail_on_unknown

    def process(self, image, labels):  # not guarded: --unknown_label fail must be able to stop the job
        ids = {label: i for i, label in enumerate(labels)}  # a few labels: cheap per element
        if image.label in ids:
            yield image, ids[image.label]
            return
        error = RecordError(
            "unknown_label",
            f"label '{image.label}' of '{image.source_id}' is not in the label "
            f"map ({len(labels)} labels); add it to --label_map or drop the image",
        )
        if self._fail:
            raise error
        yield self.dead_letter(image.encoded, error, image_attributes(image))


class _SplitOneLabel(beam.DoFn):
    def __init__(self, fractions, cap, pipeline_name):
        self._fractions, self._cap = fractions, cap
        self._over_cap = Metrics.counter(pipeline_name, "over_cap")

    def process(self, keyed):
        _, labelled = keyed
        by_md5 = {image.md5: (image, label_id) for image, label_id in labelled}
        for md5, split in assign_splits(list(by_md5), self._fractions, self._cap).items():
            image, label_id = by_md5[md5]
            if split is None:
                self._over_cap.inc()
                yield beam.pvalue.TaggedOutput(
                    MANIFEST_TAG,
                    manifest_row(
                        "over_cap",
                        image.source_id,
                        image.source,
                        image.label,
                        utc_now_iso(),
                        md5=md5,
                        reason=f"over --max_per_label={self._cap}",
                    ),
                )
            else:
                yield split, image, label_id


class AssignSplits(beam.PTransform):
    """(image, label id) -> (split, image, label id). Batch: per label, by rank of the content hash, so
    each label keeps the split proportions exactly, with an optional per-label cap (the rest go to
    MANIFEST_TAG). Streaming: by the content hash alone (stratified in expectation, no cap)."""

    def __init__(self, fractions, cap, streaming, pipeline_name):
        super().__init__()
        self._fractions, self._cap, self._streaming, self._pipeline = fractions, cap, streaming, pipeline_name

    def expand(self, labelled):
        if self._streaming:
            fractions = self._fractions
            return labelled | "SplitByHash" >> beam.Map(
                lambda pair: (streaming_split(pair[0].md5, fractions), *pair)
            ).with_outputs(MANIFEST_TAG, main="split")
        return (
            labelled
            | "KeyByLabel" >> beam.Map(lambda pair: (pair[0].label, pair))
            | "GroupByLabel" >> beam.GroupByKey()
            | "SplitEachLabel"
            >> beam.ParDo(_SplitOneLabel(self._fractions, self._cap, self._pipeline)).with_outputs(
                MANIFEST_TAG, main="split"
            )
        )


class WriteTfRecordSplits(beam.PTransform):
    """(split, image, label id) -> TFRecord shards of `tf.train.Example`,
    `<output_dir>/<split>/images-SSSSS-of-NNNNN.tfrecord[.gz]`; in streaming, a set of shards per
    `window_seconds` of processing time."""

    def __init__(self, output_dir, splits, compress=True, num_shards=0, streaming_window_seconds=None):
        super().__init__()
        self._output_dir, self._splits, self._compress = output_dir, list(splits), compress
        self._num_shards, self._window = num_shards, streaming_window_seconds

    def expand(self, split_images):
        examples = split_images | "ToExample" >> beam.Map(lambda s: (s[0], to_example(s[1], s[2])))
        if self._window:
            examples = (
                examples
                | "ReleaseToSinks" >> ReleaseToSinks()
                | "ShardWindows" >> beam.WindowInto(window.FixedWindows(self._window))
            )
        parts = examples | "PartitionBySplit" >> beam.Partition(
            lambda pair, n, names: names.index(pair[0]), len(self._splits), self._splits
        )
        for name, part in zip(self._splits, parts, strict=True):
            (
                part
                | f"Examples[{name}]" >> beam.Values()
                | f"Write[{name}]"
                >> beam.io.WriteToTFRecord(
                    FileSystems.join(self._output_dir, name, "images"),
                    file_name_suffix=".tfrecord.gz" if self._compress else ".tfrecord",
                    compression_type=CompressionTypes.GZIP if self._compress else CompressionTypes.UNCOMPRESSED,
                    num_shards=self._num_shards,
                    triggering_frequency=self._window,
                )
            )


def add_to_label_report(report, row):
    """Counts one manifest row into {label: {status or split: count}}."""
    counts = report.setdefault(row["label"] or "", {})  # "": no label
    key = row["split"] if row["status"] == "accepted" else row["status"]
    counts[key] = counts.get(key, 0) + 1
    return report


def finish_label_report(report, imbalance_ratio):
    """Adds the accepted total per label and imbalance warnings (largest vs smallest class)."""
    labels = {
        label: {
            **counts,
            "accepted": sum(v for k, v in counts.items() if k not in ("duplicate", "over_cap", "rejected")),
        }
        for label, counts in sorted(report.items())
        if label
    }
    warnings = []
    if labels:
        largest = max(labels, key=lambda name: labels[name]["accepted"])
        most = labels[largest]["accepted"]
        for name, counts in labels.items():
            if counts["accepted"] == 0 or most / counts["accepted"] > imbalance_ratio:
                warnings.append(
                    f"label '{name}' has {counts['accepted']} images against {most} for '{largest}' (more than "
                    f"{imbalance_ratio:g}x): the model will favour '{largest}'; add images of '{name}' or cap "
                    f"the others with --max_per_label"
                )
    return {"labels": labels, "unlabelled": report.get("", {}), "warnings": warnings}


class LabelReportFn(beam.CombineFn):
    def __init__(self, imbalance_ratio):
        self._ratio = imbalance_ratio

    def create_accumulator(self):
        return {}

    def add_input(self, report, row):
        return add_to_label_report(report, row)

    def merge_accumulators(self, reports):
        merged = {}
        for report in reports:
            for label, counts in report.items():
                target = merged.setdefault(label, {})
                for key, value in counts.items():
                    target[key] = target.get(key, 0) + value
        return merged

    def extract_output(self, report):
        return finish_label_report(report, self._ratio)
