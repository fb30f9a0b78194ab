"""Per-split feature statistics: the accumulator (no Beam), and the composite computing the statistics
artifact (count, missing, min, max, mean, std, quantiles, histogram; top values and distinct count for
strings) in two passes over batches of rows: one accumulator per split, then the histograms.

Every step takes a batch (a table of columns) at a time, with numpy and pyarrow.compute. Mean and variance
merge with Chan et al.'s pairwise update, a batch joining as a partial accumulator (stable for large
values, up to about 1e150 in magnitude); std is the population std (ddof=0). Quantiles come from DDSketch's
log mapping with 1% relative accuracy (LogSketch); string values are counted exactly; histograms have
equal-width bins between the split's min and max (a second pass), binned with np.histogram's rule on one
edge list (`histogram_edges`) that the skew check reuses from the artifact.
"""

import itertools
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms import window
from ddsketch.mapping import LogarithmicMapping

from transforms.core.accumulators import MergingCombineFn

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 10
TOP_VALUES = 10
SKETCH_ACCURACY = 0.01
ROWS_PER_BATCH = 4096  # rows per batch where records arrive one by one


class LogSketch:
    """DDSketch's quantile sketch with its logarithmic mapping computed on numpy arrays: a value v > 0 falls in
    bucket ceil(log_gamma(v)) (negative values mirrored, values within the mapping's smallest distinguishable
    value of 0 counted as zero), and a quantile is read back as ddsketch's DDSketch reads it, so any quantile
    is within SKETCH_ACCURACY of the value at its rank. Buckets are {key: count} dicts: merging adds them."""

    def __init__(self):
        self.positive, self.negative, self.zero = {}, {}, 0

    @staticmethod
    def _keys(values):
        return np.ceil(np.log(values) / math.log(2) * _MULTIPLIER).astype(np.int64)

    @staticmethod
    def _count_into(store, keys):
        for key, count in zip(*np.unique(keys, return_counts=True), strict=True):
            store[int(key)] = store.get(int(key), 0) + int(count)

    def add(self, values):
        tiny = _MAPPING.min_possible
        self._count_into(self.positive, self._keys(values[values > tiny]))
        self._count_into(self.negative, self._keys(-values[values < -tiny]))
        self.zero += int(np.count_nonzero(np.abs(values) <= tiny))
        return self

    def merge(self, other):
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        self.zero += other.zero
        return self

    @staticmethod
    def _key_at_rank(store, rank, lower):
        running = 0
        for key in sorted(store):
            running += store[key]
            if (lower and running > rank) or (not lower and running >= rank + 1):
                return key
        return max(store)

    def quantile(self, q):
        negatives = sum(self.negative.values())
        rank = q * (negatives + self.zero + sum(self.positive.values()) - 1)
        if rank < negatives:
            return -_MAPPING.value(self._key_at_rank(self.negative, negatives - rank - 1, lower=False))
        if rank < negatives + self.zero:
            return 0.0
        return _MAPPING.value(self._key_at_rank(self.positive, rank - negatives - self.zero, lower=True))


_MAPPING = LogarithmicMapping(SKETCH_ACCURACY)
_GAMMA_MANTISSA = 2 * SKETCH_ACCURACY / (1 - SKETCH_ACCURACY)
_MULTIPLIER = (1 / math.log1p(_GAMMA_MANTISSA)) * math.log(2)  # ddsketch's: log_gamma(v) = log2(v) * this


class Moments:
    """n, mean, m2, min and max of values present (a float64 array), added a batch at a time: a batch's own mean
    and m2 (numpy) join the running ones by the same Chan update as a merge."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = 0.0
        self.min = self.max = None

    def add_present(self, present):
        if len(present):
            batch = Moments()
            batch.n, batch.mean = len(present), float(present.mean())
            batch.m2 = float(np.square(present - batch.mean).sum())
            batch.min, batch.max = float(present.min()), float(present.max())
            Moments.merge(self, batch)
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
        return self


class NumericAccumulator(Moments):
    """count (rows), missing, the Moments and a quantile sketch of one feature, added a batch at a time (a float
    array, NaN for missing)."""

    def __init__(self):
        super().__init__()
        self.count = self.missing = 0
        self.sketch = LogSketch()

    def add(self, values):
        values = np.asarray(values, np.float64)
        present = values[~np.isnan(values)]
        self.count += len(values)
        self.missing += len(values) - len(present)
        self.add_present(present)
        self.sketch.add(present)
        return self

    def merge(self, other):
        super().merge(other)
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
            "quantiles": {str(q): self.sketch.quantile(q) for q in QUANTILES},
        }


class StringAccumulator:
    """count, missing and the exact count of every value of a string feature, added a batch at a time (an
    Arrow string array, null for missing)."""

    def __init__(self, top_k=TOP_VALUES):
        self.count = self.missing = 0
        self.values = {}
        self.top_k = top_k

    def add(self, values):
        self.count += len(values)
        self.missing += values.null_count
        for pair in pc.value_counts(values.drop_null()).to_pylist():
            self.values[pair["values"]] = self.values.get(pair["values"], 0) + pair["counts"]
        return self

    def merge(self, other):
        self.count += other.count
        self.missing += other.missing
        for value, count in other.values.items():
            self.values[value] = self.values.get(value, 0) + count
        return self

    def extract(self):
        top = sorted(self.values.items(), key=lambda vc: (-vc[1], vc[0]))[: self.top_k]
        return {
            "type": "string",
            "count": self.count,
            "missing": self.missing,
            "distinct": len(self.values),
            "top_values": [{"value": v, "count": c} for v, c in top],
        }


class SplitStats:
    """The accumulators of every feature of one split, added a batch at a time (a table of raw values,
    see raw_table)."""

    def __init__(self, numeric_features, string_features, top_k=TOP_VALUES):
        self.rows = 0
        self.features = {
            **{f: NumericAccumulator() for f in numeric_features},
            **{f: StringAccumulator(top_k) for f in string_features},
        }

    def add(self, table):
        self.rows += table.num_rows
        for name, accumulator in self.features.items():
            column = table.column(name)
            if isinstance(accumulator, NumericAccumulator):
                column = column.to_numpy(zero_copy_only=False)  # nulls become NaN
            accumulator.add(column)
        return self

    def merge(self, other):
        self.rows += other.rows
        for name, accumulator in self.features.items():
            accumulator.merge(other.features[name])
        return self

    def extract(self):
        return {"rows": self.rows, "features": {n: a.extract() for n, a in self.features.items()}}


class SplitStatsFn(MergingCombineFn):
    def __init__(self, numeric_features, string_features, top_k=TOP_VALUES):
        self._numeric, self._string, self._top_k = list(numeric_features), list(string_features), top_k

    def create_accumulator(self):
        return SplitStats(self._numeric, self._string, self._top_k)

    def add_input(self, accumulator, table):
        return accumulator.add(table)

    def extract_output(self, accumulator):
        return accumulator.extract()


def raw_table(rows, numeric_features, string_features):
    """Rows ({feature: value as read, None for missing}) -> the table of raw values the statistics take:
    float64 numeric columns and string columns, null for missing."""
    return pa.table(
        {
            **{f: pa.array([r.get(f) for r in rows], pa.float64()) for f in numeric_features},
            **{f: pa.array([r.get(f) for r in rows], pa.string()) for f in string_features},
        }
    )


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


def histogram_bins(values, edges):
    """Each value's bin among `edges` by np.histogram's rule: [low, high), the last bin [low, high]; -1 below
    the first edge, len(edges) - 1 above the last."""
    bins = np.searchsorted(edges, values, side="right") - 1
    bins[values == edges[-1]] -= 1
    return bins


def histogram(counts, edges):
    """[{low, high, count}] of the bins between `edges`, from {bin index: count}."""
    return [
        {"low": low, "high": high, "count": counts.get(i, 0)} for i, (low, high) in enumerate(itertools.pairwise(edges))
    ]


def bin_counts(values, edges):
    """{bin index: count} of the values (a float array, NaN for missing) among `edges`."""
    values = values[~np.isnan(values)]
    indices, counts = np.unique(histogram_bins(values, np.asarray(edges)), return_counts=True)
    return dict(zip(indices.tolist(), counts.tolist(), strict=True))


def _split_edges(split_stats, numeric):
    split, stats = split_stats
    return split, {
        name: histogram_edges(stats["features"][name]["min"], stats["features"][name]["max"]) for name in numeric
    }


def _histogram_counts(split_table, edges):
    split, table = split_table
    yield (
        split,
        {
            name: bin_counts(table.column(name).to_numpy(zero_copy_only=False), feature_edges)
            for name, feature_edges in edges[split].items()
            if feature_edges
        },
    )


def _add_counts(parts):
    """{feature: {bin: count}} dicts summed."""
    total = {}
    for part in parts:
        for name, counts in part.items():
            into = total.setdefault(name, {})
            for index, count in counts.items():
                into[index] = into.get(index, 0) + count
    return total


def _assemble(split_and_parts, histograms=True):
    """(split, {"stats": [...], "bins": [...]}) -> the split's statistics artifact (numeric features without
    "histogram" when `histograms` is off: then there are no "bins")."""
    split, parts = split_and_parts
    [stats] = parts["stats"]
    bins = _add_counts(parts.get("bins", ()))
    if histograms:
        for name, feature in stats["features"].items():
            if feature["type"] == "numeric":
                feature["histogram"] = histogram(bins.get(name, {}), histogram_edges(feature["min"], feature["max"]))
    return {"split": split, **stats}


class ComputeStatistics(beam.PTransform):
    """(split, table of raw values: see raw_table) batches -> one statistics artifact per split and window.
    In the global window (batch) every split of `splits` gets one, also when it is empty; in other windows
    only the splits with rows do (an empty split has no window to belong to).

    `histograms=False` leaves out the numeric histograms: their second pass needs each split's (window's)
    min and max as a side input, so it holds back all of a window's batches until the window closes (and
    the local BundleBasedDirectRunner fails when a bundle without elements reaches a ParDo with a
    windowed side input)."""

    def __init__(self, splits, numeric_features, string_features, top_k=TOP_VALUES, histograms=True):
        super().__init__()
        self._splits, self._numeric, self._strings = list(splits), list(numeric_features), list(string_features)
        self._top_k, self._histograms = top_k, histograms

    def expand(self, batches):
        numeric, strings = self._numeric, self._strings
        stats = batches | "StatsPerSplit" >> beam.CombinePerKey(SplitStatsFn(numeric, strings, self._top_k))
        if isinstance(batches.windowing.windowfn, window.GlobalWindows):
            empty = SplitStats(numeric, strings).extract()
            stats = (
                (stats, batches.pipeline | "AllSplits" >> beam.Create([(s, empty) for s in self._splits]))
                | "WithEmptySplits" >> beam.Flatten()
                | "OnePerSplit" >> beam.CombinePerKey(lambda found: max(found, key=lambda s: s["rows"]))
            )
        parts = {"stats": stats}
        if self._histograms:
            edges = stats | "HistogramEdges" >> beam.Map(_split_edges, numeric)
            parts["bins"] = (
                batches
                # the batches wait for the edges: held as their numeric columns only
                | "NumericColumns"
                >> beam.MapTuple(lambda split, table: (split, table.select(numeric))).with_output_types(
                    tuple[str, pa.Table]
                )
                | "HistogramBins" >> beam.FlatMap(_histogram_counts, beam.pvalue.AsDict(edges))
                | "AddBins" >> beam.CombinePerKey(_add_counts)
            )
        return parts | "JoinBySplit" >> beam.CoGroupByKey() | "Assemble" >> beam.Map(_assemble, self._histograms)
