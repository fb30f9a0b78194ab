"""TensorBoard event files: SLI scalars whose step and wall time are the event-time window end (not when
the pipeline ran), so runs over the same period line up; and feature statistics per split (scalars and
histograms).

Each worker writes its own `events.out.tfevents.*` file into the run directory; TensorBoard merges the
files of a directory. Files are written with `tf.io` (local or gs://); TensorFlow is imported on the
workers only, in `setup()`.
"""
import datetime
import socket
import time
import uuid

import apache_beam as beam

from transforms.sli_config import sli_short_name


def _event_file_name():
    return f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


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
                    values.append(summary_pb2.Summary.Value(
                        tag=f"{name}/histogram", tensor=tf.make_tensor_proto(buckets),
                        metadata=summary_pb2.SummaryMetadata(
                            display_name=name, data_class=summary_pb2.DATA_CLASS_TENSOR,
                            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="histograms"))))
            else:
                scalars["distinct"] = f["distinct"]
            values += [summary_pb2.Summary.Value(tag=f"{name}/{k}", simple_value=float(v))
                       for k, v in scalars.items() if v is not None]
        with tf.io.TFRecordWriter(f"{logdir}/{_event_file_name()}") as writer:
            writer.write(event_pb2.Event(wall_time=now, step=0, file_version="brain.Event:2").SerializeToString())
            writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary_pb2.Summary(value=values))
                         .SerializeToString())


class WriteSliSummaries(beam.DoFn):
    """SLI rows -> scalars `<sli_id>` (good fraction; error rate for error_rate SLIs; requests per second
    for throughput SLIs), and per journey `<service>/<journey>/latency_p50_ms` and `..._p99_ms` (from the
    journey's first SLI row, so each point is written once). A late pane writes its window again at the
    same step: the newest point is the complete one."""

    def __init__(self, config, logdir):
        self._config = config
        self._logdir = logdir

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        self._first_sli = {
            f"{service.name}/{journey.name}/{sli_short_name((journey.slis or service.slis)[0])}"
            for service in self._config.services for journey in service.journeys
        }
        tf.io.gfile.makedirs(self._logdir)
        self._writer = tf.io.TFRecordWriter(f"{self._logdir.rstrip('/')}/{_event_file_name()}")
        self._writer.write(self._event(time.time(), 0, file_version="brain.Event:2"))

    def _event(self, wall_time, step, file_version=None, values=()):
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        event = event_pb2.Event(wall_time=wall_time, step=step)
        if file_version:
            event.file_version = file_version
        else:
            event.summary.CopyFrom(summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in values]))
        return event.SerializeToString()

    def process(self, row):
        if row["sli_kind"] == "unmatched":
            return
        end = datetime.datetime.fromisoformat(row["window_end"]).timestamp()
        value = {"error_rate": row["error_rate"], "throughput": row["throughput_rps"]}.get(
            row["sli_kind"], row["good_fraction"])
        values = [(row["sli_id"], value)]
        if row["sli_id"] in self._first_sli:
            journey = f"{row['service']}/{row['journey']}"
            values += [(f"{journey}/latency_p50_ms", row["latency_p50_ms"]),
                       (f"{journey}/latency_p99_ms", row["latency_p99_ms"])]
        self._writer.write(self._event(end, int(end), values=values))

    def finish_bundle(self):
        self._writer.flush()

    def teardown(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()

