"""tf.Transform's analysis of the training split, computed by the pipeline on its columnar batches and handed
to the transform graph, so tf.Transform's own analysis pass over the rows is spared.

The values analyzed are those tf.Transform sees (the filled table, numbers as float32): min and max exactly,
mean and variance (population) in float64 then rounded to float32 (tf.Transform accumulates them in float32,
so the two agree to float32 rounding of the sums, about 1e-6 relative), and vocabularies by tf.Transform's
rule (values empty or with a newline left out; count >= frequency_threshold; most frequent first, ties in
reverse byte order; at most top_k; tf.Transform's dummy token when nothing is left). Quantile boundaries
(`bucketize: N`) and text vocabularies (tokens from tf.strings.split) stay with tf.Transform's own analyzers:
DDSketch's buckets are not tf.Transform's quantiles, and whitespace splitting would have to match TensorFlow's
byte for byte; a spec with either still runs tf.Transform's pass over the training rows (for those only).
"""

import os

import apache_beam as beam
import numpy as np
import tensorflow_transform.beam as tft_beam

from transforms.core.accumulators import MergingCombineFn
from transforms.features.statistics import Moments, StringAccumulator


def scaled_features(spec):
    """Numeric inputs whose transforms need min/max or mean/var."""
    return [
        f.name
        for f in spec.inputs
        if f.type == "numeric" and {t.kind for t in f.transforms} & {"scale_to_0_1", "z_score"}
    ]


def vocabulary_features(spec):
    """{feature: (file name, top_k, frequency_threshold)} of the vocabularies computed from categorical values:
    the categorical features' `vocabulary` (not fixed by keys) and a string label's, named as before."""
    out = {}
    for f in spec.inputs:
        if f.type == "label" and not f.is_numeric:
            out[f.name] = (f"label_{f.name}", None, 0)
        elif f.type == "categorical":
            for t in f.transforms:
                if t.kind == "vocabulary" and not t.vocabulary.keys:
                    out[f.name] = (f"vocab_{f.name}", t.vocabulary.top_k, t.vocabulary.frequency_threshold)
    return out


def needs_tft_analysis(spec):
    """True when the spec has analyzers left to tf.Transform: quantile buckets or a computed text vocabulary."""
    return any(
        (t.kind == "bucketize" and not t.boundaries)
        or (f.type == "text" and t.kind == "vocabulary" and not t.vocabulary.keys)
        for f in spec.inputs
        for t in f.transforms
    )


def vocabulary(counts, top_k, frequency_threshold):
    """tf.Transform's vocabulary (a list of bytes, in file order) of {value: count}."""
    from tensorflow_transform import analyzers

    kept = sorted(
        (
            (count, value.encode())
            for value, count in counts.items()
            if value and "\n" not in value and "\r" not in value and count >= frequency_threshold
        ),
        reverse=True,
    )[:top_k]
    return [token for _, token in kept or [analyzers.get_empy_vocabulary_dummy_value("string")]]


class TrainingAnalysis:
    """The accumulator: Moments of the scaled features and value counts of the vocabulary features, added a
    filled table (CleansedBatch.filled) at a time."""

    def __init__(self, moments, counts):
        self.moments = {name: Moments() for name in moments}
        self.counts = {name: StringAccumulator() for name in counts}

    def add(self, filled):
        for name, moments in self.moments.items():
            values = filled.column(name).to_numpy(zero_copy_only=False)
            moments.add_present(values.astype(np.float32).astype(np.float64))  # the float32 values tf.Transform sees
        for name, counts in self.counts.items():
            counts.add(filled.column(name).combine_chunks())
        return self

    def merge(self, other):
        for mine, theirs in ((self.moments, other.moments), (self.counts, other.counts)):
            for name, accumulator in mine.items():
                accumulator.merge(theirs[name])
        return self


class TrainingAnalysisFn(MergingCombineFn):
    """Filled tables -> {feature: [min, max, mean, var]} and {feature: vocabulary} (see vocabulary)."""

    def __init__(self, spec):
        self._moments, self._vocabularies = scaled_features(spec), vocabulary_features(spec)

    def create_accumulator(self):
        return TrainingAnalysis(self._moments, self._vocabularies)

    def add_input(self, accumulator, filled):
        return accumulator.add(filled)

    def extract_output(self, accumulator):
        out = {}
        for name, m in accumulator.moments.items():  # no values: min = max (scale_to_0_1's sigmoid), mean 0, var 0
            out[name] = [m.min, m.max, m.mean, m.m2 / m.n] if m.n else [0.0, 0.0, 0.0, 0.0]
        for name, (_, top_k, threshold) in self._vocabularies.items():
            out[name] = vocabulary(accumulator.counts[name].values, top_k, threshold)
        return out


class _EmitAnalysis(beam.DoFn):
    """The analysis as tf.Transform analyzer outputs, one tagged output each: the moments of every scaled
    feature (a float32 [min, max, mean, var]), then the path of every vocabulary file (written here)."""

    def __init__(self, moments, files, directory):
        self._moments, self._files, self._directory = moments, files, directory

    def process(self, _, analysis):
        import tensorflow as tf

        for i, name in enumerate(self._moments):
            yield beam.pvalue.TaggedOutput(str(i), np.array(analysis[name], np.float32))
        if self._files:
            tf.io.gfile.makedirs(self._directory)
        for i, (name, filename) in enumerate(self._files.items(), len(self._moments)):
            path = os.path.join(self._directory, filename)
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(b"".join(token + b"\n" for token in analysis[name]))
            yield beam.pvalue.TaggedOutput(str(i), np.array(path.encode(), object))


class FromAnalysis(tft_beam.experimental.PTransformAnalyzer):
    """One tf.Transform analyzer whose outputs are read from the pipeline's TrainingAnalysis (a singleton
    PCollection) instead of computed from the analyzer's input: for each feature of `moments` its float32
    [min, max, mean, var], then for each {feature: file name} of `files` its vocabulary as a file (an asset,
    named as tf.Transform names its own) and the file's path."""

    def __init__(self, analysis, moments, files):
        super().__init__()
        self._analysis, self._moments, self._files = analysis, list(moments), dict(files)

    def expand(self, batches):
        outputs = [str(i) for i in range(len(self._moments) + len(self._files))]
        emitted = (
            batches
            | "Once" >> beam.combiners.Count.Globally()
            | "Emit"
            >> beam.ParDo(
                _EmitAnalysis(self._moments, self._files, self.base_temp_dir), beam.pvalue.AsSingleton(self._analysis)
            ).with_outputs(*outputs)
        )
        return tuple(emitted[tag] for tag in outputs)
