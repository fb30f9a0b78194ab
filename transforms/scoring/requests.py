"""Scoring requests in and prediction rows out, around RunInference: plain requests, TensorFlow Serving
REST bodies split into one example per instance, and the TF Serving response per body regrouped from the
instances' outcomes."""

import datetime
import json
import time

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from transforms.core.records import record_dict
from transforms.features.cleanse import serving_features
from transforms.io.deadletter import (
    GuardedBatchDoFn,
    GuardedDoFn,
    RecordError,
    make_dead_letter,
    payload_and_attributes,
)
from transforms.io.sources import ImageInput
from transforms.scoring.model import (
    ScoringBatch,
    ScoringRequest,
    image_input,
    prediction_rows,
    prepare_example,
    request_id_of,
    stack_examples,
)

DEFAULT_MAX_INSTANCES = 1000  # --max_instances_per_request
ENVELOPES_TAG = "envelopes"  # (body id, number of instances) per TF Serving body, for the responses
ENVELOPE_KEYS = ("instances", "inputs", "examples")
PREDICTIONS_FORMATS = ("rows", "tf_serving")  # --predictions_format
MAX_ERRORS_SHOWN = 10  # failed instances described in a tf_serving error response
FEATURE_TIMES_KEY = "_feature_time_index"  # set by online_features: the prediction row's feature_time_index


def envelope_instances(record, max_instances, signature):
    """The instances of a TensorFlow Serving REST body, or None for a plain request: `instances` (the
    "row" format), `inputs` (the "columnar" format: {input: [one value per instance]}, or a list for a
    one-input model) or `examples` (the classify/regress API, each merged over `context`). A body that is
    unusable as a whole raises RecordError."""
    if record.keys().isdisjoint(ENVELOPE_KEYS):  # a plain request, most are: no list built
        return None
    keys = [key for key in ENVELOPE_KEYS if key in record]
    if len(keys) > 1:
        raise RecordError("bad_field", f"the body has {keys}: send one of 'instances', 'inputs' or 'examples'")
    key, instances = keys[0], record[keys[0]]
    asked = record.get("signature_name")
    if asked is not None and asked != signature:
        raise RecordError(
            "bad_field",
            f"'signature_name' is {str(asked)[:100]!r} but this job serves --signature {signature!r}: "
            f"send it to a job started with that signature, or leave 'signature_name' out",
        )
    if key == "inputs" and isinstance(instances, dict):
        instances = _columns_to_rows(instances, max_instances)
    if not isinstance(instances, list):
        raise RecordError("wrong_type", f"'{key}' must be a list of instances, got {type(instances).__name__}")
    _check_count(key, len(instances), max_instances)
    if key == "examples":
        context = record.get("context", {})
        if not isinstance(context, dict):
            raise RecordError("wrong_type", f"'context' must be an object of features, got {type(context).__name__}")
        instances = [{**context, **e} if isinstance(e, dict) else e for e in instances]
    return instances


def _check_count(key, count, max_instances):
    if not count:
        raise RecordError("empty", f"'{key}' holds no instances: send at least one")
    if count > max_instances:
        raise RecordError(
            "too_large",
            f"'{key}' has {count} instances, over --max_instances_per_request {max_instances}: "
            f"split the body into smaller requests, or raise the flag",
        )


def _columns_to_rows(columns, max_instances):
    """The columnar `inputs` {input: [values]} -> one {input: value} per instance."""
    lengths = {name: len(v) if isinstance(v, list) else None for name, v in columns.items()}
    for name, length in lengths.items():
        if length is None:
            raise RecordError("wrong_type", f"'inputs.{name[:100]}' must be a list: one value per instance")
    if len(set(lengths.values())) > 1:
        raise RecordError("bad_field", f"the lists of 'inputs' differ in length: {dict(list(lengths.items())[:10])}")
    count = next(iter(lengths.values()), 0)
    _check_count("inputs", count, max_instances)
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


def instance_record(instance, request_id, inputs, image):
    """One instance -> (record for prepare_example, whether its values are given as they are). An object
    names the inputs (or is an image: {"b64": ...}, {"<input>": {"b64": ...}}); any other value is the
    value of a one-input model. A pixel tensor for an image-shaped input, named or not, is used unscaled."""
    if isinstance(instance, dict):
        if image is None:
            return {"id": request_id, "features": instance}, False
        named = instance.get(image.name)
        if image.dtype != "string" and image.name in instance and not (isinstance(named, dict) and "b64" in named):
            return {"id": request_id, "features": instance}, True
        return {**instance, "id": request_id}, False
    if len(inputs) == 1 and not (image and image.dtype == "string"):
        return {"id": request_id, "features": {inputs[0].name: instance}}, True
    wanted = '{"b64": ...}' if image else f"an object of the inputs {[s.name for s in inputs]}"
    raise RecordError("wrong_type", f"an instance must be {wanted}, got {type(instance).__name__}")


RESERVED_ATTRIBUTES = "score."  # dead-letter attributes of this prefix are the pipeline's, never the caller's


def instance_attributes(request_id, instance_index):
    """What the dead letter of an instance carries to find it (None for a plain request)."""
    if instance_index is None:
        return None
    return {"score.request_id": request_id, "score.instance_index": str(instance_index)}


RECEIVED_AT_KEY = "score.received_at"  # a scoring failure's dead letter: when its request was received


def scoring_failure_attributes(request):
    """What the dead letter of a request the model failed on carries: the instance's ids and the time the
    request was received (ISO 8601), from which the rollout SLIs take the failed request's latency."""
    received = datetime.datetime.fromtimestamp(request.received_at, datetime.UTC).isoformat()
    return {**(instance_attributes(request.request_id, request.instance_index) or {}), RECEIVED_AT_KEY: received}


class ParseRequests(GuardedBatchDoFn):
    """Raw requests (PubsubMessage, JSON line, BigQuery row, image file), a list at a time -> ScoringBatches
    of at most `max_batch_size` requests, or one dead letter per bad request naming the field at fault. A
    TensorFlow Serving body gives one request or dead letter per instance, under the request id
    `<body id>/<position>`, plus (body id, instance count) tagged ENVELOPES_TAG."""

    STEP = "ParseRequests"

    def __init__(
        self,
        inputs,
        feature_spec,
        pipeline_name,
        max_image_bytes,
        max_image_pixels,
        image_scale="auto",
        max_instances=DEFAULT_MAX_INSTANCES,
        signature="serving_default",
        max_batch_size=256,
        online_features=False,
    ):
        super().__init__(pipeline_name)
        self._online_features = online_features  # requests carry FEATURE_TIMES_KEY (AddOnlineFeatures)
        self._inputs, self._feature_spec = inputs, feature_spec
        self._image = None if feature_spec else image_input(inputs)
        self._max_instances, self._signature = max_instances, signature
        self._max_batch_size = max_batch_size
        self._limits = {
            "max_image_bytes": max_image_bytes,
            "max_image_pixels": max_image_pixels,
            "image_scale": image_scale,
        }
        self._envelopes = Metrics.counter(pipeline_name, "envelopes")
        self._envelope_instances = Metrics.counter(pipeline_name, "envelope_instances")

    def dead_letter_payload(self, raw):
        if isinstance(raw, ImageInput):
            return raw.data, None
        payload, attributes = payload_and_attributes(raw)
        return payload, {k: v for k, v in (attributes or {}).items() if not k.startswith(RESERVED_ATTRIBUTES)}

    def handle(self, raw):
        requests, outputs, instances = self._parse(raw, time.time())
        self._count_envelopes([] if instances is None else [instances])
        yield from outputs
        yield from self._batches(requests)

    def handle_batch(self, records):
        read_at, scored, instance_counts = time.time(), [], []
        for raw in records:
            try:
                requests, outputs, instances = self._parse(raw, read_at)
            except Exception:  # noqa: BLE001 - a bad record: the per-record boundary gives its one dead letter
                yield from GuardedDoFn.process(self, raw)
                continue
            scored += requests
            yield from outputs
            if instances is not None:
                instance_counts.append(instances)
        self._count_envelopes(instance_counts)
        yield from self._batches(scored)

    def _count_envelopes(self, instance_counts):
        if instance_counts:
            self._envelopes.inc(len(instance_counts))
            self._envelope_instances.inc(sum(instance_counts))

    def _batches(self, scored):
        """(ScoringRequest, example) pairs -> ScoringBatches of at most max_batch_size, or one per request
        where their values do not stack (an input of variable size)."""
        for start in range(0, len(scored), self._max_batch_size):
            part = scored[start : start + self._max_batch_size]
            try:
                examples = stack_examples([example for _, example in part], self._inputs)
            except ValueError:
                for request, example in part:
                    yield ScoringBatch([request], stack_examples([example], self._inputs))
                continue
            yield ScoringBatch([request for request, _ in part], examples)

    def _parse(self, raw, read_at):
        """One record -> ([(ScoringRequest, example)], [its dead letters and ENVELOPES_TAG output], instance
        count or None); raises for a record that is bad as a whole."""
        received_at, attributes = read_at, None
        if isinstance(raw, PubsubMessage):
            attributes = raw.attributes or {}
            if raw.publish_time:
                received_at = raw.publish_time.timestamp()
            record = record_dict(raw.data) if raw.data.lstrip()[:1] in (b"{", b"\xef") else {"image_data": raw.data}
            record.setdefault("id", attributes.get("request_id") or attributes.get("id") or raw.message_id)
        elif isinstance(raw, ImageInput):
            record = {"id": raw.source_id, "image_data": raw.data}
        else:
            record = record_dict(raw)
            if "image/encoded" in record:  # a tf.train.Example of the image-ingestion pipeline
                record = {"id": record.get("image/source_id"), "image_data": record["image/encoded"]}
        instances = envelope_instances(record, self._max_instances, self._signature)
        if instances is None:
            return [self._scoring_input(record, False, received_at)], [], None
        body_id = request_id_of(record)
        requests, outputs = [], []
        for position, instance in enumerate(instances):
            request_id = f"{body_id}/{position}"
            try:
                requests.append(
                    self._scoring_input(
                        *instance_record(instance, request_id, self._inputs, self._image), received_at, position
                    )
                )
            except Exception as e:  # noqa: BLE001 - one dead letter per bad instance, the others go on
                outputs.append(
                    self.dead_letter(instance, e, {**(attributes or {}), **instance_attributes(request_id, position)})
                )
        outputs.append(beam.pvalue.TaggedOutput(ENVELOPES_TAG, (body_id, len(instances))))
        return requests, outputs, len(instances)

    def _scoring_input(self, record, values_given, received_at, instance_index=None):
        if self._feature_spec is not None:  # the same defaults, clipping and type checks as in training
            record = {**record, "features": serving_features(record.get("features", record), self._feature_spec)}
        request_id, content_key, example = prepare_example(
            record, self._inputs, values_given or self._feature_spec is not None, **self._limits
        )
        times = tuple(record.get(FEATURE_TIMES_KEY, ())) if self._online_features else ()
        return ScoringRequest(request_id, content_key, received_at, instance_index, times), example


class ToPredictionRows(GuardedDoFn):
    """PredictionResult(ScoringBatch, BatchPredictions, version) -> the list of its prediction rows; each
    request the model failed on -> a dead letter (inference_failed)."""

    STEP = "RunInference"

    def __init__(self, labels, top_k, pipeline_name):
        super().__init__(pipeline_name)
        self._labels, self._top_k = labels, top_k
        self._scored = Metrics.counter(pipeline_name, "scored")

    def handle(self, result):
        batch, predictions, version = result
        for row, message in sorted(predictions.errors.items()):
            yield self._dead_letter_of(batch.requests[row], RecordError("inference_failed", message))
        try:
            rows = prediction_rows(
                batch.requests, predictions.outputs, version, self._labels, self._top_k, failed=predictions.errors
            )
        except Exception:  # noqa: BLE001 - a row that cannot be written: find it, one request at a time
            rows = []
            for row, request in enumerate(batch.requests):
                if row in predictions.errors:
                    continue
                outputs = {name: value[row : row + 1] for name, value in predictions.outputs.items()}
                try:
                    rows += prediction_rows([request], outputs, version, self._labels, self._top_k)
                except Exception as e:  # noqa: BLE001 - one dead letter per request, the others go on
                    yield self._dead_letter_of(request, e)
        if rows:
            self._scored.inc(len(rows))
            yield rows

    def dead_letter_payload(self, result):
        """A batch that failed as a whole (not expected: each request is handled above) keeps its ids."""
        return {"request_ids": [request.request_id for request in result.example.requests]}, None

    def _dead_letter_of(self, request, error):
        return self.dead_letter(
            {"request_id": request.request_id, "content_key": request.content_key},
            error,
            scoring_failure_attributes(request),
        )


def failed_batch_dead_letters(failed, pipeline_name):
    """RunInference's own dead-letter output: (ScoringBatches, (type, message, traceback lines)), one dead
    letter per request."""
    batches, (_, message, _) = failed
    for batch in batches if isinstance(batches, list) else [batches]:
        for request in batch.requests:
            yield make_dead_letter(
                pipeline_name,
                "RunInference",
                {"request_id": request.request_id},
                RecordError("inference_failed", f"the model failed on the batch: {message}"),
                scoring_failure_attributes(request),
            )


def tf_serving_prediction(row):
    """A prediction row's outputs as TF Serving's "row" response gives one prediction: the value of the
    one output, or {output name: value}."""
    outputs = json.loads(row["outputs"])
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def tf_serving_response(body_id, outcomes):
    """The response to a body from its instances' outcomes in order, each ("prediction", JSON text) or
    ("error", reason: message). Like TF Serving, a body with a failed instance gets an error, not
    predictions (the other instances' rows are still written)."""
    failed = [(i, text) for i, (kind, text) in enumerate(outcomes) if kind == "error"]
    if not failed:
        return {"request_id": body_id, "predictions": [json.loads(text) for _, text in outcomes]}
    shown = "; ".join(f"instance {i}: {text}" for i, text in failed[:MAX_ERRORS_SHOWN])
    more = f"; {len(failed) - MAX_ERRORS_SHOWN} more" if len(failed) > MAX_ERRORS_SHOWN else ""
    return {
        "request_id": body_id,
        "error": f"{len(failed)} of {len(outcomes)} instances failed (see the dead letters): {shown}{more}",
    }


def _row_outcome(row):
    """A row of an instance -> (body id, ("prediction", position, JSON)); rows of plain requests: none."""
    index = row["instance_index"]
    if index is not None:
        body_id = row["request_id"].removesuffix(f"/{index}")
        yield body_id, ("prediction", index, json.dumps(tf_serving_prediction(row)))


def _dead_letter_outcome(dead_letter):
    """A dead letter of an instance -> (body id, ("error", position, reason: message))."""
    attributes = {a["key"]: a["value"] for a in dead_letter["attributes"]}
    if "score.instance_index" in attributes:
        index = int(attributes["score.instance_index"])
        body_id = attributes["score.request_id"].removesuffix(f"/{index}")
        yield body_id, ("error", index, f"{dead_letter['reason']}: {dead_letter['error_message']}")


def _plain_response(row):
    if row["instance_index"] is None:
        yield {"request_id": row["request_id"], "predictions": [tf_serving_prediction(row)]}


class RegroupInstances(beam.DoFn):
    """(body id, outcome) -> the body's response once the outcomes of all its instances are in. An outcome
    is ("count", instance count, "") from ParseRequests, or ("prediction" | "error", position, text); a
    position seen twice (a redelivered message) counts once."""

    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    SEEN = ReadModifyWriteStateSpec("seen", VarIntCoder())
    OUTCOMES = BagStateSpec("outcomes", TupleCoder([StrUtf8Coder(), VarIntCoder(), StrUtf8Coder()]))

    def process(
        self,
        keyed,
        count_state=beam.DoFn.StateParam(COUNT),
        seen=beam.DoFn.StateParam(SEEN),
        outcomes=beam.DoFn.StateParam(OUTCOMES),
    ):
        body_id, (kind, number, text) = keyed
        if kind == "count":
            count_state.write(number)
        else:
            outcomes.add((kind, number, text))
            seen.write((seen.read() or 0) + 1)
        count = count_state.read()
        if count is None or (seen.read() or 0) < count:
            return
        by_position = {position: (kind, text) for kind, position, text in outcomes.read()}
        if len(by_position) < count:
            return
        count_state.clear()
        seen.clear()
        outcomes.clear()
        yield tf_serving_response(body_id, [by_position[i] for i in range(count)])


class TfServingResponses(beam.PTransform):
    """(prediction rows, ENVELOPES_TAG output, dead letters) -> {"request_id", "predictions": [...]} per
    request body (a plain request is a body of one), or {"request_id", "error"} for a body of instances of
    which one failed. Bodies that fail as a whole are dead letters only."""

    def expand(self, pcolls):
        rows, envelopes, dead_letters = pcolls
        outcomes = (
            rows | "InstanceRows" >> beam.FlatMap(_row_outcome),
            dead_letters | "InstanceDeadLetters" >> beam.FlatMap(_dead_letter_outcome),
            envelopes | "InstanceCounts" >> beam.MapTuple(lambda body_id, count: (body_id, ("count", count, ""))),
        )
        regrouped = (
            outcomes
            | "Outcomes" >> beam.Flatten()
            | "Regroup" >> beam.ParDo(RegroupInstances()).with_input_types(tuple[str, tuple[str, int, str]])
        )
        plain = rows | "PlainRequests" >> beam.FlatMap(_plain_response)
        return (plain, regrouped) | "Responses" >> beam.Flatten()
