"""SLO arithmetic with worked numbers (SRE workbook style), on the evaluator alone."""

import datetime

import pytest

from transforms.sli.config import Alerting, Slo
from transforms.slo.evaluator import SloEvaluator

M0 = 29_000_000  # a minute index (2025-02-20); any will do


def evaluator(target=0.999, window_days=30, min_events=100, **kwargs):
    slo = Slo(name="s", sli="svc/j/availability", target=target, window_days=window_days, **kwargs)
    return SloEvaluator(slo, Alerting(min_events=min_events))


def feed(ev, minutes, per_minute, bad_per_minute=0, start=None):
    """Adds `minutes` minutes of traffic starting after the last one and evaluates them."""
    start = (ev.now + 1) if ev.now is not None else (start or M0)
    rows, alerts = [], []
    for m in range(start, start + minutes):
        ev.add(m, 0, per_minute - bad_per_minute, per_minute)
        r, a = ev.advance_to(m)
        rows += r
        alerts += a
    return rows, alerts


def test_default_thresholds_for_30_and_28_days():
    for days, expected in ((30, [14.4, 6.0, 1.0]), (28, [13.44, 5.6, 0.9333333])):
        assert [r.threshold(days) for r in Alerting().rules] == pytest.approx(expected)


def test_calendar_month_starts_over_and_scales_thresholds_to_the_month():
    ev = evaluator(window="calendar_month", min_events=0)
    oct31 = int(datetime.datetime(2026, 10, 31, 23, 0, tzinfo=datetime.UTC).timestamp()) // 60
    october, fired = feed(ev, 60, 100, bad_per_minute=50, start=oct31)  # a bad last hour of October
    assert october[-1]["window_days"] == 31 and october[-1]["compliance"] == pytest.approx(0.5)
    page = next(a for a in fired if a["long_window_minutes"] == 60)
    assert page["threshold"] == pytest.approx(0.02 * 31 * 1440 / 60)  # 14.88 in a 31-day month
    november, _ = feed(ev, 30, 100)  # a clean first half hour of November
    assert november[-1]["window_days"] == 30
    assert november[-1]["compliance"] == pytest.approx(1.0) and november[-1]["events"] == 3000
    # the alert windows still reach back into October: only the 6 h window holds the bad hour
    assert november[-1]["alerts_firing"] == ["ticket:4320m/360m"]


def test_999_over_30_days_with_a_million_requests_allows_1000_bad():
    ev = evaluator()
    # 1,000,000 requests in the window: 10,000 minutes of 100, with 400 bad spread over 400 minutes
    feed(ev, 400, 100, bad_per_minute=1)
    rows, _ = feed(ev, 9600, 100)
    last = rows[-1]
    assert last["events"] == 1_000_000
    assert last["allowed_bad_events"] == pytest.approx(1000)
    assert last["bad_events"] == 400
    assert last["allowed_bad_events_left"] == pytest.approx(600)
    assert last["compliance"] == pytest.approx(0.9996)
    assert last["budget_consumed"] == pytest.approx(0.4)
    assert last["budget_remaining"] == pytest.approx(0.6)


def test_an_hour_at_14_4x_consumes_2_percent_of_a_30_day_budget():
    ev = evaluator(min_events=0)
    # a full 30 days of steady traffic, 1000 requests a minute, from an hour boundary (the compliance
    # window moves by whole hours)
    feed(ev, 30 * 24 * 60 - 60, 1000, start=M0 - M0 % 60)
    # one hour burning at 14.4x: bad fraction 14.4 * 0.001 = 1.44%, i.e. 14.4 of every 1000
    rows = []
    for m in range(ev.now + 1, ev.now + 61):
        ev.add(m, 0, 1000 - 14.4, 1000)
        rows += ev.advance_to(m)[0]
    assert rows[-1]["budget_consumed"] == pytest.approx(0.02)
    burn = {b["window_minutes"]: b["burn_rate"] for b in rows[-1]["burn_rates"]}
    assert burn[60] == pytest.approx(14.4)


def test_a_burst_pages_on_1h_5m_but_not_6h_30m_and_resolves_once():
    ev = evaluator()
    feed(ev, 24 * 60, 1000)  # a quiet day
    _, fired = feed(ev, 5, 1000, bad_per_minute=200)  # 1000 bad in 5 minutes
    # 1 h: 1000/60000 = 1.67% bad, burn 16.7 > 14.4; 5 m: 20%, burn 200. 6 h: 1000/360000, burn 2.8 < 6
    assert [(a["state"], a["severity"], a["long_window_minutes"]) for a in fired] == [("FIRING", "page", 60)]
    assert fired[0]["burn_rate_long"] > 14.4 and fired[0]["burn_rate_short"] > 14.4
    rows, after = feed(ev, 120, 1000)
    assert [(a["state"], a["long_window_minutes"]) for a in after] == [("RESOLVED", 60)]
    assert rows[0]["status"] == "ALERTING" and rows[-1]["status"] == "OK"
    # once the 5-minute window is clean, the page resolves although the 1 h burn is still above 14.4
    resolved_at = after[0]["at"]
    assert after[0]["burn_rate_short"] < 14.4 and after[0]["burn_rate_long"] > 14.4
    assert resolved_at == rows[4]["evaluated_at"]


def test_traffic_below_the_gate_never_alerts():
    ev = evaluator(min_events=100)
    feed(ev, 1, 10, bad_per_minute=10)  # 10 requests, all failing
    rows, alerts = feed(ev, 600, 0)
    assert alerts == []
    assert all(r["alerts_firing"] == [] for r in rows)


def test_no_data_is_its_own_state():
    ev = evaluator()
    feed(ev, 1, 0)
    rows, _ = feed(ev, 1, 0)
    assert rows[-1]["status"] == "NO_DATA"
    assert rows[-1]["compliance"] is None and rows[-1]["budget_remaining"] is None


def test_timeslices_count_good_minutes():
    ev = evaluator(target=0.9, method="timeslices", timeslice_threshold=0.95)
    feed(ev, 8, 20, bad_per_minute=0)  # good minutes
    rows, _ = feed(ev, 2, 20, bad_per_minute=2)  # 90% < 95%: bad minutes
    assert rows[-1]["compliance"] == pytest.approx(0.8)  # 8 of 10 minutes
    assert rows[-1]["events"] == 200
    assert rows[-1]["allowed_bad_events"] is None


def test_composite_is_the_weighted_mean_of_ratios_not_a_plain_sum():
    slo = Slo(
        name="browse",
        target=0.99,
        components=[{"sli": "store/home/availability", "weight": 3}, {"sli": "store/buy/availability", "weight": 1}],
    )
    ev = SloEvaluator(slo, Alerting())
    ev.add(M0, 0, 99_990, 100_000)  # home: 99.99%
    ev.add(M0, 1, 900, 1_000)  # buy: 90%
    [row], _ = ev.advance_to(M0)
    assert row["compliance"] == pytest.approx((3 * 0.9999 + 1 * 0.9) / 4)  # 0.974925
    plain_sum = (99_990 + 900) / (100_000 + 1_000)  # 0.99891: the busy journey hides the broken one
    assert plain_sum > 0.998 and row["compliance"] < 0.975


def test_a_late_pane_replaces_the_minute_it_updates():
    ev = evaluator(min_events=0)
    feed(ev, 10, 100)
    ev.add(M0 + 5, 0, 50, 200, pane_index=1)  # late pane for minute 5: 200 requests, 150 bad
    rows, _ = feed(ev, 1, 100)
    assert rows[-1]["events"] == 11 * 100 + 100
    assert rows[-1]["bad_events"] == 150
    ev.add(M0 + 5, 0, 100, 100, pane_index=0)  # an older pane arriving after: ignored
    rows, _ = feed(ev, 1, 100)
    assert rows[-1]["bad_events"] == 150


def test_compliance_window_forgets_old_hours():
    ev = evaluator(window_days=1, min_events=0)
    feed(ev, 60, 100, bad_per_minute=100, start=M0 - M0 % 60)  # one bad hour
    rows, _ = feed(ev, 24 * 60, 100)
    assert rows[-1]["compliance"] == pytest.approx(1.0)
    assert rows[-1]["events"] == 24 * 60 * 100
