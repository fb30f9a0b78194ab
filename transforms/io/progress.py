"""Progress lines for long local batch runs: records read, throughput and dead letters so far, printed
to stderr at most every few seconds by the process running the DoFns. Pipelines add these steps only
for local batch runs without --progress off (on Dataflow the job page shows progress)."""

import sys
import threading
import time

import apache_beam as beam


class _Progress:
    """Counts of this process, shared by the DoFn instances in it."""

    def __init__(self, interval_seconds):
        self.interval = interval_seconds
        self.counts = {"read": 0, "dead letters": 0}
        self.started = self.last_print = time.monotonic()
        self.lock = threading.Lock()

    def add(self, kind, pipeline_name, n=1):
        with self.lock:
            self.counts[kind] += n
            now = time.monotonic()
            if now - self.last_print < self.interval:
                return
            self.last_print = now
            rate = self.counts["read"] / max(now - self.started, 1e-9)
            line = (
                f"[{pipeline_name}] {now - self.started:6.0f} s  records read {self.counts['read']:,} "
                f"({rate:,.0f}/s)  dead letters {self.counts['dead letters']:,}"
            )
        print(line, file=sys.stderr, flush=True)


_progress = {}


def _records_in(element):
    """A batch counts as its records: a list (ReadRecords(batched=True)) or an Arrow table."""
    if isinstance(element, list):
        return len(element)
    return getattr(element, "num_rows", 1)


class CountProgress(beam.DoFn):
    """Counts elements as `kind` ("read" or "dead letters"). It outputs nothing: a side branch whose
    passed-through copies went nowhere cost more per element than the counting."""

    def __init__(self, pipeline_name, kind, interval_seconds=5.0):
        self._pipeline, self._kind, self._interval = pipeline_name, kind, interval_seconds

    def setup(self):
        self._progress = _progress.setdefault(self._pipeline, _Progress(self._interval))

    def process(self, element):
        self._progress.add(self._kind, self._pipeline, _records_in(element))
