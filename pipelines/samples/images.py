"""Generates labelled sample images (circles, squares, stripes in random colours, sizes and formats)
with what a correct ingestion must make of them. The bundled folder `samples/images` is its output:

    python -m pipelines.samples.images pipelines/samples/images
"""

import hashlib
import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

LABELS = ("circle", "square", "stripes")
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


def draw(label, rng, width, height):
    background = tuple(rng.randrange(0, 80) for _ in range(3))
    colour = tuple(rng.randrange(150, 256) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    canvas = ImageDraw.Draw(image)
    size = rng.uniform(0.4, 0.8) * min(width, height)
    x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
    if label == "circle":
        canvas.ellipse((x, y, x + size, y + size), fill=colour)
    elif label == "square":
        canvas.rectangle((x, y, x + size, y + size), fill=colour)
    else:
        step = max(4, int(size / 4))
        for top in range(rng.randrange(step), height, 2 * step):
            canvas.rectangle((0, top, width, top + step - 1), fill=colour)
    return image


def image_bytes(label, rng, fmt=None, width=None, height=None):
    fmt = fmt or rng.choice(FORMATS)
    image = draw(label, rng, width or rng.randrange(48, 160), height or rng.randrange(48, 160))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), fmt


def write_sample(root, per_label=(12, 10, 3), seed=7):
    """Writes <root>/<label>/<n>.<ext> plus two duplicates, a truncated JPEG, a text file and a PNG with
    no label folder. Returns {relative path: expected status} with status one of accepted, duplicate,
    and a rejection reason."""
    rng, root, expected = random.Random(seed), Path(root), {}
    for label, count in zip(LABELS, per_label, strict=True):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            data, fmt = image_bytes(label, rng, FORMATS[n % len(FORMATS)])
            name = f"{label}/{n:03d}.{EXTENSIONS[fmt]}"
            (root / name).write_bytes(data)
            expected[name] = "accepted"
    # Copies under names sorting after the originals, so the originals are the ones kept.
    for original in ("circle/000.jpg", "square/001.png"):
        copy = original.replace("/0", "/copy-of-0")
        (root / copy).write_bytes((root / original).read_bytes())
        expected[copy] = "duplicate"
    jpeg, _ = image_bytes("stripes", rng, "JPEG", 120, 90)
    (root / "stripes/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    expected["stripes/truncated.jpg"] = "corrupt_image"
    (root / "square/notes.txt").write_text("not an image\n")
    expected["square/notes.txt"] = "not_an_image"
    png, _ = image_bytes("circle", rng, "PNG")
    (root / "stray.png").write_bytes(png)
    expected["stray.png"] = "missing_label"
    return expected


def md5_of(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


if __name__ == "__main__":
    write_sample(sys.argv[1])
