"""The declarative feature spec of the preprocessing pipeline (YAML, validated on load) and the
tf.Transform `preprocessing_fn` built from it.

    key: user_id                  # split by a hash of this column
    label: churned                # optional; `stratify: true` keeps its proportions in every split
    splits: {train: 0.7, eval: 0.3}
    features:
      - {name: age, type: numeric, default: 0, clip: [0, 120], transforms: [scale_to_0_1, z_score, {bucketize: 4}]}
      - {name: country, type: categorical, default: "", transforms: [{vocabulary: {top_k: 50}}, {hash: 100}]}
      - {name: bio, type: text, default: "", transforms: [{vocabulary: {top_k: 1000}}]}
      - {name: churned, type: label}
    crosses:
      - {features: [country, device], hash_buckets: 1000}
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from transforms.core.config import StrictModel, load_config, parse_config

NUMERIC_TRANSFORMS = ("scale_to_0_1", "z_score", "log", "bucketize")
CATEGORICAL_TRANSFORMS = ("vocabulary", "hash")


class Vocabulary(StrictModel):
    top_k: int | None = Field(None, gt=0)
    frequency_threshold: int = Field(0, ge=0)
    one_hot: bool = False  # needs top_k: the one-hot width

    @model_validator(mode="after")
    def _check(self):
        if self.one_hot and not self.top_k:
            raise ValueError("one_hot needs top_k (the width of the one-hot vector)")
        return self


class Transform(StrictModel):
    """One transform: `scale_to_0_1`, `z_score`, `log` (log1p of values >= 0), `bucketize` (quantile buckets),
    `vocabulary` (index, or one-hot), `hash` (buckets)."""

    kind: str
    buckets: int | None = None
    vocabulary: Vocabulary | None = None

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
    """'z_score' | {'bucketize': 4} | {'hash': 100} | {'vocabulary': {...}}."""
    if isinstance(value, str):
        if value in ("bucketize", "hash"):
            raise ValueError(f"'{value}' needs a number of buckets, e.g. {{{value}: 10}}")
        return Transform(kind=value, vocabulary=Vocabulary() if value == "vocabulary" else None)
    if isinstance(value, dict) and len(value) == 1:
        kind, arg = next(iter(value.items()))
        if kind in ("bucketize", "hash"):
            if not isinstance(arg, int) or arg < 1:
                raise ValueError(f"'{kind}' takes a positive number of buckets, got {arg!r}")
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
        if self.clip and (self.type != "numeric" or self.clip[0] >= self.clip[1]):
            raise ValueError(f"feature '{self.name}': clip needs a numeric feature and [low, high] with low < high")
        if self.type == "numeric" and isinstance(self.default, str):
            raise ValueError(f"feature '{self.name}': a numeric default must be a number")
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
    stratify: bool = False
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
        if self.stratify and not self.label:
            raise ValueError("stratify: true needs a label")
        for cross in self.crosses:
            for name in cross.features:
                if name not in by_name or by_name[name].type != "categorical":
                    raise ValueError(f"cross {cross.features}: '{name}' is not a categorical feature")
        return self

    @property
    def split_fractions(self):
        return list(self.splits.items())

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


def make_preprocessing_fn(spec):
    """The tf.Transform preprocessing function of the spec. Outputs are named `<feature>_<suffix>`
    (e.g. age_scaled, country_index); the key passes through; a float label keeps its value and a string
    label becomes its index in a vocabulary sorted by frequency (`label_<name>`); crosses are
    `<a>_x_<b>_hash`."""
    import tensorflow as tf
    import tensorflow_transform as tft

    def preprocessing_fn(inputs):
        outputs = {spec.key: inputs[spec.key]}
        for f in spec.inputs:
            x = inputs[f.name]
            if f.type == "label":
                outputs[f.name] = (
                    x
                    if f.label_dtype == "float"
                    else tft.compute_and_apply_vocabulary(x, vocab_filename=f"label_{f.name}")
                )
                continue
            for t in f.transforms:
                name = f"{f.name}_{t.output_suffix}"
                if t.kind == "scale_to_0_1":
                    outputs[name] = tft.scale_to_0_1(x)
                elif t.kind == "z_score":
                    outputs[name] = tft.scale_to_z_score(x)
                elif t.kind == "log":
                    outputs[name] = tf.math.log1p(tf.maximum(x, 0.0))
                elif t.kind == "bucketize":
                    outputs[name] = tft.bucketize(x, t.buckets)
                elif t.kind == "hash":
                    outputs[name] = tft.hash_strings(x, t.buckets)
                else:
                    tokens = tf.strings.split(x) if f.type == "text" else x
                    index = tft.compute_and_apply_vocabulary(
                        tokens,
                        top_k=t.vocabulary.top_k,
                        frequency_threshold=t.vocabulary.frequency_threshold or None,
                        vocab_filename=f"vocab_{f.name}",
                    )
                    if f.type == "text":
                        index = index.to_sparse() if isinstance(index, tf.RaggedTensor) else index
                        outputs[name] = index
                    elif t.vocabulary.one_hot:  # top_k wide; out of vocabulary (-1) is all zeros
                        outputs[name] = tf.one_hot(index, t.vocabulary.top_k, dtype=tf.float32)
                    else:
                        outputs[name] = index
        for cross in spec.crosses:
            joined = tf.strings.join([inputs[n] for n in cross.features], separator="\x1f")
            outputs[f"{cross.name}_hash"] = tft.hash_strings(joined, cross.hash_buckets)
        return outputs

    return preprocessing_fn
