"""SLO arithmetic with worked numbers (SRE workbook style), on the evaluator alone."""

import datetime
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.sli.config import Alerting, BurnRateRule, Exclusion, Slo
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


# Exact ties, worked by hand: one minute of 1,000,000 requests whose bad count puts the burn rate exactly
# on the threshold (bad = threshold x (1 - target) x 1,000,000), in every window at once. A 30-day SLO;
# thresholds 14.4, 6, 3 and 1 from (long window, budget share) = (60, 0.02), (360, 0.05), (1440, 0.1), (4320, 0.1).
RULES = {14.4: (60, 0.02), 6: (360, 0.05), 3: (1440, 0.1), 1: (4320, 0.1)}
TIES = [
    (0.999, 14.4, 14_400),
    (0.999, 6, 6_000),
    (0.999, 3, 3_000),
    (0.999, 1, 1_000),
    (0.9995, 14.4, 7_200),
    (0.9995, 6, 3_000),
    (0.9995, 3, 1_500),
    (0.9995, 1, 500),
    (0.9999, 14.4, 1_440),
    (0.9999, 6, 600),
    (0.9999, 3, 300),
    (0.9999, 1, 100),
    (0.995, 14.4, 72_000),
    (0.995, 6, 30_000),
    (0.995, 3, 15_000),
    (0.995, 1, 5_000),
    (0.9, 6, 600_000),  # 14.4 cannot be reached at 90%: the burn rate is at most 1 / 0.1 = 10
    (0.9, 3, 300_000),
    (0.9, 1, 100_000),
]


def one_rule_evaluator(target, threshold, **damping):
    long_window, share = RULES[threshold]
    rule = BurnRateRule(
        severity="page", long_window_minutes=long_window, short_window_minutes=5, budget_share=share, **damping
    )
    slo = Slo(name="s", sli="svc/j/availability", target=target, window_days=30)
    return SloEvaluator(slo, Alerting(min_events=0, rules=[rule]))


def fires(target, threshold, total, bad):
    ev = one_rule_evaluator(target, threshold)
    ev.add(M0, 0, total - bad, total)
    return [a["state"] for a in ev.advance_to(M0)[1]] == ["FIRING"]


@pytest.mark.parametrize("target, threshold, tie", TIES)
def test_a_burn_rate_equal_to_the_threshold_does_not_fire_one_more_bad_event_does(target, threshold, tie):
    assert not fires(target, threshold, 1_000_000, tie)
    assert fires(target, threshold, 1_000_000, tie + 1)


def test_the_issue_example_72_bad_of_50000_at_9999_is_a_tie():
    # 72 / 50,000 = 0.00144 = 14.4 x 0.0001: exactly the 1-hour threshold (floats made it 14.4000000000016)
    assert not fires(0.9999, 14.4, 50_000, 72)
    assert fires(0.9999, 14.4, 50_000, 73)


def test_thresholds_are_exact_fractions():
    assert [r.threshold(30) for r in Alerting().rules] == [Fraction(72, 5), 6, 1]
    assert [r.threshold(28) for r in Alerting().rules] == [Fraction(336, 25), Fraction(28, 5), Fraction(14, 15)]


# A low-traffic journey flapping, worked by hand. 4 requests a minute, target 99.9%, one page rule 1h/5m at
# 14.4; after an hour of clean traffic, one bad request at minutes B, B+10, ..., B+90. At minute m the 5-minute
# burn is (bad in 5 min / 20) / 0.001 = 50 per bad request, above 14.4 with one; the 1-hour burn is
# (bad in 1 h / 240) / 0.001 = 4.17 per bad request, above 14.4 from 4 on (3 give 12.5). So the condition
# holds at B+30..B+34, B+40..B+44, ..., B+90..B+94 and is clear in between (5 minutes each time) and after.
def flapping(**damping):
    ev = one_rule_evaluator(0.999, 14.4, **damping)
    ev.min_events = 100
    feed(ev, 60, 4, start=M0)
    b = ev.now + 1
    transitions, rows = [], {}
    for m in range(b, b + 160):
        ev.add(m, 0, 3 if (m - b) % 10 == 0 and m - b <= 90 else 4, 4)
        [row], alerts = ev.advance_to(m)
        rows[m - b] = row
        transitions += [(a["state"], _offset(a["at"], b)) for a in alerts]
    return transitions, rows


def _offset(at, start):
    """Minutes after `start` of the minute ending at `at`."""
    return int(datetime.datetime.fromisoformat(at).timestamp()) // 60 - 1 - start


def test_undamped_flapping_fires_and_resolves_every_ten_minutes():
    transitions, _ = flapping()
    expected = []
    for k in range(3, 10):
        expected += [("FIRING", 10 * k), ("RESOLVED", 10 * k + 5)]
    assert transitions == expected  # 14 transitions in 100 minutes


def test_damping_turns_the_flapping_into_one_page_and_one_resolve():
    transitions, rows = flapping(for_minutes=2, keep_firing_for_minutes=5)
    # held since B+30 for 2 minutes: fires at B+32; each clear gap lasts 5 minutes (B+35..B+39 clear, B+40
    # true again), so it never resolves until the last clear run B+95..B+100
    assert transitions == [("FIRING", 32), ("RESOLVED", 100)]
    assert rows[31]["status"] == "OK" and rows[31]["alerts_firing"] == []  # pending, not firing yet
    assert rows[37]["status"] == "ALERTING" and rows[99]["status"] == "ALERTING"  # clear, held
    assert rows[100]["status"] == "OK"
    # a shorter hold-off does not bridge the 5-minute gaps: clear at B+35..B+39, resolved at B+39
    assert flapping(keep_firing_for_minutes=4)[0][:3] == [("FIRING", 30), ("RESOLVED", 39), ("FIRING", 40)]


def test_for_minutes_longer_than_each_blip_never_fires():
    # each run of the condition lasts 5 minutes (s..s+4): with for_minutes=5 it would fire at s+5
    assert flapping(for_minutes=5)[0] == []
    assert flapping(for_minutes=4)[0][:2] == [("FIRING", 34), ("RESOLVED", 35)]


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 9999),
    share=st.sampled_from([(60, 2), (360, 5), (1440, 10), (4320, 10)]),
    total=st.integers(1, 10**6),
    bad_share=st.fractions(0, 1),
)
def test_firing_is_the_integer_comparison(k, share, total, bad_share):
    """target k/10,000, threshold s% x 43,200 / L: burn > threshold <=> bad x 10^4 x 100 x L > s x 43,200 x
    (10^4 - k) x total, all integers."""
    (long_window, percent), bad = share, int(bad_share * total)
    rule = BurnRateRule(
        severity="page", long_window_minutes=long_window, short_window_minutes=5, budget_share=percent / 100
    )
    slo = Slo(name="s", sli="svc/j/availability", target=k / 10_000, window_days=30)
    ev = SloEvaluator(slo, Alerting(min_events=0, rules=[rule]))
    ev.add(M0, 0, total - bad, total)
    fired = bool(ev.advance_to(M0)[1])
    assert fired == (bad * 10**4 * 100 * long_window > percent * 43_200 * (10**4 - k) * total)


def test_an_excluded_stretch_counts_in_no_window_and_is_reported():
    start = M0 - M0 % 60  # an hour boundary
    bad_from = start + 60
    migration = Exclusion(
        reason="db migration",
        start=datetime.datetime.fromtimestamp(bad_from * 60, datetime.UTC),
        end=datetime.datetime.fromtimestamp((bad_from + 10) * 60, datetime.UTC),
    )
    results = {}
    for name, exclusions in (("plain", []), ("excluded", [migration])):
        slo = Slo(name="s", sli="svc/j/availability", target=0.999, window_days=30)
        ev = SloEvaluator(slo, Alerting(), exclusions)
        feed(ev, 60, 100, start=start)
        _, fired = feed(ev, 10, 100, bad_per_minute=100)  # 10 minutes of nothing but errors
        rows, after = feed(ev, 60, 100)
        results[name] = rows[-1], fired + after
    plain, excluded = results["plain"], results["excluded"]
    # without the exclusion: 1000 bad of 13,000, and the 1h/5m page (1000 / 6000 bad: burn 167) fires
    assert plain[0]["bad_events"] == 1000 and plain[0]["events"] == 13_000
    assert ("FIRING", 60) in [(a["state"], a["long_window_minutes"]) for a in plain[1]]
    assert plain[0]["excluded_minutes"] == 0 and plain[0]["exclusions"] == []
    # with it: the 10 minutes are in no window
    row, alerts = excluded
    assert alerts == []
    assert row["events"] == 12_000 and row["bad_events"] == 0 and row["compliance"] == 1.0
    assert row["budget_remaining"] == 1.0
    assert row["excluded_minutes"] == 10 and row["exclusions"] == [{"reason": "db migration", "minutes": 10}]


def test_excluded_minutes_leave_the_compliance_window_with_their_hour():
    start = M0 - M0 % 60
    deploy = Exclusion(
        reason="deploy",
        start=datetime.datetime.fromtimestamp((start + 10) * 60, datetime.UTC),
        end=datetime.datetime.fromtimestamp((start + 40) * 60, datetime.UTC),
    )
    ev = SloEvaluator(Slo(name="s", sli="svc/j/availability", target=0.999, window_days=1), Alerting(), [deploy])
    rows, _ = feed(ev, 25 * 60, 100, start=start)
    by_minute = {int(datetime.datetime.fromisoformat(r["evaluated_at"]).timestamp()) // 60 - 1 - start: r for r in rows}
    assert by_minute[9]["excluded_minutes"] == 0
    assert by_minute[39]["excluded_minutes"] == 30 and by_minute[39]["events"] == 10 * 100
    assert by_minute[24 * 60 - 1]["excluded_minutes"] == 30  # the window holds hours (H - 24, H]
    assert by_minute[24 * 60]["excluded_minutes"] == 0 and by_minute[24 * 60]["exclusions"] == []
    assert by_minute[24 * 60]["events"] == (23 * 60 + 1) * 100  # hours 1..23 and this minute


DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


@settings(max_examples=150, deadline=None)
@given(
    minute=st.integers(0, 60_000_000),
    day=st.sampled_from(DAYS),
    at=st.integers(0, 1439),
    length=st.integers(1, 7 * 1440),
)
def test_a_weekly_slot_covers_the_minutes_a_calendar_says(minute, day, at, length):
    slot = Exclusion(reason="r", weekly={"day": day, "start": f"{at // 60:02d}:{at % 60:02d}", "minutes": length})
    t = datetime.datetime.fromtimestamp(minute * 60, datetime.UTC)
    # the slot's latest start at or before t, found with the calendar
    days_back = (t.weekday() - DAYS.index(day)) % 7
    slot_start = (t - datetime.timedelta(days=days_back)).replace(hour=at // 60, minute=at % 60)
    if slot_start > t:
        slot_start -= datetime.timedelta(days=7)
    assert slot.covers(minute) == (t - slot_start < datetime.timedelta(minutes=length))


# The state the streaming DoFn keeps (`state()` / `restore()`): packed arrays that widen as values need.
def test_a_28_day_slo_at_1000_requests_a_minute_packs_into_7_bytes_a_slot():
    ev = evaluator(window_days=28)
    feed(ev, 61, 1000, bad_per_minute=1, start=M0 - M0 % 60)  # the rings are allocated whole from the start
    # per minute of the 3-day ring and per hour of the 28-day ring: c0, c1, events in 2 bytes each (at most
    # 60,000 an hour), the pane index (minutes) or excluded minutes (hours) in 1
    slots = 3 * 24 * 60 + 28 * 24
    assert 7 * slots <= len(ev.state()) < 7 * slots + 1000


def test_counts_beyond_each_width_stay_exact_through_the_state():
    ev = evaluator(min_events=0)
    totals = [255, 256, 70_000, 2**33, 2**62]  # 1, 2, 4 bytes, then int64
    for i, total in enumerate(totals):
        ev.add(M0 + i, 0, total - 1, total)
        restored = evaluator(min_events=0)
        assert restored.restore(ev.state())
        [row], _ = restored.advance_to(M0 + i)
        ev = restored
    assert row["events"] == 255 + 256 + 70_000 + 2**33 + 2**62 and isinstance(row["events"], int)
    assert row["bad_events"] == len(totals)


def test_a_state_saved_under_other_alert_windows_is_not_taken_up():
    ev = evaluator(min_events=0)
    feed(ev, 30, 100)
    rule = BurnRateRule(severity="page", long_window_minutes=120, short_window_minutes=10, budget_share=0.02)
    other = SloEvaluator(ev.slo, Alerting(min_events=0, rules=[rule]))
    assert not other.restore(ev.state())
    assert other.now is None  # still fresh: its first minute counts alone
    other.add(M0 + 30, 0, 100, 100)
    [row], _ = other.advance_to(M0 + 30)
    assert row["events"] == 100


COUNTS = st.one_of(st.integers(0, 300), st.integers(0, 2**40), st.floats(0, 1e9, allow_nan=False))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-12, 4), st.integers(0, 1), COUNTS, COUNTS, st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([0, 1, 1, 2, 7, 59, 61, 1500])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, calendar=st.booleans(), timeslices=st.booleans(), damping=st.integers(0, 3))
def test_saving_and_restoring_the_state_between_every_call_changes_nothing(ops, calendar, timeslices, damping):
    """The same calls on an evaluator that is rebuilt from `state()` before each one and on one that is
    never saved: short windows and a 1-day compliance window, so the rings wrap and hours expire."""
    start = int(datetime.datetime(2026, 10, 31, 23, 50, tzinfo=datetime.UTC).timestamp()) // 60
    slo = Slo(
        name="s",
        target=0.99,
        window_days=1,
        window="calendar_month" if calendar else "rolling",
        method="timeslices" if timeslices else "occurrences",
        timeslice_threshold=0.9 if timeslices else None,
        components=[{"sli": "a/b/availability", "weight": 3}, {"sli": "a/c/availability", "weight": 1}],
    )
    rules = [
        BurnRateRule(severity="page", long_window_minutes=10, short_window_minutes=3, budget_share=0.02),
        BurnRateRule(
            severity="ticket", long_window_minutes=15, short_window_minutes=5, budget_share=0.05, for_minutes=damping
        ),
    ]
    deploy = Exclusion(
        reason="deploy",
        start=datetime.datetime.fromtimestamp((start + 5) * 60, datetime.UTC),
        end=datetime.datetime.fromtimestamp((start + 20) * 60, datetime.UTC),
    )

    def new():
        return SloEvaluator(slo, Alerting(min_events=0, rules=rules), [deploy])

    kept, saved = new(), new()
    for op in ops:
        restored = new()
        assert restored.restore(saved.state())
        saved = restored
        results = []
        for ev in (kept, saved):
            at = start if ev.now is None else ev.now
            if op[0] == "add":
                _, offset, component, good, total, pane = op
                good = min(good, total)  # the evaluator's input: ParseSliRows dead-letters good > total
                results.append(ev.add(at + offset, component, good, total, pane))
            else:
                results.append(ev.advance_to(at + op[1]))
            results[-1] = (results[-1], ev.now, ev.first_pending_minute())
        assert results[0] == results[1]
