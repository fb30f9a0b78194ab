"""Reading what the image-ingestion pipeline wrote, for training:

from transforms.images.dataset import read_image_dataset
train = read_image_dataset("gs://B/datasets/flowers-v1/train/images-*.tfrecord.gz", batch_size=64)
model.fit(train, epochs=5)
"""

import tensorflow as tf

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _files(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}: point it at <output_dir>/<split>/images-*")
    return files, ("GZIP" if files[0].endswith(".gz") else "")


def _decode(example):
    """(image float32 in [0, 1], height x width x 3; label int64). JPEG/PNG are decoded; raw bytes reshaped."""
    parsed = tf.io.parse_single_example(example, FEATURES)
    shape = tf.stack([parsed["image/height"], parsed["image/width"], 3])
    image = tf.cond(
        tf.equal(parsed["image/format"], "raw"),
        lambda: tf.reshape(tf.io.decode_raw(parsed["image/encoded"], tf.uint8), shape),
        lambda: tf.io.decode_image(parsed["image/encoded"], channels=3, expand_animations=False),
    )
    return tf.image.convert_image_dtype(image, tf.float32), parsed["image/class/label"]


def read_image_dataset(pattern, batch_size=32, shuffle_buffer=1000, seed=None, repeat=False):
    """A `tf.data.Dataset` of batches (images [batch, height, width, 3] float32 in [0, 1], labels [batch]
    int64) from the TFRecords matching `pattern` (local or gs://), shuffled across files and records.
    All images of one pipeline run share one size (--image_size), read here from the first record."""
    files, compression = _files(pattern)
    first = next(iter(tf.data.TFRecordDataset(files[:1], compression_type=compression)))
    parsed = tf.io.parse_single_example(first, FEATURES)
    height, width = int(parsed["image/height"]), int(parsed["image/width"])
    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None,
    )
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        dataset = dataset.repeat()
    return (
        dataset.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
        .map(lambda image, label: (tf.ensure_shape(image, [height, width, 3]), label))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
