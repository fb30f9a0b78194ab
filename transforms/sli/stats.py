"""Per-window request statistics for one journey: a plain accumulator (no Beam) and its CombineFn.

Latency percentiles come from DDSketch (DataDog's mergeable quantile sketch) with relative accuracy
`LATENCY_RELATIVE_ACCURACY` = 1%: a reported pXX is within 1% of the true latency at that rank, whatever
the distribution and however partial sketches were merged. Good/bad counts are exact.

The sketch also travels in the SLI rows as text (`sketch_to_text`), so a replay can count requests over a
latency threshold nobody configured when the rows were written (`count_above`).
"""

import base64
import binascii

import numpy as np
from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

LATENCY_RELATIVE_ACCURACY = 0.01
PERCENTILES = (50, 90, 95, 99)


class JourneyWindowStats:
    """Counts requests, per-SLI bad requests and the latency distribution.

    `bad_flags` passed to `add` holds one bool per SLI of the journey (same order for every request)."""

    __slots__ = ("count", "bad", "latency_sum_ms", "latency_max_ms", "sketch")

    def __init__(self):
        self.count = 0
        self.bad = None  # list[int], sized on the first add or merge
        self.latency_sum_ms = 0.0
        self.latency_max_ms = 0.0
        self.sketch = DDSketch(relative_accuracy=LATENCY_RELATIVE_ACCURACY)

    def add(self, latency_ms, bad_flags):
        if self.bad is None:
            self.bad = [0] * len(bad_flags)
        self.count += 1
        for i, is_bad in enumerate(bad_flags):
            if is_bad:
                self.bad[i] += 1
        self.latency_sum_ms += latency_ms
        if latency_ms > self.latency_max_ms:
            self.latency_max_ms = latency_ms
        self.sketch.add(latency_ms)
        return self

    def merge(self, other):
        if other.count == 0:
            return self
        if self.bad is None:
            self.bad = [0] * len(other.bad)
        self.count += other.count
        self.bad = [a + b for a, b in zip(self.bad, other.bad, strict=True)]
        self.latency_sum_ms += other.latency_sum_ms
        self.latency_max_ms = max(self.latency_max_ms, other.latency_max_ms)
        self.sketch.merge(other.sketch)
        return self

    def add_batch(self, latencies_ms, bad_counts):
        """Many requests at once: `latencies_ms` a float64 numpy array (none negative: the parser rejects
        those), `bad_counts` the bad requests per SLI among them. Same counts and sketch bins as `add` per
        request; the latency sum is added in another order (equal to the last bits)."""
        if self.bad is None:
            self.bad = [0] * len(bad_counts)
        self.count += len(latencies_ms)
        self.bad = [a + int(b) for a, b in zip(self.bad, bad_counts, strict=True)]
        self.latency_sum_ms += float(latencies_ms.sum())
        self.latency_max_ms = max(self.latency_max_ms, float(latencies_ms.max()))
        _add_to_sketch(self.sketch, latencies_ms)
        return self

    def percentiles_ms(self):
        """{p: latency at p} for each of PERCENTILES (None when empty): DDSketch's get_quantile_value(p / 100)
        for each, from one running sum over the bins for all of them (the same float sums its key_at_rank
        makes, bin by bin, for each one)."""
        sketch = self.sketch
        if not self.count or sketch._negative_store.count:  # (no negative latencies: the parser rejects them)
            return {p: sketch.get_quantile_value(p / 100) if self.count else None for p in PERCENTILES}
        store, zero, value = sketch._store, sketch._zero_count, sketch._mapping.value
        bins, last = store.bins, len(store.bins) - 1
        index, running, percentiles = -1, 0.0, {}
        for p in PERCENTILES:  # ascending, so each rank's bin is at or after the one before
            rank = p / 100 * (sketch._count - 1)
            if rank < zero:
                percentiles[p] = 0
                continue
            rank -= zero
            while not running > rank and index < last:
                index += 1
                running += bins[index]
            percentiles[p] = value(index + store.offset if running > rank else store.max_key)
        return percentiles


def _add_to_sketch(sketch, values):
    """`sketch.add(v)` for every v of a non-negative float64 array, the bin keys computed with numpy: ddsketch's
    logarithmic mapping (ceil(log2(v) * multiplier) + offset); the few values whose scaled log lies within
    1e-6 of a whole number, where numpy's log and libm's may round apart, are keyed by ddsketch itself."""
    mapping = sketch._mapping
    positive = values[values > mapping.min_possible]
    scaled = np.log2(positive) * mapping._multiplier
    keys = np.ceil(scaled) + mapping._offset
    near = np.abs(scaled - np.rint(scaled)) < 1e-6
    if near.any():
        keys[near] = [mapping.key(v) for v in positive[near].tolist()]
    if len(keys):
        store = sketch._store
        unique, counts = np.unique(keys.astype(np.int64), return_counts=True)
        store._extend_range(int(unique[0]), int(unique[-1]))  # once, so the adds below index directly
        bins, offset = store.bins, store.offset
        for key, count in zip(unique.tolist(), counts.tolist(), strict=True):
            bins[key - offset] += float(count)
        store.count += float(len(keys))
    sketch._zero_count += float(len(values) - len(positive))
    sketch._count += float(len(values))
    sketch._sum += float(values.sum())
    sketch._min = min(sketch._min, float(values.min()))
    sketch._max = max(sketch._max, float(values.max()))


# Text form of a latency sketch: base64 of a version byte, the zero-latency count, the number of bins, then
# per bin (in key order) the key's gap to the previous key (the first key zigzag-encoded) and its count, all
# as varints. Counts are whole numbers and neighbouring keys differ by little, so a bin takes 2-3 bytes where
# ddsketch's protobuf form takes 12 or more (a double per count); the mapping is fixed by the version (1: the
# logarithmic mapping at LATENCY_RELATIVE_ACCURACY), so it is not repeated in every row. Latencies are never
# negative (the parser rejects them), so there is no negative store.
_SKETCH_VERSION = 1
_MAX_SKETCH_TEXT = 1 << 20  # far above any real minute (a bin per 2% of latency range)
_MAPPING = LogarithmicMapping(LATENCY_RELATIVE_ACCURACY)
_KEYS = range(_MAPPING.key(_MAPPING.min_possible), _MAPPING.key(_MAPPING.max_possible) + 1)


def _varint(number, out):
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)


def _bins(sketch):
    """[(key, count)] of the positive store, keys ascending, empty bins left out."""
    store = sketch._store  # ddsketch keeps the bins there; its own protobuf form reads them the same way
    return [(store.offset + i, int(c)) for i, c in enumerate(store.bins) if c]


def sketch_to_text(sketch):
    """A latency DDSketch (`LATENCY_RELATIVE_ACCURACY`, counts added with weight 1) -> compact text; equal
    sketches give equal text."""
    if sketch._negative_store.count:
        raise ValueError("latency sketches hold no negative latencies")
    bins = _bins(sketch)
    out = bytearray([_SKETCH_VERSION])
    _varint(int(sketch._zero_count), out)
    _varint(len(bins), out)
    previous = None
    for key, count in bins:
        _varint((key << 1) ^ (key >> 63) if previous is None else key - previous, out)
        _varint(count, out)
        previous = key
    return base64.b64encode(bytes(out)).decode("ascii")


def _read_varints(data):
    number = shift = 0
    for byte in data:
        number |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                raise ValueError("a number longer than 64 bits")
        else:
            yield number
            number = shift = 0
    if shift:
        raise ValueError("cut short")


def sketch_from_text(text):
    """`sketch_to_text`'s text -> a mergeable DDSketch (min, max and sum are not kept). ValueError when the
    text is not one."""
    if len(text) > _MAX_SKETCH_TEXT:
        raise ValueError(f"{len(text)} characters, more than {_MAX_SKETCH_TEXT}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not data or data[0] != _SKETCH_VERSION:
        raise ValueError(f"not a version {_SKETCH_VERSION} latency sketch")
    numbers = list(_read_varints(data[1:]))
    if len(numbers) < 2 or len(numbers) != 2 + 2 * numbers[1]:
        raise ValueError("the bin count does not match the bins")
    zero_count, pairs = numbers[0], numbers[2:]
    keys, counts, key = [], pairs[1::2], None
    for step in pairs[::2]:
        key = (step >> 1) ^ -(step & 1) if key is None else key + step
        if step == 0 and keys or key not in _KEYS:
            raise ValueError(f"bin {key} is out of order or outside the range of latencies")
        keys.append(key)
    if 0 in counts:
        raise ValueError("an empty bin")
    store = DenseStore()
    if keys:  # the store's documented attributes, set at once: adding bin by bin is 5-10 times slower
        store.offset = store.min_key = keys[0]
        store.max_key = keys[-1]
        store.bins = [0.0] * (keys[-1] - keys[0] + 1)
        for key, count in zip(keys, counts, strict=True):
            store.bins[key - keys[0]] = float(count)
        store.count = float(sum(counts))
    return BaseDDSketch(_MAPPING, store, DenseStore(), float(zero_count))


def count_above(sketch, threshold_ms):
    """Requests with latency over `threshold_ms`, counting each as its bin's value: exact except for requests
    within LATENCY_RELATIVE_ACCURACY of the threshold (latency in (T/1.01, T/0.99] for 1%), as a bin's value
    is within that of every latency in it."""
    value = sketch._mapping.value
    return sum(count for key, count in _bins(sketch) if value(key) > threshold_ms)
