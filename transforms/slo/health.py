"""Health rows: SLI rows a streaming pipeline emits about itself, in the SLI row schema the SLO engine reads
(transforms/sli/rows.py), so SLOs on a pipeline are configured, evaluated and alerted like any other.

Every output element of a pipeline, and every dead letter, is one health event (a list, as some pipelines
emit rows in batches, is as many events as it holds). It is counted in the minute of processing time at
which it reached the health step, with lag = that processing time - the element's event time (0 when the
event time is ahead): its Beam timestamp, or what the pipeline's `output_event_seconds` reads off it where batching
moved its timestamps (scoring: the publish time of the batch's oldest request). Per pipeline and
minute, two rows (service "pipelines", journey the pipeline):

  pipelines/<pipeline>/freshness     sli_kind latency, threshold_ms the freshness threshold: total = outputs
                                     and dead letters, bad = those whose lag is over the threshold; the
                                     latency_* columns are the lag's (p50..p99 within 1%, mean, max, sketch)
  pipelines/<pipeline>/dead_letters  sli_kind error_rate: total as above, bad = dead letters

A minute in which the pipeline emitted nothing has no rows. An SLO with `minutes_without_data: bad`
(timeslices) counts such a minute as bad, which is how a stalled pipeline pages: see docs/pipeline_slos.md.
"""

import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms.core.accumulators import MergingCombineFn
from transforms.sli.config import ErrorRateSli, Journey, LatencySli, Service, SliConfig
from transforms.sli.rows import ComputeSliRows, FormatSliRows
from transforms.sli.stats import JourneyWindowStats

HEALTH_SERVICE = "pipelines"
FRESHNESS_SLI = "freshness"
DEAD_LETTERS_SLI = "dead_letters"
HEALTH_WINDOW_SECONDS = 60  # the SLO evaluator's minute


def health_config(pipeline_name, freshness_seconds):
    """The SliConfig health rows are formatted under: one journey (the pipeline) with its two SLIs. An SLO
    config over health rows declares the same journey (pipelines/samples/pipeline_slos/pipeline_slos.yaml)."""
    slis = [
        LatencySli(kind="latency", name=FRESHNESS_SLI, threshold_ms=freshness_seconds * 1000),
        ErrorRateSli(kind="error_rate", name=DEAD_LETTERS_SLI),
    ]
    journey = Journey(name=pipeline_name, path=f"/{pipeline_name}", slis=slis)
    return SliConfig(services=[Service(name=HEALTH_SERVICE, journeys=[journey])])


def wall_clock(_event_seconds):
    """Processing time now, in seconds. A clock takes the element's event time: a test replays a stall
    through a clock of its own."""
    return time.time()


def health_event(pipeline_name, freshness_ms, element, event_seconds, now_seconds, dead_letter):
    """One output element or dead letter -> ((service, journey, minute start), (lag_ms, events, (stale,
    dead letter))): `events` is the list's length for a list (at least 1), else 1."""
    events = max(len(element), 1) if isinstance(element, list) else 1
    lag_ms = max(now_seconds - event_seconds, 0.0) * 1000
    minute = int(now_seconds // HEALTH_WINDOW_SECONDS) * HEALTH_WINDOW_SECONDS
    return (HEALTH_SERVICE, pipeline_name, minute), (lag_ms, events, (lag_ms > freshness_ms, dead_letter))


def element_timestamp(_element, timestamp_seconds):
    """The event time of an output element: its Beam timestamp."""
    return timestamp_seconds


class HealthEvents(beam.DoFn):
    """Output elements or dead letters -> health events, timestamped at their processing time (the minute
    they count in). `event_seconds(element, Beam timestamp seconds) -> seconds` gives an element's event time."""

    def __init__(self, pipeline_name, freshness_seconds, dead_letters, clock, event_seconds=element_timestamp):
        self._pipeline, self._freshness_ms = pipeline_name, freshness_seconds * 1000
        self._dead_letters, self._clock, self._event_seconds = dead_letters, clock, event_seconds

    def setup(self):
        self._stale = Metrics.counter(self._pipeline, "health_events_stale")

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        event_seconds = self._event_seconds(element, timestamp.micros / 1e6)
        now = self._clock(event_seconds)
        key, value = health_event(self._pipeline, self._freshness_ms, element, event_seconds, now, self._dead_letters)
        if value[2][0]:
            self._stale.inc(value[1])
        yield TimestampedValue((key, value), now)


def add_health_events(stats, lag_ms, events, flags):
    """`stats` (a JourneyWindowStats) with `events` events of one lag and flags: `add` for one, `add_batch`
    for many (the same counts and sketch)."""
    if events == 1:
        return stats.add(lag_ms, flags)
    return stats.add_batch(np.full(events, lag_ms), [events if bad else 0 for bad in flags])


class HealthStatsFn(MergingCombineFn):
    """The CombineFn over `JourneyWindowStats` fed health events."""

    def create_accumulator(self):
        return JourneyWindowStats()

    def add_input(self, acc, value):
        return add_health_events(acc, *value)


class PipelineHealth(ComputeSliRows):
    """(outputs, dead letters) of a streaming pipeline -> its health rows, one pane per processing minute
    once the watermark passes it (and a LATE pane for events that reach a minute after that).

    `clock(event seconds) -> processing seconds`: `wall_clock` but in tests. `output_event_seconds`: the event
    time of an output element (HealthEvents); dead letters keep their timestamps."""

    def __init__(
        self,
        pipeline_name,
        freshness_seconds=120.0,
        allowed_lateness_seconds=3600,
        clock=wall_clock,
        output_event_seconds=element_timestamp,
    ):
        super().__init__(
            health_config(pipeline_name, freshness_seconds),
            pipeline_name,
            HEALTH_WINDOW_SECONDS,
            allowed_lateness_seconds,
        )
        self._freshness_seconds, self._clock = freshness_seconds, clock
        self._output_event_seconds = output_event_seconds

    def expand(self, outputs_and_dead_letters):
        outputs, dead_letters = outputs_and_dead_letters
        minutes = [
            pcoll
            | f"{label}HealthEvents"
            >> beam.ParDo(HealthEvents(self._pipeline, self._freshness_seconds, is_dead_letter, self._clock, event))
            | f"{label}HealthMinutes" >> self._windowing(False)
            for label, pcoll, is_dead_letter, event in (
                ("Output", outputs, False, self._output_event_seconds),
                ("DeadLetter", dead_letters, True, element_timestamp),
            )
        ]
        return (
            minutes
            | "FlattenHealthEvents" >> beam.Flatten()
            | "AggregateHealth" >> beam.CombinePerKey(HealthStatsFn())
            | "FormatHealthRows" >> beam.ParDo(FormatSliRows(self._config, False))
        )
