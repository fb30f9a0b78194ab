"""Scoring with TensorFlow models through Beam's RunInference: a model handler for SavedModels (called
through their serving signature) and `.keras` files, that calls the model once per batch and hands back
numpy rows, plus the per-element preparation of inputs from the signature and the prediction rows.
"""

import datetime
import hashlib
import json
import posixpath
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.core.records import text
from transforms.images.pixels import check_image_header, decode_base64, decode_image, resize
from transforms.io.deadletter import RecordError

INFERENCE_ERROR = "__inference_error__"


MAX_REQUEST_ID_CHARS = 1024

IMAGE_SCALES = ("auto", "0_1", "0_255", "-1_1", "none")  # --image_scale: see pixel_values


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
            # one traced graph per input shape: eager Keras calls cost ~20 ms each on small models
            self._keras_call = tf.function(lambda x: self._keras(x, training=False), reduce_retracing=True)
            self._signature = None
            self.inputs = [
                InputSpec(t.name.split(":")[0], tf.as_dtype(t.dtype).name, tuple(t.shape[1:]))
                for t in self._keras.inputs
            ]
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
            arrays = [batch[spec.name] for spec in self._model_inputs]
            outputs = self._keras_call(arrays if len(arrays) > 1 else arrays[0])
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return {name: np.asarray(o) for name, o in zip(self.output_names, outputs, strict=True)}
        tensors = {name: tf.constant(value) for name, value in batch.items()}
        return {name: value.numpy() for name, value in self._signature(**tensors).items()}


class TfModelHandler(ModelHandler):
    """Loads the model once per worker process (RunInference shares it) and scores each batch with one
    call; the rows of the result are numpy slices, never converted tensor by tensor. The model can be
    swapped while running (RunInference's model-metadata side input calls `update_model_path`)."""

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
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
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
            np.asarray(value).nbytes if np.asarray(value).dtype != object else len(value.item())
            for example in batch
            for value in example.values()
        )

    def run_inference(self, batch, model, inference_args=None):
        """One model call per batch. When it fails, the batch is scored one example at a time, so only
        the bad examples fail: their inference is {INFERENCE_ERROR: message}, a dead letter downstream."""
        version = model_version(model.path)
        try:
            outputs = model({spec.name: np.stack([example[spec.name] for example in batch]) for spec in model.inputs})
        except (tf.errors.OpError, ValueError, TypeError) as e:
            if len(batch) == 1:
                return [PredictionResult(batch[0], {INFERENCE_ERROR: f"{type(e).__name__}: {e}"}, version)]
            return [result for example in batch for result in self.run_inference([example], model)]
        return [
            PredictionResult(example, {name: value[i] for name, value in outputs.items()}, version)
            for i, example in enumerate(batch)
        ]

    def get_metrics_namespace(self):
        return "score"


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
    example = {}
    for spec in inputs:
        if spec.name not in features:
            raise RecordError(
                "missing_feature", f"feature '{spec.name}' is missing; the model takes {[s.name for s in inputs]}"
            )
        try:
            value = np.asarray(features[spec.name], dtype=object if spec.dtype == "string" else spec.dtype)
        except (TypeError, ValueError) as e:
            raise RecordError("bad_feature", f"feature '{spec.name}' is not {spec.dtype}: {e}") from None
        if value.shape != spec.shape and not (None in spec.shape and len(value.shape) == len(spec.shape)):
            raise RecordError(
                "bad_feature", f"feature '{spec.name}' has shape {value.shape}, the model takes {spec.shape}"
            )
        example[spec.name] = value
    canonical = json.dumps({s.name: features[s.name] for s in inputs}, sort_keys=True, default=str)
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
    """The row written to BigQuery, Pub/Sub and the cache. For a classifier (one output, one score per
    label) it also lists the top-k labels with their probabilities."""
    scored_at = scored_at or time.time()
    row = {
        "request_id": request.request_id,
        "instance_index": request.instance_index,
        "model_version": version,
        "content_key": request.content_key,
        "outputs": json.dumps({name: np.asarray(v).tolist() for name, v in sorted(outputs.items())}),
        "top_k": [],
        "scored_at": datetime.datetime.fromtimestamp(scored_at, datetime.UTC).isoformat(),
        "latency_ms": round((scored_at - request.received_at) * 1000, 3),
        "cache_hit": False,
    }
    if len(outputs) == 1:
        scores = np.asarray(next(iter(outputs.values())), dtype=np.float64).ravel()
        if labels is not None and len(scores) == len(labels):
            best = np.argsort(-scores, kind="stable")[:top_k]
            row["top_k"] = [{"label": labels[i], "score": float(scores[i])} for i in best]
    return row


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
    ]
}
