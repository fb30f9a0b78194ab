"""The accumulator alone (no Beam): exact counts, and percentiles within the documented 1% bound."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.sli.stats import LATENCY_RELATIVE_ACCURACY, PERCENTILES, JourneyWindowStats


def _latencies(n, seed=1):
    rng = random.Random(seed)
    # lognormal body plus a slow tail, like real request latency
    return [rng.lognormvariate(4, 0.7) * (10 if rng.random() < 0.02 else 1) for _ in range(n)]


def _fill(values):
    stats = JourneyWindowStats()
    for v in values:
        stats.add(v, (v > 100, v > 500))
    return stats


def _check_percentiles(stats, values):
    data = np.sort(np.asarray(values))
    for p in PERCENTILES:
        rank = p / 100 * (len(data) - 1)
        low, high = data[math.floor(rank)], data[math.ceil(rank)]
        estimate = stats.percentiles_ms()[p]
        # within the relative bound of the exact order statistic(s) at that rank
        assert low * (1 - LATENCY_RELATIVE_ACCURACY) <= estimate <= high * (1 + LATENCY_RELATIVE_ACCURACY), p


def _check_exact(stats, values):
    assert stats.count == len(values)
    assert stats.bad == [sum(v > 100 for v in values), sum(v > 500 for v in values)]
    assert stats.latency_sum_ms == pytest.approx(sum(values))
    assert stats.latency_max_ms == max(values)


def test_one_accumulator():
    values = _latencies(20000)
    stats = _fill(values)
    _check_exact(stats, values)
    _check_percentiles(stats, values)


def test_merged_partial_accumulators():
    values = _latencies(20000, seed=2)
    parts = [_fill(values[i::7]) for i in range(7)]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    _check_exact(merged, values)
    _check_percentiles(merged, values)


def test_merge_into_empty_and_tree_merge():
    values = _latencies(5000, seed=3)
    left = JourneyWindowStats().merge(_fill(values[:1000])).merge(JourneyWindowStats())
    right = _fill(values[1000:3000]).merge(_fill(values[3000:]))
    total = JourneyWindowStats().merge(left.merge(right))
    _check_exact(total, values)
    _check_percentiles(total, values)


def test_single_value_and_empty():
    stats = _fill([42.0])
    for p in PERCENTILES:
        assert stats.percentiles_ms()[p] == pytest.approx(42.0, rel=LATENCY_RELATIVE_ACCURACY)
    assert JourneyWindowStats().percentiles_ms() == dict.fromkeys(PERCENTILES)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(st.floats(0, 1e9, allow_nan=False), st.sampled_from([0.0, 5e-324, 1e-9, 1.0, 100.0])),
            max_size=60,
        ),
        max_size=4,
    )
)
def test_percentiles_are_ddsketchs_quantiles(parts):
    """percentiles_ms (one pass over the bins) gives what DDSketch's get_quantile_value gives for each
    percentile, on stats merged from any parts: zero latencies, one bin, wide ranges."""
    stats = JourneyWindowStats()
    for latencies in parts:
        stats.merge(JourneyWindowStats().add_batch(np.array(latencies), []) if latencies else JourneyWindowStats())
    expected = {p: stats.sketch.get_quantile_value(p / 100) if stats.count else None for p in PERCENTILES}
    assert stats.percentiles_ms() == expected
