"""The statistics accumulator without Beam, against numpy: one accumulator, merged partial accumulators,
and merged-then-merged-again (tree) accumulators; empty, all-missing, single-value and very large data;
quantiles against ddsketch's own DDSketch fed value by value; any split of the values into batches giving
the same statistics; histogram bins against np.histogram, values on the edges included."""

import collections
import itertools
import math
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.features.statistics import (
    QUANTILES,
    SKETCH_ACCURACY,
    ComputeStatistics,
    NumericAccumulator,
    SplitStats,
    StringAccumulator,
    bin_counts,
    histogram,
    histogram_edges,
    raw_table,
)


def _values(seed, n=5000, scale=1.0, missing=0.1):
    rng = random.Random(seed)
    return [None if rng.random() < missing else rng.gauss(3.0, 2.0) * scale for _ in range(n)]


def _array(values):
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _one(values):
    return NumericAccumulator().add(_array(values)).extract()


def _merged(values, parts):
    accs = [NumericAccumulator().add(_array(values[i::parts])) for i in range(parts)]
    first = accs[0]
    for acc in accs[1:]:
        first.merge(acc)
    return first.extract()


def _tree(values):
    leaves = [NumericAccumulator().add(_array(values[i::8])) for i in range(8)]
    while len(leaves) > 1:
        leaves = [leaves[i].merge(leaves[i + 1]) for i in range(0, len(leaves), 2)]
    return leaves[0].extract()


@pytest.mark.parametrize("combine", [_one, lambda v: _merged(v, 7), _tree])
@pytest.mark.parametrize("scale", [1.0, 1e12])
def test_numeric_statistics_match_numpy(combine, scale):
    values = _values(1, scale=scale)
    present = np.array([v for v in values if v is not None])
    stats = combine(values)
    assert (stats["count"], stats["missing"]) == (len(values), len(values) - len(present))
    assert stats["min"] == present.min() and stats["max"] == present.max()
    assert stats["mean"] == pytest.approx(present.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(present.std(), rel=1e-9)
    ordered = np.sort(present)
    for q, value in stats["quantiles"].items():
        exact = ordered[int(float(q) * (len(ordered) - 1))]  # the value at rank q (n - 1), as DDSketch ranks
        assert abs(value - exact) <= 0.01 * abs(exact) * (1 + 1e-9), (q, value, exact)  # 1% relative accuracy


def test_empty_all_missing_and_single_value():
    assert _one([]) == {
        "type": "numeric",
        "count": 0,
        "missing": 0,
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
        "quantiles": {},
    }
    all_missing = _one([None] * 5)
    assert (all_missing["count"], all_missing["missing"], all_missing["mean"]) == (5, 5, None)
    single = _tree([7.5] * 40)
    assert (single["min"], single["max"], single["mean"], single["std"]) == (7.5, 7.5, 7.5, 0.0)
    assert all(v == pytest.approx(7.5, rel=0.01) for v in single["quantiles"].values())
    assert histogram({0: 40}, histogram_edges(7.5, 7.5)) == [{"low": 7.5, "high": 7.5, "count": 40}]


def test_merging_with_an_empty_accumulator_changes_nothing():
    values = _values(2, n=100)
    full = NumericAccumulator().add(_array(values))
    before = full.extract()
    assert full.merge(NumericAccumulator()).extract() == before
    assert NumericAccumulator().merge(full).extract() == before


def _binned(values):
    """The histogram the statistics report for `values`, through the binning functions."""
    edges = histogram_edges(min(values), max(values))
    return histogram(bin_counts(np.asarray(values, np.float64), edges), edges)


def test_histogram_bins_cover_min_to_max():
    values = np.random.default_rng(3).uniform(-5, 5, 1000)
    low, high = values.min(), values.max()
    bins = _binned(values)
    expected, edges = np.histogram(values, bins=10, range=(low, high))
    assert [b["count"] for b in bins] == expected.tolist()
    assert [b["low"] for b in bins] == pytest.approx(edges[:-1].tolist())
    assert bins[-1]["high"] == high


ON_EDGES = {
    "tenths": [i / 10 for i in range(11)],  # 0.3 is just below the edge 0 + 3 * 0.1 = 0.30000000000000004
    "the edges themselves": np.linspace(-3.7, 12.1, 11).tolist(),
    "clip-like range": np.linspace(11.5, 14.5, 31).tolist(),
    "thousandths": [i / 1000 for i in range(3, 14)],
}


@pytest.mark.parametrize("values", ON_EDGES.values(), ids=ON_EDGES)
def test_values_on_every_edge_are_binned_as_np_histogram(values):
    values = values * 3 + np.random.default_rng(4).uniform(min(values), max(values), 50).tolist()
    bins = _binned(values)
    counts, edges = np.histogram(values, bins=10, range=(min(values), max(values)))
    assert [b["count"] for b in bins] == counts.tolist()
    assert [b["low"] for b in bins] + [bins[-1]["high"]] == edges.tolist()  # exactly, not approximately


def test_the_statistics_transform_bins_values_on_edges_as_np_histogram():
    values = [i / 10 for i in range(11)] * 4 + [0.25, 0.55]
    counts, edges = np.histogram(values, bins=10, range=(0.0, 1.0))
    expected = [
        {"low": low, "high": high, "count": c}
        for low, high, c in zip(edges[:-1].tolist(), edges[1:].tolist(), counts.tolist(), strict=True)
    ]
    with TestPipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as p:
        tables = [raw_table([{"x": v} for v in values[i::3]], ["x"], []) for i in range(3)]  # three batches
        stats = p | beam.Create([("train", t) for t in tables]) | ComputeStatistics(["train"], ["x"], [])
        assert_that(stats | beam.Map(lambda artifact: artifact["features"]["x"]["histogram"]), equal_to([expected]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30))
def test_any_finite_values_get_finite_ordered_edges_and_np_histogram_counts(values):
    edges = histogram_edges(min(values), max(values))
    assert all(math.isfinite(e) for e in edges) and edges == sorted(edges)
    assert (edges[0], edges[-1]) == (min(values), max(values))
    bins = _binned(values)
    assert [b["count"] for b in bins] == np.histogram(values, bins=np.array(edges))[0].tolist()
    low, high = min(values), max(values)
    if high > low and math.isfinite(high - low) and (high - low) / 10 > 0:  # np.linspace's ordinary case
        assert edges == np.linspace(low, high, 11).tolist()


def test_split_stats_counts_rows_and_strings():
    stats = SplitStats(["x"], ["c"])
    stats.add(raw_table([{"x": 1.0, "c": "a"}, {"x": None, "c": None}], ["x"], ["c"]))
    stats.add(raw_table([{"c": "b"}, {"x": 2.0, "c": "b"}], ["x"], ["c"]))
    out = stats.extract()
    assert out["rows"] == 4
    assert (out["features"]["x"]["count"], out["features"]["x"]["missing"]) == (4, 2)
    assert out["features"]["c"] == {
        "type": "string",
        "count": 4,
        "missing": 1,
        "distinct": 2,
        "top_values": [{"value": "b", "count": 2}, {"value": "a", "count": 1}],
    }


@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e300])
def test_quantiles_are_ddsketchs_fed_value_by_value(scale):
    values = [v * scale for v in _values(6, n=3000, missing=0.0)] + [0.0] * 30 + [-0.0] * 3
    reference = DDSketch(SKETCH_ACCURACY)
    for v in values:
        reference.add(v)
    got = _tree(values)["quantiles"]
    assert got == {str(q): reference.get_quantile_value(q) for q in QUANTILES}


def test_top_values_are_exact_counts_ties_by_value():
    values = ["b", "a", "c", "a", "b", None, "d", "a"]
    acc = (
        StringAccumulator(top_k=2).add(pa.array(values[:3])).merge(StringAccumulator(top_k=2).add(pa.array(values[3:])))
    )
    assert acc.extract() == {
        "type": "string",
        "count": 8,
        "missing": 1,
        "distinct": 4,
        "top_values": [{"value": "a", "count": 3}, {"value": "b", "count": 2}],
    }


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e100, 1e100, allow_nan=False)), max_size=60),
    st.lists(st.integers(0, 60), max_size=5),
)
def test_any_cut_into_batches_gives_the_statistics_of_one_batch(values, cuts):
    """Counts, min, max and quantiles exactly; mean and std to rounding (the Chan merge of partial sums)."""
    bounds = [0, *sorted(c for c in cuts if c <= len(values)), len(values)]
    acc = NumericAccumulator()
    for start, end in itertools.pairwise(bounds):
        acc.add(_array(values[start:end]))
    whole, got = _one(values), acc.extract()
    present = np.array([v for v in values if v is not None])
    assert {k: got[k] for k in ("count", "missing", "min", "max", "quantiles")} == {
        k: whole[k] for k in ("count", "missing", "min", "max", "quantiles")
    }
    if len(present):
        scale = np.abs(present).max()
        assert got["mean"] == pytest.approx(present.mean(), rel=1e-9, abs=1e-12 * scale)
        assert got["std"] == pytest.approx(present.std(), rel=1e-6, abs=1e-9 * scale)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=60), st.lists(st.integers(0, 60), max_size=5))
def test_any_strings_cut_into_batches_are_counted_exactly(values, cuts):
    bounds = [0, *sorted(c for c in cuts if c <= len(values)), len(values)]
    acc = StringAccumulator()
    for start, end in itertools.pairwise(bounds):
        acc.merge(StringAccumulator().add(pa.array(values[start:end], pa.string())))
    counts = collections.Counter(v for v in values if v is not None)
    top = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:10]
    assert acc.extract() == {
        "type": "string",
        "count": len(values),
        "missing": values.count(None),
        "distinct": len(counts),
        "top_values": [{"value": v, "count": c} for v, c in top],
    }
