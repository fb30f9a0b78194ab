"""The SLI path in batches: a list of raw log records -> one partial `JourneyWindowStats` per journey and
window among them, merged downstream by `rows.ComputeSliRowsFromPartials` into the same rows the per-event
path (`ParseLogRecords` + `rows.ComputeSliRows`) gives.

Per record only the parse (one JSON decode, `parsing.LogParser.fields`, whose requests carry their journeys) and
integer window arithmetic run in Python; bad counts and the latency sketch are filled with numpy once per
journey window of the batch.
"""

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.io.deadletter import GuardedBatchDoFn, payload_and_attributes
from transforms.sli.config import UNMATCHED_JOURNEY, JourneyMatcher, status_matcher
from transforms.sli.parsing import LogParser
from transforms.sli.stats import JourneyWindowStats

_STATUSES = range(600)  # parse_status admits 100-599


def _bad_counter(sli):
    """(statuses int array, latencies float array) -> how many requests are bad for one SLI, as
    rows._bad_predicate decides per request."""
    if sli.kind in ("availability", "error_rate"):
        is_bad = status_matcher(sli.bad_status if sli.kind == "availability" else sli.error_status)
        table = np.array([is_bad(s) for s in _STATUSES])
        return lambda statuses, _latencies: int(np.count_nonzero(table[statuses]))
    if sli.kind == "latency":
        threshold = sli.threshold_ms
        return lambda _statuses, latencies: int(np.count_nonzero(latencies > threshold))
    return lambda _statuses, _latencies: 0  # throughput: every request counts as good


class AggregateLogBatches(GuardedBatchDoFn):
    """Batches of raw records (Pub/Sub messages, JSON text/bytes, dict rows) -> ((service, journey, window
    start), partial JourneyWindowStats) timestamped at the window start, one per journey window of the
    batch; records that do not parse go to `dead_letters` exactly as ParseLogRecords sends them (same step
    name, reason and message). Requests in the partials + dead letters = records in."""

    STEP = "ParseLogRecords"

    def __init__(self, config, window_seconds, pipeline_name):
        super().__init__(pipeline_name)
        self._config = config
        self._window_seconds = window_seconds

    def setup(self):
        self._parser = LogParser(self._config.formats, JourneyMatcher(self._config))
        self._window_micros = self._window_seconds * 1_000_000
        self._counters = {}  # (service, journey) -> bad counters per SLI
        self._parsed = Metrics.counter(self._pipeline, "records_parsed")
        self._unmatched = Metrics.counter(self._pipeline, "requests_unmatched")

    def handle(self, record):
        yield from self.handle_batch([record])

    def handle_batch(self, records):
        fields, window_micros = self._parser.fields, self._window_micros
        groups = {}  # (service, journey, window index) -> (SLIs, statuses, latencies)
        dead_letters = []
        for record in records:
            try:
                micros, request, status, latency, _ = fields(payload_and_attributes(record)[0])
            except Exception as e:  # noqa: BLE001 - per-record boundary, as GuardedDoFn.process
                payload, attributes = payload_and_attributes(record)
                dead_letters.append(self.dead_letter(payload, e, attributes))
                continue
            service, journey, slis = request.journey
            key = (service, journey, micros // window_micros)
            group = groups.get(key)
            if group is None:
                group = groups[key] = (slis, [], [])
            group[1].append(status)
            group[2].append(latency)
        yield from dead_letters
        yield from self._partials(groups)

    def _partials(self, groups):
        partials = []
        parsed = unmatched = 0
        for key, (slis, statuses, latencies) in groups.items():
            service, journey, window = key
            window_start = window * self._window_seconds
            counters = self._counters.get((service, journey))
            if counters is None:
                counters = self._counters[(service, journey)] = tuple(_bad_counter(s) for s in slis)
            status_array = np.array(statuses, dtype=np.int64)
            latency_array = np.array(latencies, dtype=np.float64)
            stats = JourneyWindowStats().add_batch(latency_array, [c(status_array, latency_array) for c in counters])
            partials.append(
                TimestampedValue(((service, journey, window_start), stats), Timestamp(seconds=window_start))
            )
            parsed += len(statuses)
            if journey == UNMATCHED_JOURNEY:
                unmatched += len(statuses)
        self._parsed.inc(parsed)  # counted once the batch cannot fail any more
        if unmatched:
            self._unmatched.inc(unmatched)
        return partials
