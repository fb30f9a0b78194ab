"""Per-window request statistics for one journey: a plain accumulator (no Beam) and its CombineFn.

Latency percentiles come from DDSketch (DataDog's mergeable quantile sketch) with relative accuracy
`LATENCY_RELATIVE_ACCURACY` = 1%: a reported pXX is within 1% of the true latency at that rank, whatever
the distribution and however partial sketches were merged. Good/bad counts are exact.
"""

from ddsketch import DDSketch

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

    def percentile_ms(self, p):
        return self.sketch.get_quantile_value(p / 100.0) if self.count else None
