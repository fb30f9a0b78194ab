"""Scoring with TensorFlow models through Beam's RunInference: a model handler for SavedModels (called
through their serving signature) and `.keras` files that scores ScoringBatches (many requests, their
inputs stacked into one array each) with one model call per batch and hands back numpy rows, plus the
preparation of each request's inputs from the signature and the prediction rows, made a batch at a time.
"""

import datetime
import functools
import hashlib
import json
import posixpath
import time
from typing import NamedTuple

import numpy as np
import orjson
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.core.records import remember, text
from transforms.images.pixels import check_image_header, decode_base64, decode_image, resize
from transforms.io.deadletter import RecordError

MAX_REQUEST_ID_CHARS = 1024

IMAGE_SCALES = ("auto", "0_1", "0_255", "-1_1", "none")  # --image_scale: see pixel_values


def json_encoder(**options):
    """A function giving the text `json.JSONEncoder(**options).encode` gives, from a C encoder made once
    (`encode` makes one per call: most of the cost of a small value). It skips the circular-reference check:
    a value decoded from JSON cannot hold itself, and one that does raises RecursionError, a dead letter."""
    encoder = json.JSONEncoder(**options)
    if json.encoder.c_make_encoder is None:  # a Python without json's C accelerator
        return encoder.encode
    chunks = json.encoder.c_make_encoder(
        None,
        encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )
    return lambda value: "".join(chunks(value, 0))


_json = json_encoder()  # json.dumps' text
_canonical_json = json_encoder(sort_keys=True, default=str)


def content_json(features):
    """The text a tabular content key hashes: `json.dumps(features, sort_keys=True, default=str)`, byte for
    byte, most of the time from orjson (Python's float formatting is most of json's cost). For names that
    need no escaping and values that are numbers, booleans or lists of them, orjson writes json's text but
    for its separators, which are put back, and for three kinds of value it writes otherwise, each leaving a
    mark in its text: a text value (a quote beyond the names'), NaN or an infinity ("null") and a nonzero
    number under 1e-4 ("0.00001" or "1e-7" where json writes "1e-05" and "1e-07"; elsewhere both write the
    shortest digits that read back as the float, the same way). A text with a mark, which a name can make
    too, goes through json."""
    if _plain_names(tuple(features)):
        try:
            text = orjson.dumps(features, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # an integer past 64 bits
            return _canonical_json(features)
        if text.count('"') == 2 * len(features) and "null" not in text and "0.0000" not in text and "e-" not in text:
            return text.replace(",", ", ").replace(":", ": ")
    return _canonical_json(features)


@functools.lru_cache(maxsize=64)
def _plain_names(names):
    """Whether json writes these names as they are and they hold no separator: printable ASCII, without
    quotes, backslashes, commas or colons (a model's input names, so few)."""
    return all(" " <= c <= "~" and c not in '"\\,:' for name in names for c in name)


class InputSpec(NamedTuple):
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "string"
    shape: tuple  # per example (the batch dimension removed); None for an unknown size


class LoadedModel:
    """A model called with {input name: batch array} and returning {output name: numpy array}.

    With `transform_dir` (a feature pipeline's output folder), `inputs` are the raw features of its spec
    (the label aside) and each batch goes through the exported tf.Transform function before the model,
    which takes the transformed features by name: the transformation trained on is the one served."""

    def __init__(self, path, signature_name="serving_default", transform_dir=None):
        self.path = path
        self._load(path, signature_name)
        self._model_inputs = self.inputs  # what the model itself takes
        self._transform = None
        if transform_dir:
            self.attach_transform(transform_dir)

    def attach_transform(self, transform_dir):
        import tensorflow_transform as tft

        from transforms.features.spec import load_feature_spec, tf_feature_spec

        spec_path = posixpath.join(transform_dir, "feature_spec.yaml")
        self.feature_spec = load_feature_spec(spec_path, "--transform_dir")
        output = tft.TFTransformOutput(transform_dir)
        produced = output.transformed_feature_spec()
        missing = [s.name for s in self.inputs if s.name not in produced]
        if missing:
            raise ValueError(
                f"--transform_dir: the model takes {missing}, which the transform in {transform_dir} "
                f"does not produce (it produces {sorted(produced)})"
            )
        self._transform = output.transform_features_layer()
        self._raw_spec = tf_feature_spec(self.feature_spec)
        self.inputs = [
            InputSpec(f.name, "float32" if self._raw_spec[f.name].dtype == tf.float32 else "string", ())
            for f in self.feature_spec.inputs
            if f.type != "label"
        ]

    def _transformed(self, batch):
        """Raw feature arrays -> the model's inputs; the key and label the transform also reads get
        placeholders (their outputs are not used)."""
        size = len(next(iter(batch.values())))
        raw = {}
        for name, feature in self._raw_spec.items():
            if name in batch:
                raw[name] = tf.constant(batch[name], dtype=feature.dtype)
            else:
                raw[name] = tf.zeros([size], feature.dtype) if feature.dtype != tf.string else tf.fill([size], "")
        transformed = self._transform(raw)
        return {spec.name: transformed[spec.name].numpy() for spec in self._model_inputs}

    def _load(self, path, signature_name):
        if path.endswith(".keras"):
            self._keras = tf.keras.models.load_model(path, compile=False)
            self._signature = None
            self.inputs = [
                InputSpec(t.name.split(":")[0], tf.as_dtype(t.dtype).name, tuple(t.shape[1:]))
                for t in self._keras.inputs
            ]
            # one graph, traced on the first call, for every batch size: eager Keras calls cost ~20 ms each
            # on small models, and a trace per new batch size costs about a second
            specs = [tf.TensorSpec((None, *spec.shape), spec.dtype) for spec in self.inputs]
            self._keras_call = tf.function(
                lambda x: self._keras(x, training=False), input_signature=[specs if len(specs) > 1 else specs[0]]
            )
            self.output_names = [f"output_{i}" for i in range(len(self._keras.outputs))]
            self.output_shapes = [tuple(t.shape[1:]) for t in self._keras.outputs]
            return
        loaded = tf.saved_model.load(path)
        if signature_name not in loaded.signatures:
            raise ValueError(
                f"--signature: {path} has no signature '{signature_name}'; it has {sorted(loaded.signatures)}"
            )
        self._keras, self._loaded = None, loaded  # keep the object alive: the signature refers to it
        self._signature = loaded.signatures[signature_name]
        specs = self._signature.structured_input_signature[1]
        self.inputs = [
            InputSpec(name, "string" if s.dtype == tf.string else s.dtype.as_numpy_dtype.__name__, tuple(s.shape[1:]))
            for name, s in sorted(specs.items())
        ]
        self.output_names = sorted(self._signature.structured_outputs)
        self.output_shapes = [tuple(self._signature.structured_outputs[n].shape[1:]) for n in self.output_names]

    def __call__(self, batch):
        if self._transform is not None:
            batch = self._transformed(batch)
        if self._signature is None:
            arrays = [
                batch[spec.name] if spec.dtype == "string" else np.asarray(batch[spec.name], spec.dtype)
                for spec in self._model_inputs
            ]
            outputs = self._keras_call(arrays if len(arrays) > 1 else arrays[0])
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return {name: np.asarray(o) for name, o in zip(self.output_names, outputs, strict=True)}
        tensors = {name: tf.constant(value) for name, value in batch.items()}
        return {name: value.numpy() for name, value in self._signature(**tensors).items()}


class BatchPredictions(NamedTuple):
    """What the model gave a ScoringBatch: {output name: array, one row per request} and {row: message}
    for the rows it failed on (their rows of `outputs` are placeholders)."""

    outputs: dict
    errors: dict


def batch_rows(batch):
    """A ScoringBatch's weight in RunInference's batching: its number of requests."""
    return len(batch.requests)


class TfModelHandler(ModelHandler):
    """Loads the model once per worker process (RunInference shares it) and scores ScoringBatches: those
    RunInference groups (up to max_batch_size requests in all) are joined and the model is called once
    per max_batch_size rows; the results are numpy slices, never converted tensor by tensor. The model
    can be swapped while running (RunInference's model-metadata side input calls `update_model_path`)."""

    def __init__(
        self,
        model_path,
        signature_name="serving_default",
        min_batch_size=1,
        max_batch_size=256,
        max_batch_duration_secs=None,
        transform_dir=None,
    ):
        self._model_path, self._signature_name, self._transform_dir = model_path, signature_name, transform_dir
        self._max_batch_size = max_batch_size
        self._batching = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
            "element_size_fn": batch_rows,
        }
        if max_batch_duration_secs:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs
        super().__init__()

    def load_model(self):
        return LoadedModel(model_directory(self._model_path), self._signature_name, self._transform_dir)

    def update_model_path(self, model_path=None):
        if model_path:
            self._model_path = model_path

    def batch_elements_kwargs(self):
        return self._batching

    def get_num_bytes(self, batch):
        """For RunInference's byte metrics: the arrays' sizes (the default pickles the whole batch)."""
        return sum(
            value.nbytes
            if value.dtype != object
            else sum(len(item) for item in value.ravel() if isinstance(item, (bytes, str)))
            for scoring_batch in batch
            for value in scoring_batch.examples.values()
        )

    def run_inference(self, batch, model, inference_args=None):
        """ScoringBatches -> one PredictionResult(ScoringBatch, BatchPredictions, version) each. The model
        is called once per max_batch_size rows; when a call fails, its rows are scored one at a time, so
        only the bad rows fail: they are in BatchPredictions.errors, dead letters downstream."""
        version = model_version(model.path)
        try:
            arrays = {spec.name: np.concatenate([b.examples[spec.name] for b in batch]) for spec in model.inputs}
        except ValueError:  # an input of variable size: each ScoringBatch on its own
            return [result for scoring_batch in batch for result in self.run_inference([scoring_batch], model)]
        total = sum(batch_rows(b) for b in batch)
        errors = {}
        pieces = [
            self._score(
                {name: a[start : start + self._max_batch_size] for name, a in arrays.items()}, model, start, errors
            )
            for start in range(0, total, self._max_batch_size)
        ]
        outputs = _join_rows(pieces)
        results, offset = [], 0
        for scoring_batch in batch:
            end = offset + batch_rows(scoring_batch)
            results.append(
                PredictionResult(
                    scoring_batch,
                    BatchPredictions(
                        {name: value[offset:end] for name, value in outputs.items()},
                        {row - offset: message for row, message in errors.items() if offset <= row < end},
                    ),
                    version,
                )
            )
            offset = end
        return results

    def _score(self, arrays, model, offset, errors):
        """(row count, outputs or None when every row failed); failed rows' messages go to `errors`."""
        count = len(next(iter(arrays.values())))
        try:
            return count, model(arrays)
        except (tf.errors.OpError, ValueError, TypeError) as e:
            if count == 1:
                errors[offset] = f"{type(e).__name__}: {e}"
                return 1, None
        return count, _join_rows(
            [self._score({n: a[i : i + 1] for n, a in arrays.items()}, model, offset + i, errors) for i in range(count)]
        )

    def get_metrics_namespace(self):
        return "score"


def _join_rows(pieces):
    """(row count, {name: array} or None) pieces -> {name: array} of all rows, zeros where a piece failed
    ({} when all did)."""
    scored = next((outputs for _, outputs in pieces if outputs is not None), None)
    if scored is None:
        return {}
    if len(pieces) == 1:
        return scored
    return {
        name: np.concatenate(
            [o[name] if o is not None else np.zeros((count, *value.shape[1:]), value.dtype) for count, o in pieces]
        )
        for name, value in scored.items()
    }


def model_directory(path):
    """A SavedModel is named by its folder; a watched pattern may match its `saved_model.pb` instead."""
    return posixpath.dirname(path) if path.endswith("saved_model.pb") else path.rstrip("/")


def model_version(path):
    """The version recorded with each prediction: the model's folder name (e.g. `.../models/3` -> `3`) or
    the `.keras` file name."""
    return posixpath.basename(model_directory(path))


class ScoringRequest(NamedTuple):
    """What travels with an example through RunInference, as the key."""

    request_id: str
    content_key: str  # MD5 of the model input (image bytes or canonical JSON of the features)
    received_at: float  # epoch seconds: publish time in streaming, read time in batch
    instance_index: int | None = None  # the position in a TF Serving request body; None for a plain request
    feature_time_index: tuple = ()  # online features: ({"window_name", "time_index"} per window of the spec)


class ScoringBatch(NamedTuple):
    """Requests on their way through RunInference together: one element for many requests."""

    requests: list  # ScoringRequest, one per row
    examples: dict  # {input name: array stacking the requests' values, one row each}


def stack_examples(examples, inputs):
    """[{input name: value}] (prepare_example's) -> {input name: array of one row per example}."""
    return {
        spec.name: np.asarray([example[spec.name] for example in examples], dtype=spec.dtype)
        if spec.dtype in _FLOAT_DTYPES
        else np.stack([example[spec.name] for example in examples])
        for spec in inputs
    }


_FLOAT_DTYPES = frozenset(("float16", "float32", "float64"))
_NUMBERS = frozenset((float, int))


def _plain_numbers(value, shape):
    """Whether `value` is Python numbers in exactly `shape` (a number, or a flat list of them): what a
    float input takes as it is, converted with its batch instead of checked through numpy one by one."""
    if not shape:
        return type(value) in _NUMBERS
    return (
        len(shape) == 1 and type(value) is list and len(value) == shape[0] and all(type(v) in _NUMBERS for v in value)
    )


_INPUT_NAMES = {}  # id(inputs) -> (inputs, their names or None), the list held so that its id stays its own


def _float_scalar_names(inputs):
    """The inputs' names when each takes one float number (a tabular model), else None; remembered per inputs
    list (a model's is the same list on every call)."""
    entry = _INPUT_NAMES.get(id(inputs))
    if entry is None or entry[0] is not inputs:
        scalars = all(spec.dtype in _FLOAT_DTYPES and not spec.shape for spec in inputs)
        entry = remember(_INPUT_NAMES, id(inputs), (inputs, tuple(s.name for s in inputs) if scalars else None), 16)
    return entry[1]


def image_input(inputs):
    """The model's one input when it takes an image: encoded bytes (a string input: the model decodes) or
    decoded pixels (height x width x 3); None otherwise."""
    if len(inputs) == 1 and (inputs[0].dtype == "string" or len(inputs[0].shape) == 3):
        return inputs[0]
    return None


def check_image_scale(scale, inputs):
    """Start-up check of --image_scale against the model's inputs."""
    spec = image_input(inputs)
    if scale == "auto":
        return
    if spec is None or spec.dtype == "string":
        takes = "encoded image bytes, which it decodes itself" if spec else f"the inputs {[s.name for s in inputs]}"
        raise ValueError(f"--image_scale {scale}: the model takes {takes}, not decoded pixels; leave --image_scale out")
    if scale in ("0_1", "-1_1") and np.issubdtype(np.dtype(spec.dtype), np.integer):
        raise ValueError(
            f"--image_scale {scale} gives fractional pixel values, but the model's input '{spec.name}' is "
            f"{spec.dtype}: use --image_scale none (the raw 0-255 values)"
        )


def pixel_values(pixels, scale, dtype):
    """Decoded uint8 pixels (height x width x 3) -> the values of an input of `dtype`, by --image_scale:
    0_1 is pixel / 255, -1_1 pixel / 127.5 - 1 (Keras applications' "tf" mode), 0_255 and none the values
    as they are; auto is 0_1 for a float input, none for an integer one."""
    if scale == "auto":
        scale = "none" if np.issubdtype(np.dtype(dtype), np.integer) else "0_1"
    if scale == "0_1":
        return (pixels / 255.0).astype(dtype)
    if scale == "-1_1":
        return (pixels / 127.5 - 1.0).astype(dtype)
    return pixels.astype(dtype)  # 0_255 and none: the values as they are


def request_id_of(record):
    """A record's `id` (or `request_id`) as text, checked to fit a Bigtable row key."""
    request_id = record.get("id") or record.get("request_id")
    if not request_id:
        raise RecordError("missing_field", "the record has no 'id' (or 'request_id') to return predictions under")
    request_id = text(request_id, "id")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RecordError(
            "bad_key",
            f"the request id has {len(request_id)} characters, over {MAX_REQUEST_ID_CHARS} "
            f"(it becomes a Bigtable row key)",
        )
    return request_id


def prepare_example(
    record,
    inputs,
    tabular=False,
    max_image_bytes=20 * 1024 * 1024,
    max_image_pixels=40_000_000,
    image_scale="auto",
):
    """A JSON record -> (request id, content key, {input name: numpy value}) for the model's inputs.

    One string input takes the image bytes as they are (the model decodes them). One image-shaped input
    (height x width x 3) gets the image decoded and resized here (stretch, bilinear), its pixel values
    scaled by `image_scale` (see pixel_values). Otherwise, or when `tabular` (the values are given as they
    are), each input is a named feature taken from `features` (or the top level).
    """
    request_id = request_id_of(record)
    spec = None if tabular else image_input(inputs)
    if spec is not None:
        data = _image_bytes(record, spec.name)
        content_key = hashlib.md5(data).hexdigest()
        if spec.dtype == "string":  # the model decodes: check the format and the pixel count from the header
            check_image_header(data, max_image_bytes, max_image_pixels)
            return request_id, content_key, {spec.name: np.array(data, dtype=object)}
        height, width, _ = spec.shape
        decoded, _ = decode_image(data, max_image_bytes, max_image_pixels)
        pixels = np.asarray(resize(decoded, width, height, "stretch"))
        return request_id, content_key, {spec.name: pixel_values(pixels, image_scale, spec.dtype)}
    features = record.get("features", record)
    if not isinstance(features, dict):
        raise RecordError(
            "bad_feature", f"'features' must be an object of feature values, got {type(features).__name__}"
        )
    names = _float_scalar_names(inputs)
    if names is not None and type(features) is dict:  # a tabular model's usual request, on a short path
        try:
            given = {name: features[name] for name in names}
        except KeyError:
            given = None  # the loop below names the missing feature
        if given is not None and set(map(type, given.values())) <= _NUMBERS:
            return request_id, hashlib.md5(content_json(given).encode()).hexdigest(), dict(given)
    example, given = {}, {}  # given: the inputs' values as the request holds them (the content key's)
    for spec in inputs:
        if spec.name not in features:
            raise RecordError(
                "missing_feature", f"feature '{spec.name}' is missing; the model takes {[s.name for s in inputs]}"
            )
        value = given[spec.name] = features[spec.name]
        if spec.dtype in _FLOAT_DTYPES and _plain_numbers(value, spec.shape):
            example[spec.name] = value  # converted with the batch (stack_examples)
            continue
        try:
            value = np.asarray(value, dtype=object if spec.dtype == "string" else spec.dtype)
        except (TypeError, ValueError) as e:
            raise RecordError("bad_feature", f"feature '{spec.name}' is not {spec.dtype}: {e}") from None
        if value.shape != spec.shape and not (None in spec.shape and len(value.shape) == len(spec.shape)):
            raise RecordError(
                "bad_feature", f"feature '{spec.name}' has shape {value.shape}, the model takes {spec.shape}"
            )
        example[spec.name] = value
    canonical = content_json(given)
    return request_id, hashlib.md5(canonical.encode()).hexdigest(), example


def _image_bytes(record, input_name):
    if isinstance(record.get("image_data"), bytes):  # raw bytes: an image file or a Pub/Sub body
        return record["image_data"]
    for key in dict.fromkeys(("image_bytes", input_name)):  # TF Serving clients name the signature's input
        image = record.get(key)
        if isinstance(image, dict) and "b64" in image:
            return decode_base64(image["b64"], f"{key}.b64")
    if "b64" in record:
        return decode_base64(record["b64"], "b64")
    raise RecordError("missing_field", 'the model takes an image: send {"image_bytes": {"b64": ...}}')


def prediction_row(request, outputs, version, labels=None, top_k=3, scored_at=None):
    """The row written to BigQuery, Pub/Sub and the cache for one request (see prediction_rows)."""
    outputs = {name: np.asarray(value)[np.newaxis] for name, value in outputs.items()}
    return prediction_rows([request], outputs, version, labels, top_k, scored_at)[0]


def prediction_rows(requests, outputs, version, labels=None, top_k=3, scored_at=None, failed=()):
    """The rows of a batch of requests, {output name: array of one row per request} the model's outputs,
    leaving out the rows in `failed`. For a classifier (one output, one score per label) each also lists the
    top-k labels with their probabilities. Each output is converted to Python values once per batch."""
    scored_at = scored_at or time.time()
    at = datetime.datetime.fromtimestamp(scored_at, datetime.UTC).isoformat()
    names = sorted(outputs)
    columns = [(f"{_json(name)}: ", np.asarray(outputs[name]).tolist()) for name in names]
    top = [[] for _ in requests]
    if len(names) == 1 and labels is not None and requests:
        scores = np.asarray(outputs[names[0]], dtype=np.float64).reshape(len(requests), -1)
        if scores.shape[1] == len(labels):
            best, values = np.argsort(-scores, axis=1, kind="stable")[:, :top_k].tolist(), scores.tolist()
            top = [
                [{"label": labels[j], "score": row[j]} for j in order] for order, row in zip(best, values, strict=True)
            ]
    rows = []
    for i, request in enumerate(requests):
        if i in failed:
            continue
        rows.append(
            {
                "request_id": request.request_id,
                "instance_index": request.instance_index,
                "model_version": version,
                "content_key": request.content_key,
                "outputs": "{" + ", ".join(key + _json(values[i]) for key, values in columns) + "}",
                "top_k": top[i],
                "scored_at": at,
                "latency_ms": round((scored_at - request.received_at) * 1000, 3),
                "cache_hit": False,
                "feature_time_index": list(request.feature_time_index),
            }
        )
    return rows


def received_seconds(row):
    """When a prediction row's request was received (its publish time in streaming): scored_at - latency_ms."""
    return datetime.datetime.fromisoformat(row["scored_at"]).timestamp() - (row["latency_ms"] or 0.0) / 1000


def oldest_request_seconds(rows, timestamp_seconds):
    """The event time of a list of prediction rows in the health rows (write_health_rows): the receipt of its
    oldest request, so that scoring's freshness is its latency from publish to prediction, a backlog in the
    subscription included (batching before the model stamps the lists at the end of the global window);
    `timestamp_seconds` for an empty list."""
    return min(map(received_seconds, rows), default=timestamp_seconds)


PREDICTION_BQ_SCHEMA = {
    "fields": [
        {"name": "request_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "instance_index", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "model_version", "type": "STRING", "mode": "REQUIRED"},
        {"name": "content_key", "type": "STRING", "mode": "NULLABLE"},
        {"name": "outputs", "type": "JSON", "mode": "NULLABLE"},
        {
            "name": "top_k",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "label", "type": "STRING", "mode": "REQUIRED"},
                {"name": "score", "type": "FLOAT", "mode": "REQUIRED"},
            ],
        },
        {"name": "scored_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "latency_ms", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "cache_hit", "type": "BOOLEAN", "mode": "REQUIRED"},
        {
            "name": "feature_time_index",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "window_name", "type": "STRING", "mode": "REQUIRED"},
                {"name": "time_index", "type": "TIMESTAMP", "mode": "NULLABLE"},
            ],
        },
    ]
}
