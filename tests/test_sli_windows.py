"""Window math with TestStream: on-time panes, late panes that update a window, too-late data dropped; the
local streaming runner's trigger driver, fixed so that late records leave no watermark hold."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.trigger import GeneralTriggerDriver, InMemoryUnmergedState, TimeDomain
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from pipelines.launch import choose_local_runner
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


def _triggered_driver():
    """The trigger driver of a streaming ComputeSliRows window (AfterWatermark, a late pane per record)."""
    windowing = ComputeSliRows(CONFIG, "sli", 60, 3600)._windowing(bounded=False).windowing
    return GeneralTriggerDriver(windowing, clock=None)


def test_a_late_record_leaves_no_watermark_hold_on_the_local_streaming_runner():
    """The local streaming runner's GroupByKey calls the trigger driver with its output watermark (held back
    by other keys' windows) and its input watermark. Unfixed Beam 2.77 judges late records by the output
    one: a late record that comes while other keys still hold the window, or before the window's own
    end-of-window timer has run, leaves a hold that nothing clears, and the watermark downstream (the SLO
    evaluator's timers) stops for good. With judge_lateness_by_input_watermark, no hold is left and the
    late record's pane is a LATE one."""
    for _ in range(2):  # what a local streaming run does first; the method is wrapped once
        assert choose_local_runner(PipelineOptions(["--streaming"])) == "BundleBasedDirectRunner"
    assert GeneralTriggerDriver.process_elements.judged_by_input_watermark
    assert not hasattr(GeneralTriggerDriver.process_elements.__wrapped__, "judged_by_input_watermark")
    win = IntervalWindow(T0, T0 + 60)
    held = win.max_timestamp()  # where other keys' end-of-window holds keep the output watermark

    def record(seconds):
        return WindowedValue("r", Timestamp(T0 + seconds), [win])

    # 1. the window's watermark pane has fired; a late record comes while the output watermark is held
    driver, state = _triggered_driver(), InMemoryUnmergedState()
    list(driver.process_elements(state, [record(10)], Timestamp(T0), Timestamp(T0)))
    [timer_window] = state.timers
    [on_time] = driver.process_timer(timer_window, "", TimeDomain.WATERMARK, win.end, state, win.end)
    assert on_time.pane_info.timing == PaneInfoTiming.ON_TIME
    [late] = driver.process_elements(state, [record(58)], held, Timestamp(T0 + 61))
    assert (late.pane_info.timing, late.pane_info.index) == (PaneInfoTiming.LATE, 1)
    assert state.get_earliest_hold() == MAX_TIMESTAMP

    # 2. a late record comes before the window's end-of-window timer has run: it fires the window's first
    # pane (LATE, index 0); the timer then fires nothing, and no hold is left
    driver, state = _triggered_driver(), InMemoryUnmergedState()
    list(driver.process_elements(state, [record(10)], Timestamp(T0), Timestamp(T0)))
    [timer_window] = state.timers
    [first] = driver.process_elements(state, [record(58)], held, Timestamp(T0 + 61))
    assert (first.pane_info.timing, first.pane_info.index) == (PaneInfoTiming.LATE, 0)
    assert sorted(first.value) == ["r", "r"]
    assert list(driver.process_timer(timer_window, "", TimeDomain.WATERMARK, win.end, state, win.end)) == []
    assert state.get_earliest_hold() == MAX_TIMESTAMP
