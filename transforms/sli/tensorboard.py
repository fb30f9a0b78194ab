"""TensorBoard event files of SLI rows: scalars whose step and wall time are the event-time window end (not
when the pipeline ran), so runs over the same period line up. Each worker writes its own
`events.out.tfevents.*` file into the run directory; TensorFlow is imported on the workers only."""

import datetime
import time

import apache_beam as beam

from transforms.io.files import event_file_name
from transforms.sli.config import sli_short_name


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
            for service in self._config.services
            for journey in service.journeys
        }
        tf.io.gfile.makedirs(self._logdir)
        self._writer = tf.io.TFRecordWriter(f"{self._logdir.rstrip('/')}/{event_file_name()}")
        self._writer.write(self._event(time.time(), 0, file_version="brain.Event:2"))

    def _event(self, wall_time, step, file_version=None, values=()):
        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        event = event_pb2.Event(wall_time=wall_time, step=step)
        if file_version:
            event.file_version = file_version
        else:
            event.summary.CopyFrom(
                summary_pb2.Summary(
                    value=[summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in values]
                )
            )
        return event.SerializeToString()

    def process(self, row):
        if row["sli_kind"] == "unmatched":
            return
        end = datetime.datetime.fromisoformat(row["window_end"]).timestamp()
        value = {"error_rate": row["error_rate"], "throughput": row["throughput_rps"]}.get(
            row["sli_kind"], row["good_fraction"]
        )
        values = [(row["sli_id"], value)]
        if row["sli_id"] in self._first_sli:
            journey = f"{row['service']}/{row['journey']}"
            values += [
                (f"{journey}/latency_p50_ms", row["latency_p50_ms"]),
                (f"{journey}/latency_p99_ms", row["latency_p99_ms"]),
            ]
        self._writer.write(self._event(end, int(end), values=values))

    def finish_bundle(self):
        self._writer.flush()

    def teardown(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
