"""The base of the thin CombineFns over the project's plain accumulators (objects with `merge(other)`)."""

import apache_beam as beam


class MergingCombineFn(beam.CombineFn):
    """Merging folds every accumulator into the first; the output is the accumulator itself unless a
    subclass extracts something else. Subclasses create accumulators and add inputs."""

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            merged.merge(acc)
        return merged

    def extract_output(self, acc):
        return acc
