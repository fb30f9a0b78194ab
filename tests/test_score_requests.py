"""TensorFlow Serving request bodies (instances, columnar inputs, classify/regress examples) through the
request parser, the TF Serving responses regrouped per body, and the pixel scaling of --image_scale,
without a pipeline run or a trained model."""

import base64
import hashlib
import io
import json

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines import score
from transforms.io.deadletter import DEAD_LETTER_TAG, GuardedDoFn, RecordError, make_dead_letter
from transforms.scoring.model import (
    InputSpec,
    ScoringRequest,
    check_image_scale,
    content_json,
    json_encoder,
    prediction_row,
    prediction_rows,
    prepare_example,
)
from transforms.scoring.requests import ENVELOPES_TAG, ParseRequests, TfServingResponses, tf_serving_response

IMAGE_MODEL = [InputSpec("image_bytes", "string", ())]
TABULAR_MODEL = [InputSpec("age", "float32", ()), InputSpec("history", "float32", (3,))]


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data):
    return base64.b64encode(data).decode()


def parsed(parse, raw):
    """(requests as (request id, instance index, example), dead letters as (attributes, reason, payload),
    envelope markers) of one raw request."""
    requests, dead, envelopes = [], [], []
    for output in parse.process([raw]):
        if not isinstance(output, beam.pvalue.TaggedOutput):
            for i, request in enumerate(output.requests):
                example = {name: value[i] for name, value in output.examples.items()}
                requests.append((request.request_id, request.instance_index, example, request.content_key))
        elif output.tag == ENVELOPES_TAG:
            envelopes.append(output.value)
        else:
            assert output.tag == DEAD_LETTER_TAG
            letter = output.value
            attributes = {a["key"]: a["value"] for a in letter["attributes"]}
            dead.append((attributes, letter["reason"], letter["payload_string"]))
    return requests, dead, envelopes


def test_an_instances_body_gives_one_example_or_dead_letter_per_instance():
    red, blue = png(np.full((4, 4, 3), (200, 0, 0), np.uint8)), png(np.full((2, 3, 3), (0, 0, 200), np.uint8))
    body = {"instances": [{"image_bytes": {"b64": b64(red)}}, {"b64": "***"}, 7, {"b64": b64(blue)}]}
    message = PubsubMessage(json.dumps(body).encode(), {"request_id": "m1", "client": "web"}, message_id="41")
    requests, dead, envelopes = parsed(ParseRequests(IMAGE_MODEL, None, "score", 1 << 20, 1 << 16), message)
    assert [(r[0], r[1], r[2]["image_bytes"], r[3]) for r in requests] == [
        ("m1/0", 0, red, hashlib.md5(red).hexdigest()),
        ("m1/3", 3, blue, hashlib.md5(blue).hexdigest()),
    ]
    base = {"request_id": "m1", "client": "web"}
    assert dead == [
        ({**base, "score.request_id": "m1/1", "score.instance_index": "1"}, "bad_base64", '{"b64": "***"}'),
        ({**base, "score.request_id": "m1/2", "score.instance_index": "2"}, "wrong_type", "7"),
    ]
    assert envelopes == [("m1", 4)]
    # without a request_id attribute the body id is the message id; in a file, the body's own "id"
    requests, _, envelopes = parsed(
        ParseRequests(IMAGE_MODEL, None, "score", 1 << 20, 1 << 16),
        PubsubMessage(json.dumps({"instances": [{"b64": b64(red)}]}).encode(), {}, message_id="41"),
    )
    assert [r[0] for r in requests] == ["41/0"] and envelopes == [("41", 1)]


def test_tabular_bodies_in_the_row_columnar_and_examples_forms():
    parse = ParseRequests(TABULAR_MODEL, None, "score", 1 << 20, 1 << 16)
    rows = {
        "id": "t",
        "instances": [{"age": 31, "history": [1, 2, 3]}, {"age": "old", "history": [1, 2, 3]}, {"age": 1}, [1, 2, 3]],
    }
    requests, dead, envelopes = parsed(parse, json.dumps(rows))
    [(request_id, index, example, key)] = requests
    assert (request_id, index, float(example["age"]), example["history"].tolist()) == ("t/0", 0, 31.0, [1, 2, 3])
    assert example["age"].dtype == np.float32 and example["history"].dtype == np.float32
    assert key == hashlib.md5(b'{"age": 31, "history": [1, 2, 3]}').hexdigest()
    assert [(a["score.instance_index"], reason) for a, reason, _ in dead] == [
        ("1", "bad_feature"),
        ("2", "missing_feature"),
        ("3", "wrong_type"),
    ]
    assert envelopes == [("t", 4)]

    columnar = {"id": "c", "inputs": {"age": [1, 2], "history": [[1, 2, 3], [4, 5, 6]]}}
    examples = {"id": "e", "context": {"history": [0, 0, 1]}, "examples": [{"age": 5}, {"age": 6, "history": [1] * 3}]}
    for body, expected in [
        (columnar, [("c/0", 1.0, [1, 2, 3]), ("c/1", 2.0, [4, 5, 6])]),
        (examples, [("e/0", 5.0, [0, 0, 1]), ("e/1", 6.0, [1, 1, 1])]),
    ]:
        requests, dead, envelopes = parsed(parse, body)
        assert [(r[0], float(r[2]["age"]), r[2]["history"].tolist()) for r in requests] == expected
        assert dead == [] and envelopes == [(body["id"], 2)]

    one_input = ParseRequests([InputSpec("x", "float32", (2,))], None, "score", 1 << 20, 1 << 16)
    requests, dead, _ = parsed(one_input, {"id": "v", "instances": [[1, 2], [3]], "signature_name": "serving_default"})
    assert [(r[0], r[2]["x"].tolist()) for r in requests] == [("v/0", [1.0, 2.0])]
    assert [(a["score.request_id"], reason) for a, reason, _ in dead] == [("v/1", "bad_feature")]


@pytest.mark.parametrize(
    "body, reason, words",
    [
        ({"id": "b", "instances": []}, "empty", "'instances' holds no instances"),
        ({"id": "b", "instances": {"age": 1}}, "wrong_type", "'instances' must be a list"),
        ({"id": "b", "inputs": {}}, "empty", "'inputs' holds no instances"),
        ({"id": "b", "inputs": {"age": [1], "history": [[1, 2, 3]] * 2}}, "bad_field", "differ in length"),
        ({"id": "b", "inputs": {"age": 1}}, "wrong_type", "'inputs.age' must be a list"),
        ({"id": "b", "examples": [{"age": 1}], "context": [1]}, "wrong_type", "'context' must be an object"),
        ({"id": "b", "instances": [1] * 4}, "too_large", "over --max_instances_per_request 3"),
        ({"id": "b", "inputs": {"age": [1] * 4, "history": [[1, 2, 3]] * 4}}, "too_large", "--max_instances_per"),
        ({"id": "b", "instances": [1], "signature_name": "classify"}, "bad_field", "--signature 'serving_default'"),
        ({"id": "b", "instances": [1], "examples": [1]}, "bad_field", "send one of"),
        ({"instances": [{"age": 1, "history": [1, 2, 3]}]}, "missing_field", "no 'id'"),
    ],
)
def test_a_body_unusable_as_a_whole_is_one_dead_letter(body, reason, words):
    parse = ParseRequests(TABULAR_MODEL, None, "score", 1 << 20, 1 << 16, max_instances=3)
    outputs = list(parse.process([json.dumps(body)]))
    [letter] = [o.value for o in outputs]
    assert outputs[0].tag == DEAD_LETTER_TAG and letter["reason"] == reason and words in letter["error_message"]
    assert json.loads(letter["payload_string"]) == body


def _row(request_id, index, scores):
    return prediction_row(ScoringRequest(request_id, "k", 0.0, index), {"scores": np.array(scores)}, "1")


def _instance_dead_letter(request_id, index, reason):
    attributes = {"score.request_id": request_id, "score.instance_index": str(index)}
    return make_dead_letter("score", "RunInference", {}, RecordError(reason, "it broke"), attributes)


def test_responses_are_regrouped_per_body_in_instance_order():
    rows = [
        _row("b/2", 2, [0.5, 0.5]),
        _row("b/0", 0, [0.1, 0.9]),
        _row("b/1", 1, [1.0, 0.0]),
        _row("b/1", 1, [1.0, 0.0]),  # a redelivered message: counted once
        _row("plain", None, [0.3, 0.7]),
        _row("f/0", 0, [0.2, 0.8]),
    ]
    dead = [_instance_dead_letter("f/1", 1, "inference_failed"), make_dead_letter("score", "ParseRequests", "x", "?")]
    with TestPipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as p:
        responses = (
            p | "Rows" >> beam.Create(rows),
            p | "Envelopes" >> beam.Create([("b", 3), ("f", 2), ("never-complete", 2)]),
            p | "Dead" >> beam.Create(dead),
        ) | TfServingResponses()
        assert_that(
            responses,
            equal_to(
                [
                    {"request_id": "b", "predictions": [[0.1, 0.9], [1.0, 0.0], [0.5, 0.5]]},
                    {"request_id": "plain", "predictions": [[0.3, 0.7]]},
                    {
                        "request_id": "f",
                        "error": "1 of 2 instances failed (see the dead letters): "
                        "instance 1: inference_failed: it broke",
                    },
                ]
            ),
        )


def test_responses_in_streaming_wait_for_the_last_instance():
    """On the streaming runner, outcomes arriving in separate bundles: the body is answered once, when its
    last instance is in."""
    tagged = [
        beam.window.TimestampedValue(("row", _row("s/1", 1, [0.0, 1.0])), 10),
        beam.window.TimestampedValue(("envelope", ("s", 2)), 10),
        beam.window.TimestampedValue(("row", _row("s/0", 0, [1.0, 0.0])), 12),
    ]
    stream = TestStream().add_elements(tagged[:1]).advance_watermark_to(11).add_elements(tagged[1:2])
    stream = stream.advance_watermark_to(12).add_elements(tagged[2:]).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        inputs = p | stream
        responses = (
            inputs | "Rows" >> beam.Filter(lambda t: t[0] == "row") | "R" >> beam.Map(lambda t: t[1]),
            inputs | "Envelopes" >> beam.Filter(lambda t: t[0] == "envelope") | "E" >> beam.Map(lambda t: t[1]),
            p | "NoDeadLetters" >> beam.Create([]),
        ) | TfServingResponses()
        assert_that(responses, equal_to([{"request_id": "s", "predictions": [[1.0, 0.0], [0.0, 1.0]]}]))


def test_a_response_with_several_outputs_and_many_failures():
    outcomes = [("prediction", '{"a": [1], "b": 2}')] + [("error", f"bad_feature: no {i}") for i in range(1, 13)]
    assert tf_serving_response("x", outcomes[:1]) == {"request_id": "x", "predictions": [{"a": [1], "b": 2}]}
    error = tf_serving_response("x", outcomes)["error"]
    assert error.startswith("12 of 13 instances failed") and "instance 10: bad_feature: no 10" in error
    assert "instance 11:" not in error and error.endswith("; 2 more")


@pytest.fixture(scope="module")
def image():
    """A 6 x 5 RGB image (height x width) of random pixels, and its lossless PNG."""
    pixels = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return pixels, png(pixels)


@pytest.mark.parametrize(
    "scale, dtype, expected",
    [
        ("auto", "float32", lambda p: p.astype(np.float64) / 255),
        ("0_1", "float32", lambda p: p.astype(np.float64) / 255),
        ("0_255", "float32", lambda p: p.astype(np.float64)),
        ("-1_1", "float32", lambda p: tf.keras.applications.mobilenet_v2.preprocess_input(p.astype(np.float32))),
        ("none", "float32", lambda p: p.astype(np.float64)),
        ("-1_1", "float16", lambda p: p.astype(np.float64) / 127.5 - 1),
        ("auto", "uint8", lambda p: p),
        ("none", "uint8", lambda p: p),
    ],
)
def test_each_image_scale_against_numpy(image, scale, dtype, expected):
    pixels, data = image
    spec = InputSpec("pixels", dtype, (6, 5, 3))
    _, _, example = prepare_example({"id": "r", "image_bytes": {"b64": b64(data)}}, [spec], image_scale=scale)
    value = example["pixels"]
    assert value.dtype == np.dtype(dtype) and value.shape == (6, 5, 3)
    tolerance = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(value.astype(np.float64), np.asarray(expected(pixels), np.float64), atol=tolerance)


def test_a_pixel_tensor_instance_is_taken_unscaled():
    tensor = [[[0, 10, 255], [1, 2, 3]], [[4, 5, 6], [7, 8, 9]]]
    parse = ParseRequests([InputSpec("pixels", "float32", (2, 2, 3))], None, "score", 1 << 20, 1 << 16, "-1_1")
    requests, dead, _ = parsed(parse, {"id": "p", "instances": [tensor, {"pixels": tensor}, {"pixels": [1]}]})
    assert [(r[0], r[2]["pixels"].tolist()) for r in requests] == [("p/0", tensor), ("p/1", tensor)]
    assert [(a["score.request_id"], reason) for a, reason, _ in dead] == [("p/2", "bad_feature")]


def test_image_scale_is_checked_against_the_signature(tmp_path):
    uint8_pixels = [InputSpec("pixels", "uint8", (8, 8, 3))]
    for scale in ("0_1", "-1_1"):
        with pytest.raises(ValueError, match=f"--image_scale {scale} gives fractional .* 'pixels' is uint8"):
            check_image_scale(scale, uint8_pixels)
    for scale in ("auto", "none", "0_255"):
        check_image_scale(scale, uint8_pixels)
    with pytest.raises(ValueError, match="--image_scale 0_1: the model takes encoded image bytes"):
        check_image_scale("0_1", IMAGE_MODEL)
    with pytest.raises(ValueError, match=r"--image_scale none: the model takes the inputs \['age', 'history'\]"):
        check_image_scale("none", TABULAR_MODEL)
    # at start-up, from the model's own signature
    inputs = tf.keras.Input((8, 8, 3), dtype="uint8", name="pixels")
    scaled = tf.keras.layers.Rescaling(1 / 255)(inputs)
    tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(scaled))).save(tmp_path / "u8.keras")
    flags = ["--model_path", str(tmp_path / "u8.keras"), "--image_scale", "0_1"]
    with pytest.raises(ValueError, match="--image_scale 0_1 gives fractional"):
        score.validate(PipelineOptions(flags))


def test_start_up_checks_of_the_request_and_response_flags():
    for flags, words in [
        (["--predictions_format", "tf_serving"], "--predictions_format tf_serving .* give a topic"),
        (["--max_instances_per_request", "0"], "--max_instances_per_request must be positive"),
    ]:
        with pytest.raises(ValueError, match=words):
            score.validate(PipelineOptions(flags))


# Batches against one record at a time: arbitrary plain requests, TF Serving bodies and bytes, for a model
# with fixed-size float inputs and one with a string input of variable size (whose values never stack).
VARIABLE_MODEL = [InputSpec("age", "float32", ()), InputSpec("tags", "string", (None,))]
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-9, 9), st.text(max_size=2)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
features = st.dictionaries(st.sampled_from(["age", "history", "tags", "other"]), values, max_size=4)
plain = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=5), st.integers(0, 99))}, optional={"features": features}
).map(lambda record: {**record.pop("features", {}), **record} if len(record) % 2 else record)
bodies = st.fixed_dictionaries({"id": st.sampled_from(["b", "c"]), "instances": st.lists(features, max_size=4)})
records = st.one_of(plain, plain, bodies).map(lambda r: json.dumps(r).encode()) | st.binary(max_size=20)


def _comparable(outputs):
    """Outputs -> a sorted list of their reprs: requests one per row (the arrays' values and dtypes), dead
    letters without their time, envelope markers."""
    seen = []
    for output in outputs:
        if isinstance(output, beam.pvalue.TaggedOutput):
            value = output.value if output.tag == ENVELOPES_TAG else {**output.value, "failed_at": None}
            seen.append(repr((output.tag, value)))
            continue
        for i, r in enumerate(output.requests):
            example = {
                name: (v[i].tolist() if hasattr(v[i], "tolist") else v[i], v.dtype.str)
                for name, v in output.examples.items()
            }
            seen.append(repr((r.request_id, r.content_key, r.instance_index, example)))
    return sorted(seen)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=12), st.integers(1, 5))
def test_a_batch_of_requests_gives_what_its_records_give_one_by_one(batch, max_batch_size):
    for inputs in (TABULAR_MODEL, VARIABLE_MODEL):
        parse = ParseRequests(inputs, None, "score", 1 << 20, 1 << 16, max_instances=3, max_batch_size=max_batch_size)
        batched = list(parse.process(batch))
        assert all(len(o.requests) <= max_batch_size for o in batched if not isinstance(o, beam.pvalue.TaggedOutput))
        one_by_one = [output for record in batch for output in GuardedDoFn.process(parse, record)]
        assert _comparable(batched) == _comparable(one_by_one)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.sampled_from([(), (1,), (3,), (2, 2)]),
    st.sampled_from(["float32", "float64", "int64"]),
    st.data(),
)
def test_rows_of_a_batch_equal_rows_one_by_one(count, shape, dtype, data):
    elements = st.floats(width=32) if dtype == "float32" else st.floats() if dtype == "float64" else st.integers(-9, 9)
    flat = data.draw(st.lists(elements, min_size=count * int(np.prod(shape)), max_size=count * int(np.prod(shape))))
    outputs = {"scores": np.array(flat, dtype=dtype).reshape((count, *shape))}
    failed = data.draw(st.sets(st.integers(0, count - 1)))
    requests = [ScoringRequest(f"r{i}", "k", 1.0, None) for i in range(count)]
    labels = ["a", "b", "c"]
    rows = prediction_rows(requests, outputs, "1", labels, 2, 5.0, failed=failed)
    one_by_one = [
        prediction_row(r, {"scores": outputs["scores"][i]}, "1", labels, 2, 5.0)
        for i, r in enumerate(requests)
        if i not in failed
    ]
    assert repr(rows) == repr(one_by_one)
    for row, i in zip(rows, [i for i in range(count) if i not in failed], strict=True):
        assert row["outputs"] == json.dumps({"scores": outputs["scores"][i].tolist()})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, st.binary(max_size=4), st.dictionaries(st.text(max_size=2), st.binary(max_size=2))))
def test_the_reused_json_encoders_give_json_dumps_text(value):
    """Arbitrary values (NaN, infinities, integers past 64 bits, non-ASCII and control characters, bytes
    written by `default=str`): the encoders made once give json.dumps' text."""
    assert json_encoder(sort_keys=True, default=str)(value) == json.dumps(value, sort_keys=True, default=str)
    try:
        expected = json.dumps(value)
    except TypeError:  # bytes, without `default`
        with pytest.raises(TypeError):
            json_encoder()(value)
    else:
        assert json_encoder()(value) == expected


# feature values: numbers of any size and sign (boundaries of content_json's orjson range included), flat
# lists of them, and what takes json's path (NaN, infinities, integers past 64 bits, booleans, text, nesting)
_numbers = st.one_of(
    st.floats(),
    st.floats(1e-5, 1e17),
    st.sampled_from([1e-4, -1e-4, 9.999999999999998e-05, 1e16, 9999999999999998.0, -0.0, 0.0, 5e-324]),
    st.integers(),
    st.integers(-(2**64), 2**64),
)
feature_values = st.one_of(_numbers, st.lists(_numbers, max_size=5), st.booleans(), st.text(max_size=2), json_values)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["age", "amount_sum_10m", "x.y/z-1", "a b", "a,b", "k:v", "é"]), st.text(max_size=3)),
        feature_values,
        max_size=8,
    )
)
@example({"age": float("inf"), "b": float("nan")})
@example({"age": 1e-05, "b": [1e16, 1e300]})
@example({"age": [2.0, 3e-07]})
@example({"a,b": 1.5, "k:v": 2.5, "é": 0.5})
@example({"age": "text, with: separators", "b": True, "c": None, "d": {}})
def test_content_json_is_json_dumps_text(features):
    """The content key's text, fast path or not, is json.dumps' with sorted keys: names with quotes,
    commas, colons or non-ASCII characters, and every kind of value."""
    assert content_json(features) == json.dumps(features, sort_keys=True, default=str)


SCALAR_MODEL = [InputSpec("b", "float32", ()), InputSpec("a", "float64", ())]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), feature_values, max_size=3),
        json_values,
    )
)
@example({"a": 1.5, "b": 2})
@example({"a": 1.5, "b": True})
@example({"a": 1.5})
@example(["a", "b"])
@example("ab")
def test_a_scalar_model_takes_numbers_as_given_and_checks_the_rest(features):
    """A model of float scalar inputs (prepare_example's short path): numbers given are the example as they
    are and the content key is the MD5 of their json.dumps text; anything else is a RecordError naming the
    feature, or a value numpy made of the given one."""
    record = {"id": "r", "features": features}
    wanted = {"b": None, "a": None}
    try:
        _, key, example = prepare_example(record, SCALAR_MODEL)
    except RecordError as e:
        named = (
            [name for name in wanted if type(features.get(name)) not in (int, float)]
            if isinstance(features, dict)
            else ["'features'"]
        )
        assert any(name in str(e) for name in named)
        return
    given = {name: features[name] for name in wanted}
    assert key == hashlib.md5(json.dumps(given, sort_keys=True, default=str).encode()).hexdigest()
    assert list(example) == ["b", "a"]
    for name, value in given.items():
        if type(value) in (int, float):
            assert example[name] is value
        else:
            assert float(example[name]) == np.asarray(value, dtype=np.float64) or np.isnan(float(example[name]))


def test_a_content_key_is_the_md5_of_the_inputs_canonical_json():
    """The content key (the serving cache's row key) stays what it was: MD5 of the model inputs' json.dumps
    text with sorted keys, whatever the order of the request's features."""
    record = {"id": "r", "features": {"history": [1, 2.5, 3e-7], "other": "x", "age": 41.5}}
    _, key, _ = prepare_example(record, TABULAR_MODEL)
    expected = hashlib.md5(json.dumps({"age": 41.5, "history": [1, 2.5, 3e-7]}, sort_keys=True).encode())
    assert key == expected.hexdigest()
