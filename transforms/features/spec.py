"""The declarative feature spec of the preprocessing pipeline (YAML, validated on load) and the
tf.Transform `preprocessing_fn` built from it.

    key: user_id                  # split by a hash of this column
    label: churned                # optional
    stratify: country             # optional: each value keeps its proportions in every split (true: the label)
    splits: {train: 0.7, eval: 0.3}
    features:
      - {name: age, type: numeric, default: 0, clip: [0, 120], transforms: [scale_to_0_1, z_score, {bucketize: 4}]}
      - {name: tenure, type: numeric, default: 0, transforms: [{bucketize: [1, 2, 5, 10]}]}
      - {name: country, type: categorical, default: "", transforms: [{vocabulary: {top_k: 50}}, {hash: 100}]}
      - {name: sex, type: categorical, default: "", transforms: [{vocabulary: {keys: [F, M], num_oov_buckets: 1}}]}
      - {name: bio, type: text, default: "", transforms: [{vocabulary: {top_k: 1000}}]}
      - {name: churned, type: label}
    crosses:
      - {features: [country, device], hash_buckets: 1000}
"""

import itertools
import math
from typing import Literal

from pydantic import Field, StrictFloat, field_validator, model_validator

from transforms.core.config import StrictModel, load_config, parse_config

NUMERIC_TRANSFORMS = ("scale_to_0_1", "z_score", "log", "bucketize")
CATEGORICAL_TRANSFORMS = ("vocabulary", "hash")


class Vocabulary(StrictModel):
    """Computed on the training split (most frequent first), or fixed by `keys`; a value out of the
    vocabulary is -1, or one of `num_oov_buckets` indices after the vocabulary (by its hash)."""

    top_k: int | None = Field(None, gt=0)
    frequency_threshold: int = Field(0, ge=0)
    keys: list[str] | None = Field(None, min_length=1)
    num_oov_buckets: int = Field(0, ge=0)
    one_hot: bool = False  # needs top_k or keys: the one-hot width

    @field_validator("keys", mode="before")
    @classmethod
    def _keys(cls, values):
        """Whole numbers as strings, the way cleansing reads categorical values."""
        if not isinstance(values, list):
            return values
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]

    @model_validator(mode="after")
    def _check(self):
        if self.keys and (self.top_k or self.frequency_threshold):
            raise ValueError("keys is a fixed vocabulary: leave out top_k and frequency_threshold")
        if self.keys and len(set(self.keys)) != len(self.keys):
            raise ValueError(f"keys listed twice: {sorted({k for k in self.keys if self.keys.count(k) > 1})}")
        if self.one_hot and not (self.top_k or self.keys):
            raise ValueError("one_hot needs top_k or keys (the width of the one-hot vector)")
        return self

    @property
    def width(self):
        """The number of indices: the vocabulary's (at most top_k) and the out-of-vocabulary buckets."""
        return (len(self.keys) if self.keys else self.top_k) + self.num_oov_buckets


class Transform(StrictModel):
    """One transform: `scale_to_0_1`, `z_score`, `log` (log1p of values >= 0), `bucketize` (quantile buckets,
    or fixed `boundaries`), `vocabulary` (index, or one-hot), `hash` (buckets)."""

    kind: str
    buckets: int | None = None
    boundaries: list[StrictFloat] | None = None  # numbers only: YAML true or "18" is a mistake here
    vocabulary: Vocabulary | None = None

    @model_validator(mode="after")
    def _check(self):
        b = self.boundaries
        if b is not None and not (b and all(map(math.isfinite, b)) and all(x < y for x, y in itertools.pairwise(b))):
            raise ValueError(f"bucketize boundaries must be one or more finite numbers, strictly increasing; got {b}")
        return self

    @property
    def output_suffix(self):
        return {
            "scale_to_0_1": "scaled",
            "z_score": "z",
            "log": "log",
            "bucketize": "bucket",
            "vocabulary": "onehot" if self.vocabulary and self.vocabulary.one_hot else "index",
            "hash": "hash",
        }[self.kind]


def _parse_transform(value):
    """'z_score' | {'bucketize': 4} | {'bucketize': [18, 25, 30]} | {'hash': 100} | {'vocabulary': {...}}."""
    if isinstance(value, str):
        if value in ("bucketize", "hash"):
            raise ValueError(f"'{value}' needs a number of buckets, e.g. {{{value}: 10}}")
        return Transform(kind=value, vocabulary=Vocabulary() if value == "vocabulary" else None)
    if isinstance(value, dict) and len(value) == 1:
        kind, arg = next(iter(value.items()))
        if kind == "bucketize" and isinstance(arg, list):
            return Transform(kind=kind, boundaries=arg)
        if kind in ("bucketize", "hash"):
            if not isinstance(arg, int) or arg < 1:
                what = "a positive number of buckets" + (" or a list of boundaries" if kind == "bucketize" else "")
                raise ValueError(f"'{kind}' takes {what}, got {arg!r}")
            return Transform(kind=kind, buckets=arg)
        if kind == "vocabulary":
            return Transform(kind=kind, vocabulary=Vocabulary(**(arg or {})))
    raise ValueError(f"a transform is a name or a one-key mapping, got {value!r}")


class Feature(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["numeric", "categorical", "text", "label", "key"]
    required: bool = False
    default: float | int | str | None = None
    clip: tuple[float, float] | None = None
    label_dtype: Literal["string", "float"] = "string"  # labels only: a class name, or a number (regression, 0/1)
    transforms: list[Transform] = []
    skew: dict[Literal["js_divergence", "linf", "psi", "out_of_range", "missing_change"], float] = {}  # thresholds

    @field_validator("transforms", mode="before")
    @classmethod
    def _transforms(cls, values):
        return [_parse_transform(v) for v in values or []]

    @model_validator(mode="after")
    def _check(self):
        allowed = {
            "numeric": NUMERIC_TRANSFORMS,
            "categorical": CATEGORICAL_TRANSFORMS,
            "text": ("vocabulary",),
            "label": (),
            "key": (),
        }[self.type]
        for t in self.transforms:
            if t.kind not in allowed:
                raise ValueError(
                    f"feature '{self.name}' ({self.type}) cannot take '{t.kind}'; allowed: "
                    f"{', '.join(allowed) or 'none'}"
                )
        outputs = [f"{self.name}_{t.output_suffix}" for t in self.transforms]
        if len(set(outputs)) != len(outputs):
            twice = sorted({o for o in outputs if outputs.count(o) > 1})
            raise ValueError(f"feature '{self.name}': two transforms would both write {twice}; keep one of each kind")
        if self.clip and (self.type != "numeric" or self.clip[0] >= self.clip[1]):
            raise ValueError(f"feature '{self.name}': clip needs a numeric feature and [low, high] with low < high")
        if self.type == "numeric" and isinstance(self.default, str):
            raise ValueError(f"feature '{self.name}': a numeric default must be a number")
        if self.clip and self.default is not None and not self.clip[0] <= self.default <= self.clip[1]:
            raise ValueError(
                f"feature '{self.name}': default {self.default} is outside clip [{self.clip[0]}, {self.clip[1]}]"
                " (defaults are not clipped); give a default within clip, or widen clip"
            )
        if not self.required and self.default is None and self.type not in ("label", "key"):
            raise ValueError(f"feature '{self.name}': give a default (filled when missing) or set required: true")
        return self

    @property
    def is_numeric(self):
        """Statistics and tf.Transform treat it as a number: numeric features and float labels."""
        return self.type == "numeric" or (self.type == "label" and self.label_dtype == "float")


class Cross(StrictModel):
    features: list[str] = Field(min_length=2)
    hash_buckets: int = Field(gt=0)

    @property
    def name(self):
        return "_x_".join(self.features)


class FeatureSpec(StrictModel):
    key: str
    label: str | None = None
    stratify: bool | str = False  # a categorical feature or the label; true: the label
    splits: dict[str, float] = {"train": 0.7, "eval": 0.3}
    features: list[Feature] = Field(min_length=1)
    crosses: list[Cross] = []

    @model_validator(mode="after")
    def _check(self):
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"features named twice: {sorted({n for n in names if names.count(n) > 1})}")
        if "train" not in self.splits:
            raise ValueError("splits must include 'train' (the statistics are analyzed on it)")
        if any(not 0 < f <= 1 for f in self.splits.values()) or abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions must be in (0, 1] and sum to 1, got {self.splits}")
        by_name = {f.name: f for f in self.features}
        if self.key in by_name and by_name[self.key].type != "key":
            raise ValueError(f"key '{self.key}' is listed as a {by_name[self.key].type} feature")
        if self.label and self.label not in by_name:
            raise ValueError(f"label '{self.label}' is not among the features")
        if self.stratify is True and not self.label:
            raise ValueError("stratify: true needs a label")
        column = self.stratify_by
        if column is not None and (column not in by_name or by_name[column].type not in ("categorical", "label")):
            raise ValueError(
                f"stratify: '{column}' must name a categorical feature or the label "
                f"(categorical features: {[f.name for f in self.features if f.type == 'categorical']})"
            )
        for cross in self.crosses:
            for name in cross.features:
                if name not in by_name or by_name[name].type != "categorical":
                    raise ValueError(f"cross {cross.features}: '{name}' is not a categorical feature")
        return self

    @property
    def split_fractions(self):
        return list(self.splits.items())

    @property
    def stratify_by(self):
        """The column whose values each keep their proportions in every split, or None."""
        if self.stratify is True:
            return self.label
        return self.stratify if isinstance(self.stratify, str) else None

    @property
    def inputs(self):
        """Features that enter tf.Transform (the key column is carried as it is)."""
        return [f for f in self.features if f.type != "key"]


def parse_feature_spec(text, source):
    """YAML text -> FeatureSpec; ConfigError names `source` and the field."""
    return parse_config(text, FeatureSpec, source)


def load_feature_spec(path, flag="--feature_spec"):
    """Loads and validates a spec file (local or gs://); ConfigError names the flag, file and field."""
    return load_config(path, FeatureSpec, flag)


def tf_feature_spec(spec):
    """The raw (cleansed) input's feature spec for tf.Transform: every value present after cleansing."""
    import tensorflow as tf

    out = {spec.key: tf.io.FixedLenFeature([], tf.string)}
    for f in spec.inputs:
        numeric = f.is_numeric
        out[f.name] = tf.io.FixedLenFeature([], tf.float32 if numeric else tf.string)
    return out


def _fixed_vocabulary(vocabulary):
    """A lookup table of `keys` in their order: the transform function carries it, so serving needs no
    vocabulary file. Out of vocabulary: -1, or len(keys) + FarmHash64 of the value mod num_oov_buckets."""
    import tensorflow as tf

    keys = tf.lookup.KeyValueTensorInitializer(
        tf.constant(vocabulary.keys), tf.range(len(vocabulary.keys), dtype=tf.int64)
    )
    if vocabulary.num_oov_buckets:
        return tf.lookup.StaticVocabularyTable(keys, vocabulary.num_oov_buckets)
    return tf.lookup.StaticHashTable(keys, default_value=-1)


def _scale_to_0_1(x, low, high):
    """tf.Transform's scale_to_0_1 with its min and max given: the sigmoid when min >= max."""
    import tensorflow as tf

    return tf.where(low < high, (x - low) / (high - low), tf.math.sigmoid(x)) * 1.0 + 0.0


def _z_score(x, mean, var):
    """tf.Transform's scale_to_z_score with its mean and variance given: x - mean when the variance is 0."""
    import tensorflow as tf

    deviation, std = x - mean, tf.sqrt(var)
    return tf.where(tf.not_equal(std, 0), deviation / std, deviation)


def make_preprocessing_fn(spec, analysis=None):
    """The tf.Transform preprocessing function of the spec. Outputs are named `<feature>_<suffix>`
    (e.g. age_scaled, country_index); the key passes through; a float label keeps its value and a string
    label becomes its index in a vocabulary sorted by frequency (`label_<name>`); crosses are
    `<a>_x_<b>_hash`. With `analysis` (the singleton PCollection of analysis.TrainingAnalysisFn's output), the
    min, max, mean, variance and categorical vocabularies come from it (analysis.FromAnalysis) instead of
    tf.Transform's analyzers; quantile buckets and text vocabularies are tf.Transform's either way."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from transforms.features.analysis import FromAnalysis, scaled_features, vocabulary_features

    def analyzed(inputs):
        """{feature: [min, max, mean, var]} and {feature: vocabulary file}, tensors of the analysis (two
        analyzers: tf.Transform takes asset outputs and other outputs from separate ones)."""
        files = {name: filename for name, (filename, _, _) in vocabulary_features(spec).items()}
        if analysis is None:
            return {}, {}
        moments = paths = ()
        if scaled:
            moments = tft.experimental.ptransform_analyzer(
                [inputs[spec.key]], FromAnalysis(analysis, scaled, {}), [tf.float32] * len(scaled), [[4]] * len(scaled)
            )
        if files:
            paths = tft.experimental.ptransform_analyzer(
                [inputs[spec.key]],
                FromAnalysis(analysis, [], files),
                [tf.string] * len(files),
                [[]] * len(files),
                [filename.encode() for filename in files.values()],
            )
        return dict(zip(scaled, moments, strict=True)), dict(zip(files, paths, strict=True))

    def apply_vocabulary(x, path, filename, num_oov_buckets=0, **analyzer_args):
        """The vocabulary file of the analysis at `path` applied, or without one tf.Transform's (`filename`)."""
        if path is None:
            return tft.compute_and_apply_vocabulary(
                x, num_oov_buckets=num_oov_buckets, vocab_filename=filename, **analyzer_args
            )
        return tft.apply_vocabulary(x, path, num_oov_buckets=num_oov_buckets)

    def preprocessing_fn(inputs):
        moments, files = analyzed(inputs)
        outputs = {spec.key: inputs[spec.key]}
        for f in spec.inputs:
            x = inputs[f.name]
            if f.type == "label":
                outputs[f.name] = (
                    x if f.label_dtype == "float" else apply_vocabulary(x, files.get(f.name), f"label_{f.name}")
                )
                continue
            if f.name in moments:
                low, high, mean, var = tf.unstack(moments[f.name])
            for t in f.transforms:
                name = f"{f.name}_{t.output_suffix}"
                if t.kind == "scale_to_0_1":
                    outputs[name] = tft.scale_to_0_1(x) if analysis is None else _scale_to_0_1(x, low, high)
                elif t.kind == "z_score":
                    outputs[name] = tft.scale_to_z_score(x) if analysis is None else _z_score(x, mean, var)
                elif t.kind == "log":
                    outputs[name] = tf.math.log1p(tf.maximum(x, 0.0))
                elif t.kind == "bucketize" and t.boundaries:
                    outputs[name] = tft.apply_buckets(x, tf.constant([t.boundaries], tf.float32))
                elif t.kind == "bucketize":
                    outputs[name] = tft.bucketize(x, t.buckets)
                elif t.kind == "hash":
                    outputs[name] = tft.hash_strings(x, t.buckets)
                else:
                    vocabulary = t.vocabulary
                    tokens = tf.strings.split(x) if f.type == "text" else x
                    if vocabulary.keys:
                        index = tf.ragged.map_flat_values(_fixed_vocabulary(vocabulary).lookup, tokens)
                    elif f.type == "text":  # tokens: tf.Transform's analyzer (see analysis.py)
                        index = tft.compute_and_apply_vocabulary(
                            tokens,
                            top_k=vocabulary.top_k,
                            frequency_threshold=vocabulary.frequency_threshold or None,
                            num_oov_buckets=vocabulary.num_oov_buckets,
                            vocab_filename=f"vocab_{f.name}",
                        )
                    else:
                        index = apply_vocabulary(
                            tokens,
                            files.get(f.name),
                            f"vocab_{f.name}",
                            vocabulary.num_oov_buckets,
                            top_k=vocabulary.top_k,
                            frequency_threshold=vocabulary.frequency_threshold or None,
                        )
                    if f.type == "text":
                        index = index.to_sparse() if isinstance(index, tf.RaggedTensor) else index
                        outputs[name] = index
                    elif vocabulary.one_hot:  # `width` wide; out of vocabulary without buckets (-1) is all zeros
                        outputs[name] = tf.one_hot(index, vocabulary.width, dtype=tf.float32)
                    else:
                        outputs[name] = index
        for cross in spec.crosses:
            joined = tf.strings.join([inputs[n] for n in cross.features], separator="\x1f")
            outputs[f"{cross.name}_hash"] = tft.hash_strings(joined, cross.hash_buckets)
        return outputs

    scaled = scaled_features(spec)
    return preprocessing_fn
