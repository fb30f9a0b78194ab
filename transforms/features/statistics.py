"""Per-split feature statistics: the accumulator (no Beam), and the composite computing the statistics
artifact (count, missing, min, max, mean, std, quantiles, histogram; top values and distinct count for
strings) in a few passes.

Mean and variance merge with Chan et al.'s pairwise update (stable for large values, up to about 1e150
in magnitude); std is the population std (ddof=0). Quantiles come from a DDSketch with 1% relative
accuracy; histograms have equal-width bins between the split's min and max (a second pass), binned with
np.histogram's rule on one edge list (`histogram_edges`) that the skew check reuses from the artifact.
"""

import bisect
import itertools
import math

import apache_beam as beam
from apache_beam.transforms import window
from ddsketch import DDSketch

from transforms.core.accumulators import MergingCombineFn

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 10
TOP_VALUES = 10
SKETCH_ACCURACY = 0.01


class NumericAccumulator:
    """count (rows), missing, n (values), mean, m2, min, max and a quantile sketch of one feature."""

    def __init__(self):
        self.count = self.missing = self.n = 0
        self.mean = self.m2 = 0.0
        self.min = self.max = None
        self.sketch = DDSketch(SKETCH_ACCURACY)

    def add(self, value):
        self.count += 1
        if value is None:
            self.missing += 1
            return self
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.sketch.add(value)
        return self

    def merge(self, other):
        if other.n:
            n = self.n + other.n
            delta = other.mean - self.mean
            self.mean += delta * other.n / n
            self.m2 += other.m2 + delta * delta * self.n * other.n / n
            self.n = n
            self.min = other.min if self.min is None else min(self.min, other.min)
            self.max = other.max if self.max is None else max(self.max, other.max)
            self.sketch.merge(other.sketch)
        self.count += other.count
        self.missing += other.missing
        return self

    def extract(self):
        stats = {"type": "numeric", "count": self.count, "missing": self.missing}
        if not self.n:
            return {**stats, "min": None, "max": None, "mean": None, "std": None, "quantiles": {}}
        return {
            **stats,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": math.sqrt(max(self.m2, 0.0) / self.n),
            "quantiles": {str(q): self.sketch.get_quantile_value(q) for q in QUANTILES},
        }


class StringAccumulator:
    """count and missing of a string feature (its values are counted exactly elsewhere)."""

    def __init__(self):
        self.count = self.missing = 0

    def add(self, value):
        self.count += 1
        self.missing += value is None
        return self

    def merge(self, other):
        self.count += other.count
        self.missing += other.missing
        return self

    def extract(self):
        return {"type": "string", "count": self.count, "missing": self.missing}


class SplitStats:
    """The accumulators of every feature of one split."""

    def __init__(self, numeric_features, string_features):
        self.rows = 0
        self.features = {
            **{f: NumericAccumulator() for f in numeric_features},
            **{f: StringAccumulator() for f in string_features},
        }

    def add(self, row):
        self.rows += 1
        for name, accumulator in self.features.items():
            accumulator.add(row.get(name))
        return self

    def merge(self, other):
        self.rows += other.rows
        for name, accumulator in self.features.items():
            accumulator.merge(other.features[name])
        return self

    def extract(self):
        return {"rows": self.rows, "features": {n: a.extract() for n, a in self.features.items()}}


class SplitStatsFn(MergingCombineFn):
    def __init__(self, numeric_features, string_features):
        self._numeric, self._string = list(numeric_features), list(string_features)

    def create_accumulator(self):
        return SplitStats(self._numeric, self._string)

    def add_input(self, accumulator, row):
        return accumulator.add(row)

    def extract_output(self, accumulator):
        return accumulator.extract()


def histogram_edges(low, high, bins=HISTOGRAM_BINS):
    """The bin edges from a feature's min to its max: low + i * width with width = (high - low) / bins, then
    high, as np.histogram computes them; [low, high] (one bin) when all values are equal, [] without values."""
    if low is None:
        return []
    if high <= low:
        return [low, high]
    if math.isinf(high - low):  # a range wider than the largest float: the same edges, computed halved
        return [2 * e for e in histogram_edges(low / 2, high / 2, bins)]
    width = (high - low) / bins
    return [low + i * width for i in range(bins)] + [high]


def histogram_bin(value, edges):
    """Index of value's bin among `edges` by np.histogram's rule: [low, high), the last bin [low, high];
    -1 below the first edge, len(edges) - 1 above the last."""
    i = bisect.bisect_right(edges, value) - 1
    return i - 1 if value == edges[-1] else i


def histogram(counts, edges):
    """[{low, high, count}] of the bins between `edges`, from {bin index: count}."""
    return [
        {"low": low, "high": high, "count": counts.get(i, 0)} for i, (low, high) in enumerate(itertools.pairwise(edges))
    ]


def _split_edges(split_stats, numeric):
    split, stats = split_stats
    return split, {
        name: histogram_edges(stats["features"][name]["min"], stats["features"][name]["max"]) for name in numeric
    }


def _histogram_keys(split_row, edges):
    split, row = split_row
    for name, feature_edges in edges[split].items():
        value = row.get(name)
        if value is not None:
            yield (split, name, histogram_bin(value, feature_edges))


def _string_values(split_row, strings):
    split, row = split_row
    for name in strings:
        if row.get(name) is not None:
            yield (split, name, row[name])


def _assemble(split_and_parts, histograms=True):
    """(split, {"stats": [...], "bins": [...], "values": [...]}) -> the split's statistics artifact (numeric
    features without "histogram" when `histograms` is off: then there are no "bins")."""
    split, parts = split_and_parts
    [stats] = parts["stats"]
    bins, values = {}, {}
    for (name, index), count in parts.get("bins", ()):
        bins.setdefault(name, {})[index] = count
    for name, top, distinct in parts["values"]:
        values[name] = (top, distinct)
    for name, feature in stats["features"].items():
        if feature["type"] == "numeric":
            if histograms:
                feature["histogram"] = histogram(bins.get(name, {}), histogram_edges(feature["min"], feature["max"]))
        else:
            top, distinct = values.get(name, ([], 0))
            feature["distinct"] = distinct
            feature["top_values"] = [{"value": v, "count": c} for c, v in sorted(top, key=lambda cv: (-cv[0], cv[1]))]
    return {"split": split, **stats}


def _top_and_distinct(keyed):
    (split, name), parts = keyed
    [top] = parts["top"]
    [distinct] = parts["distinct"]
    return split, (name, top, distinct)


class ComputeStatistics(beam.PTransform):
    """(split, row with None for missing values) -> one statistics artifact per split and window. In the
    global window (batch) every split of `splits` gets one, also when it is empty; in other windows only
    the splits with rows do (an empty split has no window to belong to).

    `histograms=False` leaves out the numeric histograms: their second pass needs each split's (window's)
    min and max as a side input, so it holds back all of a window's rows until the window closes (and
    the local BundleBasedDirectRunner fails when a bundle without elements reaches a ParDo with a
    windowed side input)."""

    def __init__(self, splits, numeric_features, string_features, top_k=TOP_VALUES, histograms=True):
        super().__init__()
        self._splits, self._numeric, self._strings, self._top_k = (
            list(splits),
            list(numeric_features),
            list(string_features),
            top_k,
        )
        self._histograms = histograms

    def expand(self, rows):
        numeric, strings = self._numeric, self._strings
        stats = rows | "StatsPerSplit" >> beam.CombinePerKey(SplitStatsFn(numeric, strings))
        if isinstance(rows.windowing.windowfn, window.GlobalWindows):
            empty = SplitStats(numeric, strings).extract()
            stats = (
                (stats, rows.pipeline | "AllSplits" >> beam.Create([(s, empty) for s in self._splits]))
                | "WithEmptySplits" >> beam.Flatten()
                | "OnePerSplit" >> beam.CombinePerKey(lambda found: max(found, key=lambda s: s["rows"]))
            )
        parts = {"stats": stats}
        if self._histograms:
            edges = stats | "HistogramEdges" >> beam.Map(_split_edges, numeric)
            parts["bins"] = (
                rows
                | "HistogramBins" >> beam.FlatMap(_histogram_keys, beam.pvalue.AsDict(edges))
                | "CountBins" >> beam.combiners.Count.PerElement()
                | "BinsBySplit" >> beam.Map(lambda kc: (kc[0][0], ((kc[0][1], kc[0][2]), kc[1])))
            )
        counted = (
            rows
            | "StringValues" >> beam.FlatMap(_string_values, strings)
            | "CountValues" >> beam.combiners.Count.PerElement()
            | "ByFeature" >> beam.Map(lambda kc: ((kc[0][0], kc[0][1]), (kc[1], kc[0][2])))
        )
        top = counted | "TopValues" >> beam.combiners.Top.PerKey(self._top_k, key=lambda cv: cv[0])
        distinct = counted | "DistinctValues" >> beam.combiners.Count.PerKey()
        parts["values"] = (
            {"top": top, "distinct": distinct}
            | "JoinByFeature" >> beam.CoGroupByKey()
            | "ValuesBySplit" >> beam.Map(_top_and_distinct)
        )
        return parts | "JoinBySplit" >> beam.CoGroupByKey() | "Assemble" >> beam.Map(_assemble, self._histograms)
