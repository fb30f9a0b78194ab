"""Window math with TestStream: on-time panes, late panes that update a window, too-late data dropped."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.sli.config import parse_sli_config
from transforms.sli.parsing import RequestEvent
from transforms.sli.rows import ComputeSliRows

CONFIG = parse_sli_config("""
services:
  - name: s
    slis: [{kind: availability}, {kind: latency, threshold_ms: 100}]
    journeys: [{name: j, path: /a}]
""")
T0 = 1795341600  # 2026-11-22T10:00:00Z, a window boundary


def _event(t, status, latency_ms, path="/a"):
    return TimestampedValue(RequestEvent(t, "s", "", "GET", path, status, latency_ms, "flat"), t)


def _run(stream, expected, window_seconds=60, allowed_lateness_seconds=120):
    options = PipelineOptions(runner="BundleBasedDirectRunner", streaming=True)
    with beam.Pipeline(options=options) as p:
        rows = p | stream | ComputeSliRows(CONFIG, "sli", window_seconds, allowed_lateness_seconds)
        projected = rows | beam.Map(
            lambda r: (
                r["sli_id"],
                r["window_start"],
                r["pane_timing"],
                r["pane_index"],
                r["total"],
                r["good"],
                r["bad"],
            )
        )
        assert_that(projected, equal_to(expected))


def test_on_time_late_and_too_late():
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_event(T0 + 1, 200, 50), _event(T0 + 2, 200, 150), _event(T0 + 59.9, 503, 80)])
        .add_elements([_event(T0 + 60, 200, 10)])  # next window
        .advance_watermark_to(T0 + 120)  # both windows fire ON_TIME
        .add_elements([_event(T0 + 30, 500, 400)])  # late, within 120 s of lateness: updates window 1
        .advance_watermark_to(T0 + 60 + 120 + 1)  # window 1 expires (end + allowed lateness)
        .add_elements([_event(T0 + 10, 200, 5)])  # too late: dropped, window 1 not updated
        .advance_watermark_to_infinity()
    )
    w1, w2 = "2026-11-22T10:00:00+00:00", "2026-11-22T10:01:00+00:00"
    expected = [
        # window 1 on time: 3 requests, one 503, one over 100 ms
        ("s/j/availability", w1, "ON_TIME", 0, 3, 2, 1),
        ("s/j/latency_100ms", w1, "ON_TIME", 0, 3, 2, 1),
        ("s/j/availability", w2, "ON_TIME", 0, 1, 1, 0),
        ("s/j/latency_100ms", w2, "ON_TIME", 0, 1, 1, 0),
        # window 1 late pane: accumulated, 4 requests, the late one is both a 5xx and slow
        ("s/j/availability", w1, "LATE", 1, 4, 2, 2),
        ("s/j/latency_100ms", w1, "LATE", 1, 4, 2, 2),
    ]
    _run(stream, expected)


def test_unmatched_requests_are_counted_in_their_own_row():
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [_event(T0 + 1, 200, 50), _event(T0 + 2, 200, 50, path="/nope"), _event(T0 + 3, 503, 50, path="/nope/2")]
        )
        .advance_watermark_to_infinity()
    )
    w1 = "2026-11-22T10:00:00+00:00"
    _run(
        stream,
        [
            ("s/j/availability", w1, "ON_TIME", 0, 1, 1, 0),
            ("s/j/latency_100ms", w1, "ON_TIME", 0, 1, 1, 0),
            ("s/_unmatched", w1, "ON_TIME", 0, 2, None, None),
        ],
    )


def test_window_length_and_throughput():
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([_event(T0 + i, 200, 10) for i in range(0, 300, 10)])  # 30 requests in 5 minutes
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(runner="BundleBasedDirectRunner", streaming=True)
    with beam.Pipeline(options=options) as p:
        rows = p | stream | ComputeSliRows(CONFIG, "sli", window_seconds=300)
        assert_that(
            rows
            | beam.Filter(lambda r: r["sli_kind"] == "availability")
            | beam.Map(lambda r: (r["window_end"], r["window_seconds"], r["total"], r["throughput_rps"])),
            equal_to([("2026-11-22T10:05:00+00:00", 300, 30, 0.1)]),
        )
