"""Deduplication by source bytes or by decoded pixels, through ProcessImages and DeduplicateByContent in a
TestPipeline (batch, and streaming state for one setting): lossless re-encodes, metadata edits, a JPEG
saved as PNG and an EXIF-turned copy against a lossy re-encode, with the survivors and duplicates worked
out by hand."""

import hashlib
import io

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, PngImagePlugin

from tests.test_images import encoded
from transforms.images.ingest import MANIFEST_TAG, DeduplicateByContent, ProcessImages
from transforms.io.deadletter import DEAD_LETTER_TAG
from transforms.io.sources import ImageInput

PHOTO = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
OTHER = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _inputs():
    tagged = PngImagePlugin.PngInfo()
    tagged.add_text("Software", "another editor")
    a = encoded(PHOTO, "PNG", compress_level=9)
    jpeg = encoded(OTHER, "JPEG", quality=85)
    decoded_jpeg = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    files = {
        "a.png": a,
        "b-copy.png": a,  # the same bytes
        "c-resaved.png": encoded(PHOTO, "PNG", compress_level=1, pnginfo=tagged),  # same pixels, other bytes
        "d-turned.png": encoded(np.rot90(PHOTO, -1), "PNG", exif_orientation=8),  # shown upright, it is PHOTO
        "e.jpg": jpeg,
        "f-as-png.png": encoded(decoded_jpeg, "PNG"),  # the JPEG's decoded pixels, losslessly
        "g-lossy.jpg": encoded(decoded_jpeg, "JPEG", quality=85),  # a second lossy pass: other pixels
    }
    assert len(set(files.values())) == 6  # only b is a byte copy
    return [ImageInput(name, name, "cat", data) for name, data in files.items()]


# (--exif_orientation, --dedup_by) -> {duplicate: the source id kept}, worked out from how _inputs made each file
EXPECTED = {
    ("apply", "bytes"): {"b-copy.png": "a.png"},
    ("apply", "pixels"): {
        "b-copy.png": "a.png",
        "c-resaved.png": "a.png",
        "d-turned.png": "a.png",
        "f-as-png.png": "e.jpg",
    },
    ("ignore", "pixels"): {"b-copy.png": "a.png", "c-resaved.png": "a.png", "f-as-png.png": "e.jpg"},
}
GROUPS = {"a": "A", "b": "A", "c": "A", "d": "A", "e": "E", "f": "E", "g": "G"}  # first letter -> same pixels, apply


def test_duplicates_by_bytes_or_by_pixels():
    inputs = _inputs()
    md5s = {item.source_id: hashlib.md5(item.data).hexdigest() for item in inputs}  # a duplicate's row: its own bytes
    with TestPipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as pipeline:
        created = pipeline | beam.Create(inputs)
        for (exif_orientation, dedup_by), duplicates in EXPECTED.items():
            name = f"{exif_orientation}-{dedup_by}"
            settings = dict(width=8, height=8, method="pad", encoding="png", jpeg_quality=90, max_bytes=1 << 20)
            settings.update(max_pixels=1 << 16, exif_orientation=exif_orientation, dedup_by=dedup_by)
            processed = created | f"Process[{name}]" >> beam.ParDo(
                ProcessImages("image_ingest", settings)
            ).with_outputs(DEAD_LETTER_TAG, main="images")
            unique = processed.images | f"Dedup[{name}]" >> DeduplicateByContent(None, "image_ingest")
            survivors = sorted({item.source_id for item in inputs} - set(duplicates))
            assert_that(
                unique.images | f"Ids[{name}]" >> beam.Map(lambda i: i.source_id),
                equal_to(survivors),
                label=f"Kept[{name}]",
            )
            assert_that(
                unique[MANIFEST_TAG]
                | f"Pairs[{name}]" >> beam.Map(lambda row: (row["source_id"], row["duplicate_of"], row["md5"])),
                equal_to([(dup, kept, md5s[dup]) for dup, kept in duplicates.items()]),
                label=f"Duplicates[{name}]",
            )
            assert_that(processed[DEAD_LETTER_TAG], equal_to([]), label=f"NoDeadLetters[{name}]")
            if dedup_by == "pixels" and exif_orientation == "apply":
                # streaming keeps whichever copy comes first: one per group, the others duplicates of their own group
                stream = processed.images | "DedupStreaming" >> DeduplicateByContent(3600, "image_ingest")
                assert_that(
                    stream.images | "KeptGroups" >> beam.Map(lambda i: GROUPS[i.source_id[0]]),
                    equal_to(["A", "E", "G"]),
                    label="KeptStreaming",
                )
                assert_that(
                    stream[MANIFEST_TAG]
                    | "DuplicateGroups"
                    >> beam.Map(lambda row: (GROUPS[row["source_id"][0]], GROUPS[row["duplicate_of"][0]])),
                    equal_to([("A", "A")] * 3 + [("E", "E")]),
                    label="DuplicatesStreaming",
                )
