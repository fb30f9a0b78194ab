"""TensorBoard event files of feature statistics per split (scalars and histograms).

Written with TensorFlow's own summary writer (`tf.summary.create_file_writer`, local or gs://): each worker
writes its own `events.out.tfevents.*` file into the run directory, and TensorBoard merges the files of a
directory. TensorFlow is imported on the workers only, in `process()`.
"""

import apache_beam as beam

from transforms.io.files import summary_metadata


class WriteFeatureSummaries(beam.DoFn):
    """A split's statistics artifact -> event files in `<logdir>/<split>` (so TensorBoard draws train,
    eval, ... as runs side by side): per feature the scalars `<feature>/count`, `missing_rate`, and for
    numbers `mean`, `std`, `min`, `max`, `p50`, `p99` (`distinct` for strings), and the histogram
    `<feature>/histogram` with the artifact's own bins, all at step 0."""

    def __init__(self, logdir):
        self._logdir = logdir

    def process(self, artifact):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        scalar = summary_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
        histogram = summary_metadata("histograms", summary_pb2.DATA_CLASS_TENSOR)
        writer = tf.summary.create_file_writer(f"{self._logdir.rstrip('/')}/{artifact['split']}")
        with writer.as_default():
            for name, f in sorted(artifact["features"].items()):
                scalars = {"count": f["count"], "missing_rate": f["missing"] / f["count"] if f["count"] else None}
                if f["type"] == "numeric":
                    scalars.update({k: f[k] for k in ("mean", "std", "min", "max")})
                    scalars.update({"p50": f["quantiles"].get("0.5"), "p99": f["quantiles"].get("0.99")})
                    if f["histogram"]:
                        # `tf.summary.histogram` would re-bin raw values; the artifact's bins are written as
                        # TensorBoard's histogram tensor: one (left edge, right edge, count) row per bin.
                        bins = [[b["low"], b["high"], b["count"]] for b in f["histogram"]]
                        tf.summary.write(f"{name}/histogram", tf.constant(bins, tf.float64), 0, metadata=histogram)
                else:
                    scalars["distinct"] = f["distinct"]
                for k, v in scalars.items():
                    if v is not None:
                        tf.summary.write(f"{name}/{k}", tf.constant(v, tf.float32), 0, metadata=scalar)
        writer.close()
