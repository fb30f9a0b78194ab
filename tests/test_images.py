"""The image functions without Beam: payload formats, validation before decoding, 16-bit scaling and EXIF
orientation against numpy, pixel keys, resizing against TensorFlow, the split assignment."""

import base64
import collections
import hashlib
import io
import json
import random
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from pipelines.samples.images import FORMATS, image_bytes
from transforms.core.splits import assign_splits, split_fraction, streaming_split
from transforms.images.pixels import (
    decode_base64,
    decode_image,
    inputs_from_message,
    parse_image_size,
    parse_label_map,
    parse_splits,
    pixel_key,
    process_image,
    resize,
    sniff_format,
    to_rgb,
)
from transforms.io.deadletter import RecordError
from transforms.io.sources import ImageInput

PNG, _ = image_bytes("circle", random.Random(1), "PNG", 64, 48)


@pytest.mark.parametrize(
    "encode",
    [
        base64.b64encode,
        base64.urlsafe_b64encode,
        lambda b: base64.b64encode(b).rstrip(b"="),
        lambda b: base64.urlsafe_b64encode(b).rstrip(b"="),
        base64.encodebytes,  # MIME style, with newlines every 76 characters
    ],
)
def test_base64_variants_decode_to_the_same_bytes(encode):
    data = bytes(range(256)) * 3 + b"\xfb\xff"  # bytes whose encodings differ between the alphabets
    assert decode_base64(encode(data).decode("ascii"), "b64") == data


@pytest.mark.parametrize("text", ["abc$", "a", 42])
def test_bad_base64_is_a_record_error(text):
    with pytest.raises(RecordError) as e:
        decode_base64(text, "image_bytes.b64")
    assert e.value.reason == "bad_base64" and "image_bytes.b64" in str(e.value)


def test_message_forms():
    b64 = base64.b64encode(PNG).decode()
    single = inputs_from_message(
        json.dumps({"image_bytes": {"b64": b64}, "label": "cat", "id": "a1"}).encode(), {}, "m1"
    )
    assert [item for _, item in single] == [ImageInput("a1", "pubsub:m1", "cat", PNG)]
    bare = inputs_from_message(json.dumps({"b64": b64}).encode(), {"label": "dog"}, "m2")
    assert [item for _, item in bare] == [ImageInput("m2", "pubsub:m2", "dog", PNG)]
    raw = inputs_from_message(PNG, {"label": "cat", "id": "r1"}, "m3")
    assert [item for _, item in raw] == [ImageInput("r1", "pubsub:m3", "cat", PNG)]
    batch = inputs_from_message(
        json.dumps(
            {
                "instances": [
                    {"image_bytes": {"b64": b64}, "label": "cat"},
                    {"image_bytes": {"b64": "!!"}},
                    "text",
                    {"label": "x"},
                ]
            }
        ).encode(),
        {"label": "dog"},
        "m4",
    )
    assert batch[0][1] == ImageInput("m4/0", "pubsub:m4", "cat", PNG)
    assert [item.reason for _, item in batch[1:]] == ["bad_base64", "missing_field", "missing_field"]
    assert json.loads(batch[1][0]) == {"image_bytes": {"b64": "!!"}}  # the instance is the dead letter's payload
    [(payload, error)] = inputs_from_message(b'{"image_bytes": ', {}, "m5")
    assert error.reason == "invalid_json" and payload == b'{"image_bytes": '


def test_formats_are_sniffed_from_the_bytes():
    rng = random.Random(2)
    for fmt in FORMATS:
        data, _ = image_bytes("square", rng, fmt, 30, 20)
        assert sniff_format(data) == fmt.lower()
        image, found = decode_image(data, 10_000, 1_000)
        assert found == fmt.lower() and image.size == (30, 20) and image.mode == "RGB"
    assert sniff_format(b"%PDF-1.7") is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"x" * 101, "too_large"),
        (b"<html>not an image</html>", "not_an_image"),
        (PNG[: len(PNG) // 2], "corrupt_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt_image"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(RecordError) as e:
        decode_image(data, max_bytes=100 if reason == "too_large" else 1_000_000, max_pixels=10_000)
    assert e.value.reason == reason


def test_decompression_bomb_is_rejected_from_the_header():
    buffer = io.BytesIO()
    Image.new("1", (9_000, 9_000)).save(buffer, "PNG")  # 81 Mpixel in a few KB
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(RecordError) as e:
        decode_image(buffer.getvalue(), max_bytes=1_000_000, max_pixels=40_000_000)
    assert e.value.reason == "too_many_pixels" and "9000x9000" in str(e.value)


def test_gif_first_frame_is_decoded():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    image, _ = decode_image(buffer.getvalue(), 10_000, 1_000)
    assert image.getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("source, target", [((160, 120), (224, 224)), ((300, 200), (64, 64)), ((97, 131), (50, 50))])
def test_stretch_matches_tf_image_resize_bilinear_antialiased_within_one_level(source, target):
    noise = np.random.default_rng(sum(source)).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    ours = np.asarray(resize(image, *target, "stretch"), dtype=np.float32)
    reference = tf.image.resize(noise[None].astype(np.float32), (target[1], target[0]), "bilinear", antialias=True)[0]
    assert ours.shape == (target[1], target[0], 3)
    assert np.max(np.abs(ours - reference.numpy())) <= 1.0  # uint8 rounding


def test_pad_keeps_the_aspect_ratio_with_black_borders():
    padded = np.asarray(resize(Image.new("RGB", (100, 50), (255, 255, 255)), 64, 64, "pad"))
    # 100x50 scales to 64x32, centred: rows 16..47 white, 0..15 and 48..63 black
    assert (padded[18:46] == 255).all() and (padded[:15] == 0).all() and (padded[49:] == 0).all()


def test_crop_keeps_the_centre():
    image = Image.new("RGB", (100, 50), (0, 0, 255))
    image.paste((255, 0, 0), (25, 0, 50, 50))  # red from x=25 to 49, blue from 50 to 74 of the centre square
    cropped = np.asarray(resize(image, 50, 50, "crop"))
    assert (cropped[:, :24] == (255, 0, 0)).all() and (cropped[:, 26:] == (0, 0, 255)).all()


def test_process_image_keeps_the_source_md5_and_requires_a_label():
    item = ImageInput("id1", "file", "cat", PNG)
    done = process_image(item, 32, 32, "pad", "png", 90, 1_000_000, 10_000)
    assert done.md5 == hashlib.md5(PNG).hexdigest() and (done.source_width, done.source_height) == (64, 48)
    assert Image.open(io.BytesIO(done.encoded)).size == (32, 32)
    raw = process_image(item, 20, 10, "stretch", "raw", 90, 1_000_000, 10_000)
    assert len(raw.encoded) == 20 * 10 * 3
    with pytest.raises(RecordError) as e:
        process_image(item._replace(label=None), 32, 32, "pad", "png", 90, 1_000_000, 10_000)
    assert e.value.reason == "missing_label"


def _md5s(n, seed):
    rng = random.Random(seed)
    return [hashlib.md5(rng.randbytes(16)).hexdigest() for _ in range(n)]


def test_splits_keep_the_proportions_per_label_and_do_not_depend_on_order():
    fractions = [("train", 0.7), ("eval", 0.2), ("test", 0.1)]
    md5s = _md5s(50, 3)
    splits = assign_splits(md5s, fractions)
    assert collections.Counter(splits.values()) == {"train": 35, "eval": 10, "test": 5}
    assert assign_splits(list(reversed(md5s)), fractions) == splits
    # the split follows the content-hash order: every train image sorts before every eval image
    assert max(split_fraction(m) for m, s in splits.items() if s == "train") < min(
        split_fraction(m) for m, s in splits.items() if s == "eval"
    )


def test_split_cap_and_stability_when_images_are_added():
    md5s = _md5s(40, 4)
    capped = assign_splits(md5s, [("train", 0.5), ("eval", 0.5)], cap=10)
    assert collections.Counter(capped.values()) == {"train": 5, "eval": 5, None: 30}
    before = assign_splits(md5s, [("train", 0.7), ("eval", 0.3)])
    after = assign_splits(md5s + _md5s(4, 5), [("train", 0.7), ("eval", 0.3)])
    assert sum(before[m] != after[m] for m in md5s) <= 4  # only images next to the boundary move


def test_streaming_split_is_stratified_in_expectation():
    counts = collections.Counter(streaming_split(m, [("train", 0.7), ("eval", 0.3)]) for m in _md5s(10_000, 6))
    assert 6_800 < counts["train"] < 7_200  # 0.7 ± 4.4 standard deviations


def test_flag_parsers_name_the_flag():
    assert parse_image_size("299") == (299, 299) and parse_image_size("320x240") == (320, 240)
    assert parse_splits("train=0.8,eval=0.1,test=0.1") == [("train", 0.8), ("eval", 0.1), ("test", 0.1)]
    for bad, call in [
        ("0x10", parse_image_size),
        ("a", parse_image_size),
        ("train=0.7,eval=0.2", parse_splits),
        ("train=1,train=0", parse_splits),
        ("x=y", parse_splits),
    ]:
        with pytest.raises(ValueError, match="--image_size|--splits"):
            call(bad)
    assert parse_label_map("cat\ndog\n", "m.txt") == ["cat", "dog"]
    with pytest.raises(ValueError, match="m.txt:2"):
        parse_label_map("cat\n\ndog\n", "m.txt")
    with pytest.raises(ValueError, match="twice: cat"):
        parse_label_map("cat\ndog\ncat", "m.txt")


def _png16(pixels):
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the channel count) written with zlib, not Pillow,
    which cannot write 16-bit colour."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


SIXTEEN_BIT = np.random.default_rng(16).integers(0, 65536, (5, 7, 4), dtype=np.uint16)
SIXTEEN_BIT[0, :4, :] = [[0, 0, 0, 0], [255, 256, 511, 512], [65279, 65280, 65534, 65535], [32767, 32768, 1, 2]]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_pngs_keep_the_high_byte(channels):
    pixels = SIXTEEN_BIT[..., :channels]
    data = _png16(pixels)
    image, fmt = decode_image(data, 10_000, 1_000)
    high = (pixels >> 8).astype(np.uint8)
    colour = np.repeat(high[..., :1], 3, axis=2) if channels <= 2 else high[..., :3]  # gray repeated, alpha dropped
    assert fmt == "png" and np.array_equal(np.asarray(image), colour)
    served = tf.io.decode_png(data, channels=3 if channels <= 2 else channels, dtype=tf.uint8).numpy()[..., :3]
    assert np.array_equal(np.asarray(image), served)  # what a TensorFlow serving graph decodes


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2")])
def test_16_bit_grayscale_modes_keep_the_high_byte(mode, dtype):
    gray = SIXTEEN_BIT[..., 0]
    image = Image.frombytes(mode, (7, 5), gray.astype(dtype).tobytes())
    assert image.mode == mode
    expected = np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(to_rgb(image)), expected)


def test_32_bit_grayscale_is_clipped_to_16_bits_then_keeps_the_high_byte():
    values = np.array([[-5, 0, 255, 256, 40_000, 65_535, 70_000]], dtype=np.int32)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb.shape == (1, 7, 3) and rgb[0, :, 0].tolist() == [0, 0, 0, 1, 156, 255, 255]  # 40000 // 256 = 156
    buffer = io.BytesIO()
    Image.fromarray(SIXTEEN_BIT[..., 0]).save(buffer, "PNG")  # Pillow's own 16-bit grayscale PNG
    image, _ = decode_image(buffer.getvalue(), 10_000, 1_000)
    assert np.array_equal(np.asarray(image)[..., 1], (SIXTEEN_BIT[..., 0] >> 8).astype(np.uint8))


STORED = np.random.default_rng(8).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # as the camera wrote it
GRADIENT = np.stack(np.broadcast_arrays(*np.ogrid[0:160:10, 0:240:10], 128), axis=2).astype(
    np.uint8
)  # smooth: JPEG-safe
# EXIF orientation -> the numpy turn that shows the photo upright (the EXIF 2.3 definitions)
TURNS = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


def encoded(pixels, fmt, exif_orientation=None, **save):
    """The pixels saved as fmt with Pillow's `save` options, and an EXIF Orientation tag when given."""
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        save["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_apply_turns_the_pixels_and_ignore_keeps_them(orientation):
    png = encoded(STORED, "PNG", orientation)
    applied, _ = decode_image(png, 10_000, 1_000, exif_orientation="apply")
    ignored, _ = decode_image(png, 10_000, 1_000, exif_orientation="ignore")
    assert np.array_equal(np.asarray(applied), TURNS[orientation](STORED))
    assert np.array_equal(np.asarray(ignored), STORED)
    jpeg = encoded(GRADIENT, "JPEG", orientation, quality=95)
    as_stored = np.asarray(decode_image(jpeg, 10_000, 1_000, exif_orientation="ignore")[0])
    assert np.abs(as_stored.astype(int) - GRADIENT).max() <= 8  # lossy, but the stored layout
    assert np.array_equal(np.asarray(decode_image(jpeg, 10_000, 1_000)[0]), TURNS[orientation](as_stored))


def test_unreadable_exif_is_a_dead_letter_only_when_applied():
    buffer = io.BytesIO()
    Image.fromarray(STORED).save(buffer, "PNG", exif=b"Exif\x00\x00not a TIFF header")
    with pytest.raises(RecordError) as e:
        decode_image(buffer.getvalue(), 10_000, 1_000)
    assert e.value.reason == "bad_exif" and "--exif_orientation ignore" in str(e.value)
    image, _ = decode_image(buffer.getvalue(), 10_000, 1_000, exif_orientation="ignore")
    assert np.array_equal(np.asarray(image), STORED)


def test_pixel_key_is_the_md5_of_size_and_rgb_pixels_whatever_the_encoding():
    tagged = PngImagePlugin.PngInfo()
    tagged.add_text("Comment", "re-encoded")
    png, resaved = encoded(STORED, "PNG", compress_level=9), encoded(STORED, "PNG", compress_level=1, pnginfo=tagged)
    assert png != resaved
    key = hashlib.md5(b"RGB 24 16\n" + STORED.tobytes()).hexdigest()  # width 24, height 16
    assert pixel_key(decode_image(png, 10_000, 1_000)[0]) == pixel_key(decode_image(resaved, 10_000, 1_000)[0]) == key
    jpeg = encoded(STORED, "JPEG", quality=90)
    decoded = np.asarray(decode_image(jpeg, 10_000, 1_000)[0])
    as_png = encoded(decoded, "PNG")
    assert pixel_key(decode_image(as_png, 10_000, 1_000)[0]) == pixel_key(decode_image(jpeg, 10_000, 1_000)[0])
    lossy = encoded(decoded, "JPEG", quality=90)  # a second lossy pass changes pixels
    assert pixel_key(decode_image(lossy, 10_000, 1_000)[0]) != pixel_key(decode_image(jpeg, 10_000, 1_000)[0])


def test_process_image_dedup_key_follows_dedup_by():
    item = ImageInput("id1", "file", "cat", encoded(STORED, "PNG", 6))
    by_bytes = process_image(item, 8, 8, "pad", "png", 90, 1_000_000, 10_000)
    assert by_bytes.dedup_key == by_bytes.md5 == hashlib.md5(item.data).hexdigest()
    upright = np.rot90(STORED, -1)  # orientation 6, applied: 16 wide, 24 high
    by_pixels = process_image(item, 8, 8, "pad", "png", 90, 1_000_000, 10_000, dedup_by="pixels")
    assert by_pixels.dedup_key == hashlib.md5(b"RGB 16 24\n" + upright.tobytes()).hexdigest()
    assert (by_pixels.source_width, by_pixels.source_height) == (16, 24)
    stored = process_image(item, 8, 8, "pad", "png", 90, 1_000_000, 10_000, "ignore", "pixels")
    assert stored.dedup_key == hashlib.md5(b"RGB 24 16\n" + STORED.tobytes()).hexdigest()
