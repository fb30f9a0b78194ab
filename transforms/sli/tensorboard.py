"""TensorBoard event files of SLI rows: scalars whose step is the event-time window end in epoch seconds (not
when the pipeline ran), so runs over the same period line up. Written with TensorFlow's own summary writer
(`tf.summary.create_file_writer`, local or gs://): each worker writes its own `events.out.tfevents.*` file
into the run directory; TensorFlow is imported on the workers only."""

import datetime

import apache_beam as beam

from transforms.io.files import summary_metadata
from transforms.sli.config import sli_short_name


class WriteSliSummaries(beam.DoFn):
    """SLI rows -> scalars `<sli_id>` (good fraction; error rate for error_rate SLIs; requests per second
    for throughput SLIs), and per journey `<service>/<journey>/latency_p50_ms` and `..._p99_ms` (from the
    journey's first SLI row, so each point is written once). A point's wall time is when it was written.
    A bundle's points are written in step order: TensorBoard draws a run's points in file order, and its
    default loader drops the points of a tag above a step that goes back. A late pane writes its window
    again at the same step: the newest point is the complete one."""

    def __init__(self, config, logdir):
        self._config = config
        self._logdir = logdir

    def setup(self):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._metadata = summary_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
        self._first_sli = {
            f"{service.name}/{journey.name}/{sli_short_name((journey.slis or service.slis)[0])}"
            for service in self._config.services
            for journey in service.journeys
        }
        self._writer = tf.summary.create_file_writer(self._logdir)

    def start_bundle(self):
        self._points = []

    def process(self, row):
        if row["sli_kind"] == "unmatched":
            return
        step = int(datetime.datetime.fromisoformat(row["window_end"]).timestamp())
        value = {"error_rate": row["error_rate"], "throughput": row["throughput_rps"]}.get(
            row["sli_kind"], row["good_fraction"]
        )
        self._points.append((step, row["sli_id"], value))
        if row["sli_id"] in self._first_sli:
            journey = f"{row['service']}/{row['journey']}"
            self._points.append((step, f"{journey}/latency_p50_ms", row["latency_p50_ms"]))
            self._points.append((step, f"{journey}/latency_p99_ms", row["latency_p99_ms"]))

    def finish_bundle(self):
        tf = self._tf
        with self._writer.as_default():
            # sorted by step alone: a stable sort keeps a late pane after the pane it completes
            for step, tag, value in sorted(self._points, key=lambda p: p[0]):
                tf.summary.write(tag, tf.constant(value, tf.float32), step, metadata=self._metadata)
        self._writer.flush()

    def teardown(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
