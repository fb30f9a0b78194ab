"""Builds the scoring pipeline's bundled sample: a small CNN trained on generated shapes (circle, square,
stripes), exported as a SavedModel whose serving signature takes encoded image bytes and decodes them
in the graph (as a serving input function does), plus requests to score:

    python -m pipelines.samples.score_model pipelines/samples/score
"""

import base64
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.samples.images import LABELS, draw

IMAGE_SIZE = 64


def training_data(count, seed, size=IMAGE_SIZE):
    """(images float32 [count, size, size, 3] in [0, 1], labels int) of random shapes."""
    rng = random.Random(seed)
    labels = [i % len(LABELS) for i in range(count)]
    images = [np.asarray(draw(LABELS[label], rng, size, size), dtype=np.float32) / 255.0 for label in labels]
    return np.stack(images), np.array(labels)


def build_classifier(size=IMAGE_SIZE, classes=None):
    return tf.keras.Sequential(
        [
            tf.keras.Input((size, size, 3), name="image"),
            tf.keras.layers.Conv2D(16, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(32, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(classes or len(LABELS), activation="softmax"),
        ]
    )


def train_classifier(epochs=8, count=600, seed=0):
    tf.keras.utils.set_random_seed(seed)
    images, labels = training_data(count, seed)
    model = build_classifier()
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    return model


class ImageBytesServing(tf.Module):
    """The serving signature: encoded image bytes [batch] -> {"scores": [batch, classes]}; decoding and
    resizing (bilinear, antialiased) happen in the graph."""

    def __init__(self, model, size=IMAGE_SIZE):
        super().__init__()
        self.model, self.size = model, size

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = tf.image.resize(tf.cast(image, tf.float32), (self.size, self.size), antialias=True)
            return image / 255.0

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([self.size, self.size, 3]))
        return {"scores": self.model(images, training=False)}


def export_serving(model, path):
    module = ImageBytesServing(model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def encoded_image(label, rng, fmt="JPEG"):
    buffer = io.BytesIO()
    draw(label, rng, rng.randrange(48, 120), rng.randrange(48, 120)).save(buffer, fmt)
    return buffer.getvalue()


def sample_requests(count=30, seed=3):
    """JSON request lines: images of known labels (two of them sent twice under other ids), then
    malformed requests. Returns (lines, {request id: true label})."""
    rng = random.Random(seed)
    lines, truth = [], {}
    for n in range(count):
        label = LABELS[n % len(LABELS)]
        data = encoded_image(label, rng, "JPEG" if n % 2 else "PNG")
        request_id = f"req-{n:03d}"
        lines.append(json.dumps({"id": request_id, "image_bytes": {"b64": base64.b64encode(data).decode()}}))
        truth[request_id] = label
        if n in (4, 11):  # the same image again, from another caller
            lines.append(
                json.dumps({"id": f"{request_id}-again", "image_bytes": {"b64": base64.b64encode(data).decode()}})
            )
            truth[f"{request_id}-again"] = label
    lines += [
        '{"id": "broken", "image_bytes": ',
        json.dumps({"image_bytes": {"b64": base64.b64encode(encoded_image("circle", rng)).decode()}}),
        json.dumps({"id": "bad-base64", "image_bytes": {"b64": "***"}}),
        json.dumps({"id": "not-an-image", "image_bytes": {"b64": base64.b64encode(b"hello, world").decode()}}),
    ]
    return lines, truth


def write_sample(root):
    root = Path(root)
    export_serving(train_classifier(), root / "model" / "1")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    lines, _ = sample_requests()
    (root / "requests.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_sample(sys.argv[1])
