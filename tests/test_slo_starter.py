"""The starter SLO sample (availability 99.95% and 90% of requests within 500 ms, 28 days) on the bundled
sample logs, checked against the generator's ground truth: compliance and budget from the raw requests, and
the alert transitions from a brute-force recount of every alert window of every minute."""

import datetime
import itertools
from fractions import Fraction
from pathlib import Path

import pytest

from pipelines import sli
from pipelines.samples import SLI_DIR
from tests.oracle import DEFAULT, sample_truth
from tests.test_sli_pipeline import read_rows

STARTER = SLI_DIR / "starter_slos.yaml"
IS_BAD = dict(DEFAULT)
SLOS = {"availability": (IS_BAD["availability"], Fraction(9995, 10000)), "latency": (IS_BAD["latency_500ms"], 0.9)}
# the default rules for a 28-day window: (long, short, threshold = share x 28 x 1440 / long)
RULES = [(60, 5, Fraction(1344, 100)), (360, 30, Fraction(56, 10)), (4320, 360, Fraction(14, 15))]


@pytest.fixture(scope="module")
def starter_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slo_starter")
    sli.run(["--sli_config", str(STARTER), "--output_dir", str(out)])
    return out, sample_truth()[1]


@pytest.mark.parametrize("slo", sorted(SLOS))
def test_compliance_and_budget_match_the_raw_requests(starter_run, slo):
    out, truths = starter_run
    is_bad, target = SLOS[slo]
    bad = sum(bool(is_bad(t)) for t in truths)
    assert (slo, bad, len(truths)) in {("availability", 72, 28800), ("latency", 281, 28800)}
    last = max((r for r in read_rows(out, "slo_status") if r["slo"] == slo), key=lambda r: r["evaluated_at"])
    budget = 1 - float(target)
    assert last["events"] == len(truths) and last["bad_events"] == bad
    assert last["compliance"] == pytest.approx(1 - bad / len(truths))
    assert last["allowed_bad_events"] == pytest.approx(budget * len(truths))
    assert last["budget_remaining"] == pytest.approx(1 - (bad / len(truths)) / budget)
    assert last["window_days"] == 28


def _brute_force_transitions(truths, is_bad, target):
    """[(state, at, long window)], each window of each minute recounted from cumulative per-minute counts."""
    minutes = [int(t["t"] // 60) for t in truths]
    first, last = min(minutes), max(minutes)
    bad, total = [0] * (last - first + 362), [0] * (last - first + 362)  # index: minute - first + 1
    for m, t in zip(minutes, truths, strict=True):
        bad[m - first + 1] += bool(is_bad(t))
        total[m - first + 1] += 1
    bad, total = list(itertools.accumulate(bad)), list(itertools.accumulate(total))
    budget = 1 - Fraction(str(target))
    firing, transitions = {}, []
    for i in range(1, len(bad)):

        def window(w, i=i):
            return bad[i] - bad[max(i - w, 0)], total[i] - total[max(i - w, 0)]

        for long, short, threshold in RULES:
            (lb, lt), (sb, st) = window(long), window(short)
            on = (
                lt >= 100 and st > 0 and Fraction(lb, lt) / budget > threshold and Fraction(sb, st) / budget > threshold
            )
            if on != firing.get(long, False):
                firing[long] = on
                at = datetime.datetime.fromtimestamp((first + i) * 60, datetime.UTC).isoformat()
                transitions.append(("FIRING" if on else "RESOLVED", at, long))
    return transitions


@pytest.mark.parametrize("slo", sorted(SLOS))
def test_alerts_match_a_brute_force_recount(starter_run, slo):
    out, truths = starter_run
    expected = _brute_force_transitions(truths, *SLOS[slo])
    alerts = [a for a in read_rows(out, "alerts") if a["slo"] == slo]
    actual = sorted((a["state"], a["at"], a["long_window_minutes"]) for a in alerts)
    assert actual == sorted(expected)
    if slo == "availability":  # the sample's 14:00-14:20 incident pages, as the manual says
        assert {("FIRING", "2026-11-22T14:03:00+00:00", 60), ("RESOLVED", "2026-11-22T14:25:00+00:00", 60)} < set(
            actual
        )


def test_the_manual_shows_the_starter_config():
    manual = (Path(__file__).resolve().parent.parent / "docs" / "sli.md").read_text()
    assert STARTER.read_text().strip() in manual
