"""Scoring requests in and prediction rows out, around RunInference."""

import time

from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics

from transforms.core.records import record_dict
from transforms.features.cleanse import serving_features
from transforms.io.deadletter import GuardedDoFn, RecordError, make_dead_letter, payload_and_attributes
from transforms.io.sources import ImageInput
from transforms.scoring.model import INFERENCE_ERROR, ScoringRequest, prediction_row, prepare_example


class ParseRequests(GuardedDoFn):
    """Raw request (PubsubMessage, JSON line, BigQuery row, image file) -> (ScoringRequest, model
    example), or a dead letter naming the field at fault."""

    STEP = "ParseRequests"

    def __init__(self, inputs, feature_spec, pipeline_name, max_image_bytes, max_image_pixels):
        super().__init__(pipeline_name)
        self._inputs, self._feature_spec = inputs, feature_spec
        self._limits = {"max_image_bytes": max_image_bytes, "max_image_pixels": max_image_pixels}

    def dead_letter_payload(self, raw):
        return (raw.data, None) if isinstance(raw, ImageInput) else payload_and_attributes(raw)

    def handle(self, raw):
        received_at = time.time()
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
        if self._feature_spec is not None:  # the same defaults, clipping and type checks as in training
            record = {**record, "features": serving_features(record.get("features", record), self._feature_spec)}
        request_id, content_key, example = prepare_example(
            record, self._inputs, self._feature_spec is not None, **self._limits
        )
        yield ScoringRequest(request_id, content_key, received_at), example


class ToPredictionRows(GuardedDoFn):
    """(ScoringRequest, PredictionResult) -> prediction row; an example the model failed on -> dead letter."""

    STEP = "RunInference"

    def __init__(self, labels, top_k, pipeline_name):
        super().__init__(pipeline_name)
        self._labels, self._top_k = labels, top_k
        self._scored = Metrics.counter(pipeline_name, "scored")

    def dead_letter_payload(self, keyed):
        request = keyed[0]
        return {"request_id": request.request_id, "content_key": request.content_key}, None

    def handle(self, keyed):
        request, result = keyed
        if INFERENCE_ERROR in result.inference:
            raise RecordError("inference_failed", result.inference[INFERENCE_ERROR])
        row = prediction_row(request, result.inference, result.model_id, self._labels, self._top_k)
        self._scored.inc()
        yield row


def failed_batch_dead_letters(failed, pipeline_name):
    """RunInference's own dead-letter output: (batch of keyed examples, (type, message, traceback lines))."""
    batch, (_, message, _) = failed
    for request, _ in batch if isinstance(batch, list) else [batch]:
        yield make_dead_letter(
            pipeline_name,
            "RunInference",
            {"request_id": request.request_id},
            RecordError("inference_failed", f"the model failed on the batch: {message}"),
        )
