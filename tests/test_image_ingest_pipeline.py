"""The batch image pipeline on the local runner, from a generated folder and a manifest: every input
accounted for (pixel deduplication with and without EXIF orientation included), TFRecords read back with TensorFlow, label maps reused, and a Keras model trained on the
output through the reader helper."""

import base64
import collections
import glob
import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image, PngImagePlugin

from pipelines import image_ingest
from pipelines.samples.images import LABELS, write_sample
from transforms.images.dataset import read_image_dataset


def run_pipeline(*flags):
    options = PipelineOptions(["--runner", "FnApiRunner", "--image_size", "32x32", *flags])
    settings = image_ingest.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        image_ingest.build(pipeline, options, settings)


def read_jsonl(pattern):
    return [json.loads(line) for path in glob.glob(pattern) for line in Path(path).read_text().splitlines()]


def read_examples(output_dir, split):
    examples = []
    for path in sorted(glob.glob(f"{output_dir}/{split}/images-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            examples.append(
                {k: (v.bytes_list.value or v.int64_list.value)[0] for k, v in example.features.feature.items()}
            )
    return examples


def add_pixel_copies(root, original):
    """Two files with other bytes but the pixels of `original` (a PNG): re-saved with other compression and
    metadata, and stored turned a quarter with EXIF orientation 8 (turn back a quarter to view)."""
    pixels = np.asarray(Image.open(root / original).convert("RGB"))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "another editor")
    Image.fromarray(pixels).save(root / original.replace("/", "/resaved-"), "PNG", compress_level=1, pnginfo=info)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(np.rot90(pixels, -1)).save(root / original.replace("/", "/turned-"), "PNG", exif=exif.tobytes())
    return {original.replace("/", "/resaved-"): "duplicate", original.replace("/", "/turned-"): "duplicate"}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("out")
    expected = write_sample(root, per_label=(10, 7, 3), seed=21)
    expected.update(add_pixel_copies(root, "square/001.png"))
    run_pipeline("--input_dir", str(root), "--output_dir", str(out), "--dedup_by", "pixels")
    return root, out, expected


def test_every_input_is_in_the_manifest_once_with_its_fate(folder_run):
    root, out, expected = folder_run
    manifest = read_jsonl(f"{out}/manifest-*.jsonl")
    assert len(manifest) == len(expected) == sum(1 for p in root.rglob("*") if p.is_file())
    got = {
        row["source_id"]: row["status"] if row["status"] != "rejected" else row["reason"].split(": ")[1]
        for row in manifest
    }
    assert got == expected
    duplicates = {row["source_id"]: row["duplicate_of"] for row in manifest if row["status"] == "duplicate"}
    assert duplicates == {
        "circle/copy-of-000.jpg": "circle/000.jpg",
        "square/copy-of-001.png": "square/001.png",
        "square/resaved-001.png": "square/001.png",
        "square/turned-001.png": "square/001.png",  # the default --exif_orientation apply
    }


def test_tfrecords_hold_each_accepted_image_once_with_its_label_and_hash(folder_run):
    root, out, expected = folder_run
    examples = read_examples(out, "train") + read_examples(out, "eval")
    by_id = {e["image/source_id"].decode(): e for e in examples}
    assert len(by_id) == len(examples)
    assert set(by_id) == {name for name, status in expected.items() if status == "accepted"}
    assert (out / "label_map.txt").read_text().splitlines() == sorted(LABELS)
    for source_id, e in by_id.items():
        label = source_id.split("/")[0]
        assert e["image/class/text"].decode() == label
        assert e["image/class/label"] == sorted(LABELS).index(label)
        assert e["image/md5"].decode() == hashlib.md5((root / source_id).read_bytes()).hexdigest()
        assert (e["image/height"], e["image/width"], e["image/channels"], e["image/format"]) == (32, 32, 3, b"jpeg")
        assert tf.io.decode_jpeg(e["image/encoded"]).shape == (32, 32, 3)


def test_each_label_keeps_the_split_proportions(folder_run):
    _, out, expected = folder_run
    accepted = collections.Counter(name.split("/")[0] for name, s in expected.items() if s == "accepted")
    for split, _share in (("train", 0.7), ("eval", 0.3)):
        got = collections.Counter(e["image/class/text"].decode() for e in read_examples(out, split))
        # per label: train gets round(0.7 n), eval the rest
        want = {label: round(0.7 * n) if split == "train" else n - round(0.7 * n) for label, n in accepted.items()}
        assert got == want, split


def test_dead_letters_carry_the_file_bytes_and_the_label_report_warns(folder_run):
    root, out, _ = folder_run
    dead = {d["error_message"]: d for d in read_jsonl(f"{out}/dead_letters-*.jsonl")}
    assert len(dead) == 3
    for d in dead.values():
        source = {a["key"]: a["value"] for a in d["attributes"]}["image.source"]
        kept = base64.b64decode(d["payload_bytes"]) if d["payload_bytes"] else d["payload_string"].encode()
        assert kept == Path(source).read_bytes()  # once: as text when the file is text, else base64
        assert d["pipeline"] == "image_ingest" and d["step"] == "ProcessImages"
    report = json.loads((out / "label_report.json").read_text())
    assert report["labels"]["stripes"]["accepted"] == 3 and report["labels"]["circle"]["accepted"] == 10
    assert [w for w in report["warnings"] if "'stripes' has 3 images against 10 for 'circle'" in w]


def test_reader_helper_trains_a_keras_model(folder_run):
    _, out, _ = folder_run
    tf.keras.utils.set_random_seed(0)
    train = read_image_dataset(f"{out}/train/images-*.tfrecord.gz", batch_size=8, seed=1)
    images, labels = next(iter(train))
    assert images.shape[1:] == (32, 32, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    model = tf.keras.Sequential(
        [
            tf.keras.Input((32, 32, 3)),
            tf.keras.layers.Conv2D(8, 3, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(len(LABELS), activation="softmax"),
        ]
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    history = model.fit(train, epochs=12, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_label_map_is_reused_and_unknown_labels_dead_lettered(folder_run, tmp_path):
    root, _, _ = folder_run
    label_map = tmp_path / "labels.txt"
    label_map.write_text("square\ncircle\n")
    out = tmp_path / "out"
    flags = ("--dedup_by", "pixels", "--exif_orientation", "ignore")
    run_pipeline("--input_dir", str(root), "--output_dir", str(out), "--label_map", str(label_map), *flags)
    status = {row["source_id"]: row["status"] for row in read_jsonl(f"{out}/manifest-*.jsonl")}
    assert (status["square/resaved-001.png"], status["square/turned-001.png"]) == ("duplicate", "accepted")
    examples = read_examples(out, "train") + read_examples(out, "eval")
    assert {(e["image/class/text"], e["image/class/label"]) for e in examples} == {(b"square", 0), (b"circle", 1)}
    unknown = [d for d in read_jsonl(f"{out}/dead_letters-*.jsonl") if d["reason"] == "unknown_label"]
    assert len(unknown) == 3 and all(d["step"] == "AssignLabelIds" for d in unknown)
    assert not (out / "label_map.txt").exists()  # the given map stays the one source of ids
    with pytest.raises(Exception, match="label 'stripes'"):
        run_pipeline(
            "--input_dir",
            str(root),
            "--output_dir",
            str(tmp_path / "out2"),
            "--label_map",
            str(label_map),
            "--unknown_label",
            "fail",
        )


def test_manifest_input_with_a_cap_and_a_missing_file(folder_run, tmp_path):
    root, _, _ = folder_run
    lines = ["uri,label"] + [
        f"{root}/circle/{n:03d}{ext}," + "circle"
        for n, ext in zip(range(6), (".jpg", ".png", ".gif", ".bmp", ".webp", ".jpg"), strict=True)
    ]
    lines += [f"{root}/square/000.jpg,square", "nowhere/missing.png,square", '{"uri": broken']
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run_pipeline("--input_manifest", str(manifest), "--output_dir", str(out), "--max_per_label", "4")
    rows = read_jsonl(f"{out}/manifest-*.jsonl")
    assert len(rows) == len(lines) - 1  # every line but the header
    statuses = collections.Counter((row["label"], row["status"]) for row in rows)
    assert statuses == {
        ("circle", "accepted"): 4,
        ("circle", "over_cap"): 2,
        ("square", "accepted"): 1,
        ("square", "rejected"): 1,
        (None, "rejected"): 1,
    }
    reasons = sorted(row["reason"] for row in rows if row["status"] == "rejected")
    assert reasons == ["ToImageInputs: bad_manifest_line", "ToImageInputs: unreadable_file"]
