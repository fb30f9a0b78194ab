"""TensorBoard event files of feature statistics per split (scalars and histograms).

Each worker writes its own `events.out.tfevents.*` file into the run directory; TensorBoard merges the
files of a directory. Files are written with `tf.io` (local or gs://); TensorFlow is imported on the
workers only, in `setup()`.
"""

import time

import apache_beam as beam

from transforms.io.files import event_file_name


class WriteFeatureSummaries(beam.DoFn):
    """A split's statistics artifact -> event files in `<logdir>/<split>` (so TensorBoard draws train,
    eval, ... as runs side by side): per feature the scalars `<feature>/count`, `missing_rate`, and for
    numbers `mean`, `std`, `min`, `max`, `p50`, `p99` (`distinct` for strings), and the histogram
    `<feature>/histogram` from the artifact's bins, all at step 0."""

    def __init__(self, logdir):
        self._logdir = logdir

    def process(self, artifact):
        import numpy as np
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        logdir = f"{self._logdir.rstrip('/')}/{artifact['split']}"
        tf.io.gfile.makedirs(logdir)
        now = time.time()
        values = []
        for name, f in sorted(artifact["features"].items()):
            scalars = {"count": f["count"], "missing_rate": f["missing"] / f["count"] if f["count"] else None}
            if f["type"] == "numeric":
                scalars.update({k: f[k] for k in ("mean", "std", "min", "max")})
                scalars.update({"p50": f["quantiles"].get("0.5"), "p99": f["quantiles"].get("0.99")})
                if f["histogram"]:
                    buckets = np.array([[b["low"], b["high"], b["count"]] for b in f["histogram"]], dtype=np.float64)
                    # TensorBoard's histogram format: a [bins, 3] tensor of (left edge, right edge, count)
                    values.append(
                        summary_pb2.Summary.Value(
                            tag=f"{name}/histogram",
                            tensor=tf.make_tensor_proto(buckets),
                            metadata=summary_pb2.SummaryMetadata(
                                display_name=name,
                                data_class=summary_pb2.DATA_CLASS_TENSOR,
                                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histograms"),
                            ),
                        )
                    )
            else:
                scalars["distinct"] = f["distinct"]
            values += [
                summary_pb2.Summary.Value(tag=f"{name}/{k}", simple_value=float(v))
                for k, v in scalars.items()
                if v is not None
            ]
        with tf.io.TFRecordWriter(f"{logdir}/{event_file_name()}") as writer:
            writer.write(event_pb2.Event(wall_time=now, step=0, file_version="brain.Event:2").SerializeToString())
            writer.write(
                event_pb2.Event(wall_time=now, step=0, summary=summary_pb2.Summary(value=values)).SerializeToString()
            )
