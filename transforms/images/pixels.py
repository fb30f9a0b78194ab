"""Image payloads and pixels, without Beam: reading the TensorFlow Serving JSON convention, validating
bytes before decoding, decoding with a pixel cap (16-bit to 8-bit, EXIF orientation), resizing, the
content keys for deduplication, and the `tf.train.Example` written per image.

Everything here raises `RecordError` (a dead letter with a reason) on bad input, never crashes a bundle.
"""

import base64
import binascii
import hashlib
import io
import json
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from transforms.io.deadletter import RecordError
from transforms.io.sources import ImageInput

# Magic numbers, checked before any decoder sees the bytes. Pillow's format names for `Image.open`.
FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
RESIZE_METHODS = ("pad", "crop", "stretch")
ENCODINGS = ("jpeg", "png", "raw")
EXIF_ORIENTATIONS = ("apply", "ignore")  # apply: as a person sees the photo; ignore: as the pixels are stored
DEDUP_KEYS = ("bytes", "pixels")  # MD5 of the source bytes, or pixel_key of the decoded image


class ProcessedImage(NamedTuple):
    source_id: str
    source: str
    label: str
    md5: str  # of the source bytes, hex
    source_format: str
    source_height: int
    source_width: int
    encoded: bytes  # the resized image, in `encoding`
    encoding: str
    height: int
    width: int
    dedup_key: str  # what deduplication compares: md5, or pixel_key with dedup_by="pixels"


def decode_base64(text, field):
    """Standard or URL-safe base64, with or without padding; whitespace and newlines are ignored."""
    if not isinstance(text, str):
        raise RecordError("bad_base64", f"field '{field}' must be a base64 string, got {type(text).__name__}")
    compact = "".join(text.split()).replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except binascii.Error as e:
        raise RecordError("bad_base64", f"field '{field}' is not valid base64: {e}") from None


def _instance_bytes(instance):
    if isinstance(instance.get("image_bytes"), dict) and "b64" in instance["image_bytes"]:
        return decode_base64(instance["image_bytes"]["b64"], "image_bytes.b64")
    if "b64" in instance:
        return decode_base64(instance["b64"], "b64")
    raise RecordError(
        "missing_field",
        'no image in the JSON: expected {"image_bytes": {"b64": ...}} or '
        '{"b64": ...}, or raw image bytes as the message body',
    )


def inputs_from_message(data, attributes, message_id):
    """The images one Pub/Sub message carries, as (instance payload, ImageInput or RecordError) pairs.

    The body is JSON (`{"image_bytes": {"b64": ...}, "label": ..., "id": ...}`, `{"b64": ...}` or
    `{"instances": [...]}` of those) or raw image bytes. `label` and `id` come from the instance, else
    from the message attributes; the id defaults to the message id (`/<index>` within `instances`).
    """
    attributes = attributes or {}
    source = f"pubsub:{message_id}"
    try:
        body = json.loads(data) if data.lstrip()[:1] == b"{" else None
    except ValueError as e:
        return [(data, RecordError("invalid_json", f"the message body starts like JSON but is not: {e}"))]
    if body is None:  # raw image bytes
        return [(data, ImageInput(attributes.get("id") or message_id, source, attributes.get("label"), data))]
    if "instances" in body:
        if not isinstance(body["instances"], list):
            return [(data, RecordError("missing_field", "'instances' must be a list of image objects"))]
        instances = [(inst, f"{message_id}/{i}") for i, inst in enumerate(body["instances"])]
    else:
        instances = [(body, message_id)]
    pairs = []
    for instance, default_id in instances:
        payload = json.dumps(instance).encode("utf-8")
        try:
            if not isinstance(instance, dict):
                raise RecordError("missing_field", f"an instance must be a JSON object, got {type(instance).__name__}")
            pairs.append(
                (
                    payload,
                    ImageInput(
                        str(instance.get("id") or attributes.get("id") or default_id),
                        source,
                        instance.get("label") or attributes.get("label"),
                        _instance_bytes(instance),
                    ),
                )
            )
        except RecordError as e:
            pairs.append((payload, e))
    return pairs


def sniff_format(data):
    """The image format from the leading bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_image_header(data, max_bytes, max_pixels):
    """The format of an image that is within the size cap and declares at most `max_pixels` pixels,
    read from its header without decoding it (for models that decode the bytes themselves)."""
    return _read_image(data, max_bytes, max_pixels, decode=False)[1]


def decode_image(data, max_bytes, max_pixels, exif_orientation="apply"):
    """Validates then decodes to an RGB `PIL.Image` (GIF: first frame). Returns (image, format).

    The size cap is checked on the bytes and the pixel cap on the header, before decoding, so a
    decompression bomb (a small file declaring huge dimensions) is rejected without being expanded.
    `exif_orientation="apply"` turns the pixels as the EXIF Orientation tag says (as a person sees the
    photo); "ignore" keeps them as stored. 16-bit images are scaled to 8 bits (`to_rgb`).
    """
    return _read_image(data, max_bytes, max_pixels, decode=True, exif_orientation=exif_orientation)


def to_rgb(image):
    """The image as 8-bit RGB. 16-bit grayscale (Pillow modes `I;16`, `I;16B`, `I;16L`, and `I`, clipped to
    0-65535) keeps the high byte, v >> 8: what Pillow already does to 16-bit RGB(A) PNGs and what
    TensorFlow's `decode_png`/`decode_image` give as uint8, so serving graphs see the same pixels."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        high = np.clip(np.asarray(image), 0, 65535) >> 8
        image = Image.fromarray(high.astype(np.uint8))
    return image.convert("RGB")


def _orient(image, fmt):
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as e:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds of errors on bad metadata
        raise RecordError(
            "bad_exif",
            f"the {fmt}'s EXIF metadata cannot be read ({type(e).__name__}: {e}); fix the file, or pass "
            f"--exif_orientation ignore to take its pixels as stored",
        ) from None


def _read_image(data, max_bytes, max_pixels, decode, exif_orientation="apply"):
    """(RGB image or None, format): the checks of both callers, then the decoding when `decode`."""
    if not data:
        raise RecordError("empty", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise RecordError("too_large", f"the image is over --max_image_bytes={max_bytes} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise RecordError("not_an_image", f"not a JPEG, PNG, GIF, BMP or WebP image (starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data), formats=[FORMATS[fmt]]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise RecordError(
                    "too_many_pixels",
                    f"the {fmt} declares {width}x{height} pixels, over --max_image_pixels={max_pixels}; not decoded",
                )
            if not decode:
                return None, fmt
            image.seek(0)
            image.load()  # decodes: truncated data raises here
            if exif_orientation == "apply":
                _orient(image, fmt)
            return to_rgb(image), fmt
    except RecordError:
        raise
    except Image.DecompressionBombError as e:
        raise RecordError("too_many_pixels", f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for corrupt or truncated files
        raise RecordError("corrupt_image", f"the {fmt} image cannot be decoded: {e}") from None


def resize(image, width, height, method):
    """Bilinear resize to width x height. `stretch` ignores the aspect ratio; `crop` keeps it and cuts
    the centre; `pad` keeps it and fills the borders with black. Pillow's bilinear filter widens with the
    scale when shrinking (antialiasing), like `tf.image.resize(..., "bilinear", antialias=True)`."""
    if method == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    if method == "crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
    return ImageOps.pad(image, (width, height), Image.Resampling.BILINEAR, color=(0, 0, 0))


def pixel_key(image):
    """MD5 (hex) of the header `<mode> <width> <height>\n` (ASCII) followed by the pixels, row-major: the
    same for every file that decodes to the same pixels, whatever its format, compression or metadata."""
    key = hashlib.md5(b"%s %d %d\n" % (image.mode.encode(), image.width, image.height))
    key.update(image.tobytes())
    return key.hexdigest()


def encode(image, encoding, jpeg_quality):
    if encoding == "raw":  # height x width x 3 uint8, row-major
        return image.tobytes()
    buffer = io.BytesIO()
    if encoding == "jpeg":
        image.save(buffer, "JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def process_image(
    item,
    width,
    height,
    method,
    encoding,
    jpeg_quality,
    max_bytes,
    max_pixels,
    exif_orientation="apply",
    dedup_by="bytes",
):
    """ImageInput -> ProcessedImage (label still a string). The pixel key is of the decoded image (RGB,
    oriented per `exif_orientation`), before the resize."""
    if not item.label or not isinstance(item.label, str):
        raise RecordError(
            "missing_label",
            f"image '{item.source_id}' has no label: put it in a "
            f"'label' field, a 'label' attribute or a <label>/ folder",
        )
    image, fmt = decode_image(item.data, max_bytes, max_pixels, exif_orientation)
    resized = resize(image, width, height, method)
    md5 = hashlib.md5(item.data).hexdigest()
    return ProcessedImage(
        item.source_id,
        item.source,
        item.label,
        md5,
        fmt,
        image.height,
        image.width,
        encode(resized, encoding, jpeg_quality),
        encoding,
        height,
        width,
        pixel_key(image) if dedup_by == "pixels" else md5,
    )


def to_example(image, label_id):
    """The `tf.train.Example` of one image, with the keys TF's image datasets use."""

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": bytes_feature(image.encoded),
                "image/format": bytes_feature(image.encoding.encode()),
                "image/height": int_feature(image.height),
                "image/width": int_feature(image.width),
                "image/channels": int_feature(3),
                "image/class/label": int_feature(label_id),
                "image/class/text": bytes_feature(image.label.encode("utf-8")),
                "image/source_id": bytes_feature(image.source_id.encode("utf-8")),
                "image/md5": bytes_feature(image.md5.encode()),
            }
        )
    ).SerializeToString()


def parse_image_size(text):
    """'224x224' or '224' -> (width, height)."""
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        width = height = 0
    if len(parts) > 2 or width <= 0 or height <= 0:
        raise ValueError(f"--image_size must be WIDTHxHEIGHT or one size for both, like 224x224 or 299; got '{text}'")
    return width, height


def parse_splits(text):
    """'train=0.7,eval=0.3' -> [("train", 0.7), ("eval", 0.3)]; the fractions must sum to 1."""
    splits = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not name.strip().isidentifier() or not 0 < fraction <= 1:
            raise ValueError(
                f"--splits: '{part}' must be NAME=FRACTION with 0 < FRACTION <= 1, like train=0.7,eval=0.3"
            )
        splits.append((name.strip(), fraction))
    names = [name for name, _ in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"--splits names a split twice: {text}")
    if abs(sum(f for _, f in splits) - 1) > 1e-6:
        raise ValueError(f"--splits fractions must sum to 1, got {sum(f for _, f in splits):g} in '{text}'")
    return splits


def parse_label_map(text, path):
    """A label map file: one label per line, its id the line's position from 0 (blank lines ignored at
    the end only, so ids stay contiguous)."""
    labels = text.rstrip("\n").split("\n") if text.strip() else []
    for number, label in enumerate(labels, start=1):
        if not label.strip():
            raise ValueError(f"{path}:{number}: blank label; ids must be contiguous, one label per line")
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ValueError(f"{path}: labels listed twice: {', '.join(duplicated)}")
    if not labels:
        raise ValueError(f"{path}: the label map is empty")
    return labels
