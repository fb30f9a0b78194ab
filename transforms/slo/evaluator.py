"""Rolling SLO evaluation for one SLO, minute by minute: compliance, error budget, burn rates and
multi-window burn-rate alerts. Plain Python (no Beam): the streaming DoFn keeps each SLO's evaluator state
in Beam state, and the backfill replays the same calls in minute order, so both give the same rows.

Cost: per evaluated minute, O(alert windows x components) additions; per late update, the same. No
window ever copies data. State (`state()`/`restore()`, what the streaming DoFn keeps in Beam state):
ring buffers of packed arrays, one slot per component and minute of the longest alert window (3 days by
default) and per hour of the compliance window (28 days: 672), the running sums and the minutes not yet
evaluated. Each array takes the narrowest type that holds its values (1, 2 or 4 unsigned bytes, then
int64), so a 28-day SLO with 1,000 requests a minute takes about 35 KB; a count that is not a whole
number turns its array into float64 (exact for whole numbers below 2**53).

The compliance window moves by whole hours: at minute m it covers the hours (H - 24*window_days, H],
H being m's hour, so it is up to 59 minutes longer than window_days at the old end. A calendar-month
SLO covers the hours of m's month (UTC) up to H instead, and its period for the alert thresholds is that
month's length. Alert windows are exact to the minute: at minute m a W-minute window covers minutes
(m - W, m].

Decisions are exact: counts are summed as integers and ratios, burn rates and thresholds are Fractions
(config numbers through their decimal text), so a burn rate equal to a threshold never fires, whatever
the target. Reported numbers are those Fractions rounded to floats.

Damping, per rule: a rule fires at the minute its condition has held for `for_minutes` (true from minute s
to s + for_minutes) and resolves at the minute it has been clear for `keep_firing_for_minutes`; both 0
by default, which fires and resolves at the first minute the condition changes.

Exclusions (maintenance windows): data of an excluded minute is dropped on arrival, so it counts in no
window; the excluded minutes the compliance window has stepped through are counted per reason.

Minutes without data: a timeslices SLO with `minutes_without_data: bad` counts each evaluated minute in
which a component has no row as a bad minute of it (no events), so a source that stops sending rows burns
budget (transforms/slo/health.py); a row arriving later for that minute replaces it. Evaluation goes on
while an alert fires, until the longest alert window holds no data (the alert then stays FIRING).
"""

import calendar
import datetime
import pickle
from array import array
from fractions import Fraction

from transforms.sli.config import exact

_MINUTES_PER_HOUR = 60
ADDED, EXCLUDED, TOO_OLD = "added", "excluded", "too_old"  # what SloEvaluator.add did with its input
_WIDER = {"B": "H", "H": "I", "I": "q", "q": "d"}
# what `state()` saves, in order
_STATE = (
    "now",
    "oldest_hour",
    "last_data_minute",
    "pending",
    "minute_counts",
    "minute_panes",
    "window_sums",
    "compliance",
    "hour_counts",
    "hour_excluded",
    "excluded",
    "firing",
    "changing_since",
)


def _month(minute):
    """(first hour index of the minute's UTC month, days in that month)"""
    dt = datetime.datetime.fromtimestamp(minute * 60, datetime.UTC)
    start = datetime.datetime(dt.year, dt.month, 1, tzinfo=datetime.UTC)
    return int(start.timestamp()) // 3600, calendar.monthrange(dt.year, dt.month)[1]


def _quotient(a, b):
    """a / b as a Fraction (counts are ints; floats go through `exact`)."""
    return Fraction(a, b) if isinstance(a, int) and isinstance(b, int) else exact(a) / exact(b)


def _float(value):
    return None if value is None else float(value)


def _stored(values, i, value):
    """`values` (an array) with values[i] = value, its type widened until the value fits (`_WIDER`)."""
    while True:
        try:
            values[i] = value
            return values
        except (OverflowError, TypeError):
            values = array(_WIDER[values.typecode], values)


def minute_iso(minute):
    """ISO time of the end of minute index `minute` (minutes since the epoch)."""
    return datetime.datetime.fromtimestamp((minute + 1) * 60, datetime.UTC).isoformat()


class SloEvaluator:
    """Feed `add(minute, component, good, total, pane_index)`; call `advance_to(minute)` to evaluate every
    minute up to `minute` (inclusive) that has data in reach; it returns (status rows, alert transitions).
    `exclusions`: the SLO's `Exclusion`s (`SliConfig.exclusions_for`). `state()` and `restore()` save and
    take up everything evaluation has accumulated."""

    def __init__(self, slo, alerting, exclusions=()):
        self.slo = slo
        self.exclusions = list(exclusions)
        self.weights = [exact(w) for _, w in slo.slis()]
        self.target = exact(slo.target)
        self.budget = 1 - self.target
        self.timeslice_threshold = None if slo.timeslice_threshold is None else exact(slo.timeslice_threshold)
        self.rules = list(alerting.rules)
        self.min_events = alerting.min_events
        self.calendar_month = slo.window == "calendar_month"
        self.alert_windows = sorted({w for r in self.rules for w in (r.long_window_minutes, r.short_window_minutes)})
        self.keep_minutes = max(self.alert_windows)
        self.idle_minutes = max(r.short_window_minutes for r in self.rules)
        self.compliance_hours = slo.window_days * 24  # rolling windows only
        periods = (28, 29, 30, 31) if self.calendar_month else (slo.window_days,)
        self.thresholds = {days: [r.threshold(days) for r in self.rules] for days in periods}
        self.reasons = sorted({e.reason for e in self.exclusions})
        self.hour_slots = 31 * 24 if self.calendar_month else self.compliance_hours
        components, excluded = len(self.weights), 1 + len(self.reasons)
        self.now = None  # last evaluated minute
        self.oldest_hour = None  # the compliance window's first hour
        self.pending = {}  # minute -> {component: (good, total, pane_index)}, minutes after `now`
        # slot (minute % keep_minutes) * components + component: c0, c1, events (`_contribution`); pane index
        self.minute_counts = [array("B", bytes(self.keep_minutes * components)) for _ in range(3)]
        self.minute_panes = array("B", bytes(self.keep_minutes * components))
        # slot (hour % hour_slots) * components + component: the hour's c0, c1, events
        self.hour_counts = [array("B", bytes(self.hour_slots * components)) for _ in range(3)]
        # slot (hour % hour_slots) * excluded + j: the hour's excluded minutes, any reason (j = 0) or reasons[j - 1]
        self.hour_excluded = array("B", bytes(self.hour_slots * excluded))
        self.window_sums = {w: self._zeros() for w in self.alert_windows}
        self.compliance = self._zeros()
        self.excluded = [0] * excluded  # the same over the compliance window
        self.firing = [False] * len(self.rules)
        self.changing_since = [None] * len(self.rules)  # first minute of a run where condition != firing
        self.last_data_minute = None

    def _zeros(self):
        return [[0, 0, 0] for _ in self.weights]

    def _contribution(self, good, total):
        """(c0, c1, events): good/total for occurrences; good minute/minute with data for timeslices."""
        if self.slo.method == "timeslices":
            good_minute = total and exact(good) >= self.timeslice_threshold * exact(total)
            return (1 if good_minute else 0, 1 if total else 0, total)
        return (good, total, total)

    # -- input ---------------------------------------------------------------------------------------------
    def add(self, minute, component, good, total, pane_index=0):
        """Records a window's counts (a later pane replaces an earlier one). Returns ADDED, EXCLUDED (a minute
        an exclusion covers: never counted) or TOO_OLD (data older than the longest alert window, which can
        no longer be applied exactly); the caller counts the last two."""
        if self.now is not None and minute <= self.now - self.keep_minutes:
            return TOO_OLD
        if self.exclusion_reasons(minute):
            return EXCLUDED
        if self.now is None or minute > self.now:  # folded in when evaluation reaches that minute
            bucket = self.pending.setdefault(minute, {})
            old = bucket.get(component)
            if old is None or old[2] <= pane_index:  # else an older pane of a window already superseded
                bucket[component] = (good, total, pane_index)
            return ADDED
        # late data for an evaluated minute: apply the difference wherever that minute is still counted
        i = (minute % self.keep_minutes) * len(self.weights) + component
        if self.minute_panes[i] > pane_index:
            return ADDED
        before = self._minute(i)
        after = self._contribution(good, total)
        self._store_minute(i, after, pane_index)
        delta = [a - b for a, b in zip(after, before, strict=True)]
        for w, sums in self.window_sums.items():
            if minute > self.now - w:
                self._apply(sums[component], delta, 1)
        hour = minute // _MINUTES_PER_HOUR
        if hour >= self.oldest_hour:
            self._add_packed(self.hour_counts, (hour % self.hour_slots) * len(self.weights) + component, delta)
            self._apply(self.compliance[component], delta, 1)
        self.last_data_minute = max(self.last_data_minute or minute, minute)
        return ADDED

    def exclusion_reasons(self, minute):
        """The reasons of the exclusions covering minute index `minute`, sorted; [] when none does."""
        return sorted({e.reason for e in self.exclusions if e.covers(minute)})

    @staticmethod
    def _apply(target, values, sign):
        for i, v in enumerate(values):
            target[i] += sign * v

    def _minute(self, i):
        c0, c1, events = self.minute_counts
        return c0[i], c1[i], events[i]

    def _store_minute(self, i, values, pane_index):
        for k, v in enumerate(values):
            self.minute_counts[k] = _stored(self.minute_counts[k], i, v)
        self.minute_panes = _stored(self.minute_panes, i, pane_index)

    @staticmethod
    def _add_packed(columns, i, values):
        for k, v in enumerate(values):
            columns[k] = _stored(columns[k], i, columns[k][i] + v)

    # -- state -------------------------------------------------------------------------------------------
    def _layout(self):
        """What the state's shape depends on: a config that changes it cannot reuse the state."""
        return (
            self.slo.method,
            self.keep_minutes,
            len(self.weights),
            self.hour_slots,
            tuple(self.alert_windows),
            len(self.rules),
            tuple(self.reasons),
        )

    def state(self):
        """The evaluation state as bytes, for `restore`: the packed arrays as their raw bytes; the running sums,
        alert states and minutes not yet evaluated as they are."""
        return pickle.dumps((self._layout(), *(getattr(self, name) for name in _STATE)), pickle.HIGHEST_PROTOCOL)

    def restore(self, data):
        """Takes up the state `state()` returned. Returns False, keeping the current state, for a state
        saved under a config of another shape (alert windows, components, compliance window, rules,
        exclusion reasons or method)."""
        layout, *values = pickle.loads(data)
        if layout != self._layout():
            return False
        for name, value in zip(_STATE, values, strict=True):
            setattr(self, name, value)
        return True

    # -- evaluation ----------------------------------------------------------------------------------------
    def first_pending_minute(self):
        return min(self.pending) if self.pending else None

    def active(self, minute):
        """Evaluate (and emit) minute `minute`: data within the longest short window, or an alert firing."""
        recent = self.last_data_minute is not None and minute - self.last_data_minute < self.idle_minutes
        if self.slo.minutes_without_data == "bad" and not recent and self.last_data_minute is not None:
            # missing minutes keep it firing: stop once every alert window holds only them (a drain ends)
            return any(self.firing) and minute - self.last_data_minute < self.keep_minutes
        return recent or any(self.firing)

    def advance_to(self, minute):
        rows, alerts = [], []
        if self.now is None:
            first = self.first_pending_minute()
            if first is None or first > minute:
                return rows, alerts
            self.now = first - 1
        while self.now < minute:
            self._step()
            if self.active(self.now):
                row, transitions = self._evaluate()
                rows.append(row)
                alerts.extend(transitions)
            else:  # nothing fires and no rule's short window holds data: every condition is false
                self.changing_since = [None] * len(self.rules)
        return rows, alerts

    def _step(self):
        """Moves evaluation one minute forward, folding that minute in and expiring what leaves."""
        m = self.now = self.now + 1
        components = len(self.weights)
        entering = self.pending.pop(m, {})
        contributions = {c: self._contribution(g, t) for c, (g, t, _) in entering.items()}
        if contributions:
            self.last_data_minute = m
        hour = m // _MINUTES_PER_HOUR
        if self.oldest_hour is None or m % _MINUTES_PER_HOUR == 0:
            self._enter_hour(hour, m)
        hour_slot = hour % self.hour_slots
        reasons = self.exclusion_reasons(m)
        if self.slo.minutes_without_data == "bad" and not reasons:
            for c in range(components):
                contributions.setdefault(c, (0, 1, 0))  # a bad minute, no events; a late row replaces it
        if reasons:
            for j in (0, *(1 + self.reasons.index(r) for r in reasons)):
                i = hour_slot * len(self.excluded) + j
                self.hour_excluded = _stored(self.hour_excluded, i, self.hour_excluded[i] + 1)
                self.excluded[j] += 1
        for c, values in contributions.items():
            self._add_packed(self.hour_counts, hour_slot * components + c, values)
            self._apply(self.compliance[c], values, 1)
        for w, sums in self.window_sums.items():
            for c, values in contributions.items():
                self._apply(sums[c], values, 1)
            leaving = ((m - w) % self.keep_minutes) * components
            for c in range(components):
                values = self._minute(leaving + c)
                if any(values):
                    self._apply(sums[c], values, -1)
        slot = (m % self.keep_minutes) * components  # the slot of m - keep_minutes, which just left
        for c in range(components):
            self._store_minute(slot + c, contributions.get(c, (0, 0, 0)), entering[c][2] if c in entering else 0)

    def _enter_hour(self, hour, m):
        """Expires the hours the compliance window leaves as it reaches `hour`; empties that hour's slot."""
        components, excluded = len(self.weights), len(self.excluded)
        if self.oldest_hour is None:
            self.oldest_hour = hour
        expired = _month(m)[0] - 1 if self.calendar_month else hour - self.compliance_hours
        while self.oldest_hour <= expired:
            slot = self.oldest_hour % self.hour_slots
            for c in range(components):
                values = tuple(counts[slot * components + c] for counts in self.hour_counts)
                self._apply(self.compliance[c], values, -1)
            for j in range(excluded):
                self.excluded[j] -= self.hour_excluded[slot * excluded + j]
            self.oldest_hour += 1
        slot = hour % self.hour_slots
        for c in range(components):
            for counts in self.hour_counts:
                counts[slot * components + c] = 0
        for j in range(excluded):
            self.hour_excluded[slot * excluded + j] = 0

    def ratio(self, sums):
        """Weighted mean of the components' ratios, a Fraction; None without data."""
        weighted = [(w, _quotient(c0, c1)) for w, (c0, c1, _) in zip(self.weights, sums, strict=True) if c1 > 0]
        if len(weighted) < 2:
            return weighted[0][1] if weighted else None
        return sum(w * r for w, r in weighted) / sum(w for w, _ in weighted)

    def burn_rate(self, sums):
        ratio = self.ratio(sums)
        return None if ratio is None else (1 - ratio) / self.budget

    def _evaluate(self):
        slo, budget = self.slo, self.budget
        period_days = _month(self.now)[1] if self.calendar_month else slo.window_days
        compliance = self.ratio(self.compliance)
        events = sum(e for _, _, e in self.compliance)
        single_occurrences = len(self.weights) == 1 and slo.method == "occurrences"
        consumed = None if compliance is None else float((1 - compliance) / budget)
        allowed_bad = budget * events if single_occurrences else None
        bad = events - self.compliance[0][0] if single_occurrences else None
        burn = {w: self.burn_rate(s) for w, s in self.window_sums.items()}
        at = minute_iso(self.now)
        transitions = []
        for i, rule in enumerate(self.rules):
            threshold = self.thresholds[period_days][i]
            long_burn, short_burn = burn[rule.long_window_minutes], burn[rule.short_window_minutes]
            long_events = sum(e for _, _, e in self.window_sums[rule.long_window_minutes])
            condition = (
                long_events >= self.min_events
                and long_burn is not None
                and short_burn is not None
                and long_burn > threshold
                and short_burn > threshold
            )
            if condition == self.firing[i]:
                self.changing_since[i] = None
                continue
            if self.changing_since[i] is None:
                self.changing_since[i] = self.now
            hold = rule.for_minutes if condition else rule.keep_firing_for_minutes
            if self.now - self.changing_since[i] < hold:
                continue
            self.firing[i], self.changing_since[i] = condition, None
            transitions.append(
                {
                    "slo": slo.name,
                    "state": "FIRING" if condition else "RESOLVED",
                    "severity": rule.severity,
                    "at": at,
                    "long_window_minutes": rule.long_window_minutes,
                    "short_window_minutes": rule.short_window_minutes,
                    "threshold": float(threshold),
                    "burn_rate_long": _float(long_burn),
                    "burn_rate_short": _float(short_burn),
                    "budget_remaining": None if consumed is None else 1 - consumed,
                }
            )
        row = {
            "slo": slo.name,
            "evaluated_at": at,
            "status": "NO_DATA" if compliance is None else ("ALERTING" if any(self.firing) else "OK"),
            "method": slo.method,
            "target": slo.target,
            "window": slo.window,
            "window_days": period_days,
            "compliance": _float(compliance),
            "events": events,
            "bad_events": bad,
            "error_budget": float(budget),
            "budget_consumed": consumed,
            "budget_remaining": None if consumed is None else 1 - consumed,
            "allowed_bad_events": _float(allowed_bad),
            "allowed_bad_events_left": None if allowed_bad is None else float(allowed_bad - exact(bad)),
            "burn_rates": [
                {"window_minutes": w, "burn_rate": _float(burn[w]), "events": sum(e for _, _, e in self.window_sums[w])}
                for w in self.alert_windows
            ],
            "excluded_minutes": self.excluded[0],
            "exclusions": [
                {"reason": reason, "minutes": n} for reason, n in zip(self.reasons, self.excluded[1:], strict=True) if n
            ],
            "alerts_firing": [
                f"{r.severity}:{r.long_window_minutes}m/{r.short_window_minutes}m"
                for r, on in zip(self.rules, self.firing, strict=True)
                if on
            ],
        }
        return row, transitions
