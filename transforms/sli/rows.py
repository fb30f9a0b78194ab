"""SLI aggregation: request events to per-window SLI rows, the same transforms for streaming and backfill.

Row schema (one row per SLI, journey and event-time window; `SLI_ROW_BQ_SCHEMA` below):
  sli_id           "<service>/<journey>/<sli name>", e.g. "profile-web/view-profile/latency_500ms"
  service, journey, sli_kind (availability | latency | throughput | error_rate | unmatched), sli_name
  threshold_ms     latency SLIs only
  window_start, window_end, window_seconds
  total            requests of the journey in the window
  good, bad        per the SLI: availability bad = status in bad_status; latency bad = latency > threshold;
                   error_rate bad = status in error_status; throughput: every request is good
  good_fraction    good / total (the SLI value for availability and latency)
  error_rate       bad / total
  throughput_rps   total / window_seconds
  latency_p50_ms .. latency_p99_ms   DDSketch, within 1% relative error; latency_mean_ms, latency_max_ms exact
  latency_sketch   the journey's DDSketch as text (`transforms.sli.stats.sketch_to_text`): mergeable, so a
                   replay counts requests over a latency threshold set after the fact
  pane_timing      ON_TIME for the watermark pane, LATE for each update by late data (EARLY unused; on
                   the local runner a late record can fire a window's first pane: LATE, index 0);
  pane_index       0, 1, ... per window: readers take the highest; is_final when no later pane can
                   follow (always in batch; in streaming Beam knows it only when the window expires)
  emitted_at       processing time of the pane

Requests that match no journey of their service are counted in rows with journey "_unmatched" and
sli_kind "unmatched" (good/bad NULL), so totals reconcile with the input.
"""

import datetime

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from transforms.core.accumulators import MergingCombineFn
from transforms.sli.config import UNMATCHED_JOURNEY, JourneyMatcher, sli_short_name, status_matcher
from transforms.sli.stats import PERCENTILES, JourneyWindowStats, sketch_to_text

_S = {"mode": "NULLABLE"}
SLI_ROW_BQ_SCHEMA = {
    "fields": [
        {"name": "sli_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "service", "type": "STRING", "mode": "REQUIRED"},
        {"name": "journey", "type": "STRING", "mode": "REQUIRED"},
        {"name": "sli_kind", "type": "STRING", "mode": "REQUIRED"},
        {"name": "sli_name", "type": "STRING", "mode": "REQUIRED"},
        {"name": "threshold_ms", "type": "FLOAT64", **_S},
        {"name": "window_start", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "window_end", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "window_seconds", "type": "INT64", "mode": "REQUIRED"},
        {"name": "total", "type": "INT64", "mode": "REQUIRED"},
        {"name": "good", "type": "INT64", **_S},
        {"name": "bad", "type": "INT64", **_S},
        {"name": "good_fraction", "type": "FLOAT64", **_S},
        {"name": "error_rate", "type": "FLOAT64", **_S},
        {"name": "throughput_rps", "type": "FLOAT64", "mode": "REQUIRED"},
        *({"name": f"latency_p{p}_ms", "type": "FLOAT64", **_S} for p in PERCENTILES),
        {"name": "latency_mean_ms", "type": "FLOAT64", **_S},
        {"name": "latency_max_ms", "type": "FLOAT64", **_S},
        {"name": "latency_sketch", "type": "STRING", **_S},
        {"name": "pane_timing", "type": "STRING", "mode": "REQUIRED"},
        {"name": "pane_index", "type": "INT64", "mode": "REQUIRED"},
        {"name": "is_final", "type": "BOOL", "mode": "REQUIRED"},
        {"name": "emitted_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    ]
}
# Columns that describe the pane rather than the data: equal inputs give equal rows without them.
PANE_COLUMNS = ("pane_timing", "pane_index", "is_final", "emitted_at")


def _bad_predicate(sli):
    """Per-request 'bad' test for one SLI."""
    if sli.kind == "availability":
        is_bad_status = status_matcher(sli.bad_status)
        return lambda event: is_bad_status(event.status)
    if sli.kind == "error_rate":
        is_error = status_matcher(sli.error_status)
        return lambda event: is_error(event.status)
    if sli.kind == "latency":
        threshold = sli.threshold_ms
        return lambda event: event.latency_ms > threshold
    return lambda event: False  # throughput: every request counts as good


class MatchJourneys(beam.DoFn):
    """RequestEvent -> ((service, journey, window start), (latency_ms, bad flags per SLI of the journey)).

    The window start in the key gives each key a single window: Beam's trigger driver handles the windows
    of one key in time quadratic in their number, which a day-long backfill would otherwise pay."""

    def __init__(self, config, window_seconds, pipeline_name):
        self._config = config
        self._window_seconds = window_seconds
        self._pipeline = pipeline_name

    def setup(self):
        self._matcher = JourneyMatcher(self._config)
        self._predicates = {}
        self._unmatched = Metrics.counter(self._pipeline, "requests_unmatched")

    def process(self, event):
        service = self._matcher.service_for(event.service, event.host)
        journey, slis = self._matcher.match(service, event.method, event.path)
        if journey == UNMATCHED_JOURNEY:
            self._unmatched.inc()
        predicates = self._predicates.get((service, journey))
        if predicates is None:
            predicates = self._predicates[(service, journey)] = tuple(_bad_predicate(s) for s in slis)
        window_start = int(event.timestamp // self._window_seconds) * self._window_seconds
        yield (service, journey, window_start), (event.latency_ms, tuple(p(event) for p in predicates))


class JourneyWindowStatsFn(MergingCombineFn):
    """Thin CombineFn over the `JourneyWindowStats` accumulator."""

    def create_accumulator(self):
        return JourneyWindowStats()

    def add_input(self, acc, value):
        return acc.add(*value)


class MergeJourneyWindowStatsFn(MergingCombineFn):
    """The CombineFn over partial `JourneyWindowStats` (the batch path's, one per journey window and batch)."""

    def create_accumulator(self):
        return JourneyWindowStats()

    def add_input(self, acc, partial):
        return acc.merge(partial)


def _iso(ts):
    return ts.to_utc_datetime(has_tz=True).isoformat()


_PANE_TIMING = {0: "EARLY", 1: "ON_TIME", 2: "LATE", 3: "UNKNOWN"}


class FormatSliRows(beam.DoFn):
    """((service, journey, window start), stats) in a window pane -> one row per SLI of the journey."""

    def __init__(self, config, bounded_input):
        self._config = config
        self._bounded_input = bounded_input  # batch: the watermark pane is the only and final one

    def setup(self):
        self._slis = {
            (service.name, journey.name): tuple(journey.slis or service.slis)
            for service in self._config.services
            for journey in service.journeys
        }

    def process(self, keyed_stats, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        (service, journey, _), stats = keyed_stats
        seconds = (win.end.micros - win.start.micros) // 1_000_000
        common = {
            "service": service,
            "journey": journey,
            "window_start": _iso(win.start),
            "window_end": _iso(win.end),
            "window_seconds": seconds,
            "total": stats.count,
            "throughput_rps": stats.count / seconds,
            **{f"latency_p{p}_ms": value for p, value in stats.percentiles_ms().items()},
            "latency_mean_ms": stats.latency_sum_ms / stats.count,
            "latency_max_ms": stats.latency_max_ms,
            "latency_sketch": sketch_to_text(stats.sketch),
            "pane_timing": _PANE_TIMING.get(pane.timing, "UNKNOWN"),
            "pane_index": pane.index,
            "is_final": bool(pane.is_last) or self._bounded_input,
            "emitted_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        if journey == UNMATCHED_JOURNEY:
            yield {
                **common,
                "sli_id": f"{service}/{journey}",
                "sli_kind": "unmatched",
                "sli_name": "unmatched",
                "threshold_ms": None,
                "good": None,
                "bad": None,
                "good_fraction": None,
                "error_rate": None,
            }
            return
        for sli, bad in zip(self._slis[(service, journey)], stats.bad, strict=True):
            name = sli_short_name(sli)
            yield {
                **common,
                "sli_id": f"{service}/{journey}/{name}",
                "sli_kind": sli.kind,
                "sli_name": name,
                "threshold_ms": getattr(sli, "threshold_ms", None),
                "good": stats.count - bad,
                "bad": bad,
                "good_fraction": (stats.count - bad) / stats.count,
                "error_rate": bad / stats.count,
            }


class ComputeSliRows(beam.PTransform):
    """Event-timestamped `RequestEvent`s -> per-window SLI rows.

    Fixed event-time windows; the watermark pane is ON_TIME, then every late record within
    `allowed_lateness_seconds` fires a LATE pane with the updated (accumulated) totals. Records later
    than that are dropped by Beam (the runner counts them; Dataflow shows droppedDueToLateness)."""

    def __init__(self, config, pipeline_name, window_seconds=60, allowed_lateness_seconds=3600):
        super().__init__()
        self._config, self._pipeline = config, pipeline_name
        self._window_seconds = window_seconds
        self._allowed_lateness = allowed_lateness_seconds

    def _windowing(self, bounded):
        if bounded:
            # A backfill has one pane per window anyway; the default trigger skips the general trigger
            # driver (about 15% faster end to end in bench/sli.py). Same rows: tests compare both paths.
            return beam.WindowInto(window.FixedWindows(self._window_seconds))
        return beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=Duration(seconds=self._allowed_lateness),
        )

    def expand(self, events):
        return (
            events
            | "MatchJourneys" >> beam.ParDo(MatchJourneys(self._config, self._window_seconds, self._pipeline))
            | "FixedWindows" >> self._windowing(events.is_bounded)
            | "AggregatePerJourney" >> beam.CombinePerKey(JourneyWindowStatsFn())
            | "FormatSliRows" >> beam.ParDo(FormatSliRows(self._config, events.is_bounded))
        )


class ComputeSliRowsFromPartials(ComputeSliRows):
    """((service, journey, window start), partial JourneyWindowStats), timestamped in their window (the output
    of transforms.sli.batch.AggregateLogBatches) -> the rows ComputeSliRows gives for the same requests."""

    def expand(self, partials):
        if partials.is_bounded:
            # A backfill has one pane per window, and the key holds the window: combining in the global
            # window skips the general trigger driver FixedWindows needs (a third of the run time left in
            # bench/sli.py). Same rows: tests compare them with the streaming path's.
            return (
                partials
                | "AggregatePerJourney" >> beam.CombinePerKey(MergeJourneyWindowStatsFn())
                | "FormatSliRows" >> beam.ParDo(FormatBackfillRows(self._config, self._window_seconds))
            )
        return (
            partials
            | "FixedWindows" >> self._windowing(False)
            | "AggregatePerJourney" >> beam.CombinePerKey(MergeJourneyWindowStatsFn())
            | "FormatSliRows" >> beam.ParDo(FormatSliRows(self._config, False))
        )


_BACKFILL_PANE = PaneInfo(is_first=True, is_last=True, timing=PaneInfoTiming.ON_TIME, index=0, nonspeculative_index=0)


class FormatBackfillRows(FormatSliRows):
    """FormatSliRows for stats combined in the global window: the window comes from the key's window start,
    the pane is the one ON_TIME and final pane a backfill window has."""

    def __init__(self, config, window_seconds):
        super().__init__(config, bounded_input=True)
        self._window_seconds = window_seconds

    def process(self, keyed_stats):
        start = keyed_stats[0][2]
        yield from super().process(keyed_stats, IntervalWindow(start, start + self._window_seconds), _BACKFILL_PANE)


BIGTABLE_COLUMN_FAMILY = "sli"


def bigtable_row_key(row):
    """`<sli_id>#<window_start as YYYY-MM-DDTHH:MM:SSZ>`: one SLI's windows are contiguous and in time
    order, so a prefix scan returns its series and a key range returns a time range."""
    start = datetime.datetime.fromisoformat(row["window_start"]).astimezone(datetime.UTC)
    return f"{row['sli_id']}#{start:%Y-%m-%dT%H:%M:%SZ}"
