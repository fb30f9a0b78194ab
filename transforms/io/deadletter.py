"""The dead-letter convention shared by every pipeline.

A step that cannot handle an element emits one dead-letter record (a dict, the same shape in every sink):

    failed_at       TIMESTAMP  when the step gave up (UTC, ISO 8601)
    pipeline        STRING     e.g. "sli"
    step            STRING     the step label, e.g. "ParseLogRecords"
    reason          STRING     short machine-readable cause, e.g. "missing_field", "invalid_json"
    error_message   STRING     what went wrong and what to do, for people
    stack_trace     STRING     Python traceback when an exception was raised, else NULL
    payload_string  STRING     the original payload as text (NULL when it is not valid UTF-8)
    payload_bytes   BYTES      the original payload, base64 (BigQuery's JSON encoding of BYTES)
    attributes      RECORD[]   key/value pairs, e.g. Pub/Sub message attributes

All dead letters of a pipeline are flattened into one PCollection and written by
`transforms.io.sinks.WriteDeadLetters` to a BigQuery table, a Pub/Sub topic (JSON) and/or local JSONL files.
"""
import base64
import datetime
import json
import traceback

from apache_beam.io.gcp.pubsub import PubsubMessage

DEAD_LETTER_TAG = "dead_letters"

DEAD_LETTER_BQ_SCHEMA = {
    "fields": [
        {"name": "failed_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "pipeline", "type": "STRING", "mode": "REQUIRED"},
        {"name": "step", "type": "STRING", "mode": "REQUIRED"},
        {"name": "reason", "type": "STRING", "mode": "REQUIRED"},
        {"name": "error_message", "type": "STRING", "mode": "NULLABLE"},
        {"name": "stack_trace", "type": "STRING", "mode": "NULLABLE"},
        {"name": "payload_string", "type": "STRING", "mode": "NULLABLE"},
        {"name": "payload_bytes", "type": "BYTES", "mode": "NULLABLE"},
        {
            "name": "attributes",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "key", "type": "STRING", "mode": "REQUIRED"},
                {"name": "value", "type": "STRING", "mode": "NULLABLE"},
            ],
        },
    ]
}


class RecordError(ValueError):
    """An element-level failure with a short `reason` code; becomes a dead letter, never a crash."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def payload_and_attributes(record):
    """(payload, attributes) of a record as read: a Pub/Sub message's body and attributes, else the record
    itself and None."""
    return (record.data, record.attributes) if isinstance(record, PubsubMessage) else (record, None)


def make_dead_letter(pipeline, step, payload, error, attributes=None):
    """Builds a dead-letter record. `payload` is the element as it arrived (bytes, str, dict...);
    `error` an exception (its traceback is kept) or a message."""
    if isinstance(error, BaseException):
        reason = getattr(error, "reason", type(error).__name__)
        message = str(error)
        stack = None if isinstance(error, RecordError) else "".join(traceback.format_exception(error))
    else:
        reason, message, stack = "error", str(error), None
    if isinstance(payload, bytes):
        raw = payload
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    else:
        text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, default=str)
        raw = text.encode("utf-8")
    return {
        "failed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "pipeline": pipeline,
        "step": step,
        "reason": reason,
        "error_message": message,
        "stack_trace": stack,
        "payload_string": text,
        "payload_bytes": base64.b64encode(raw).decode("ascii"),
        "attributes": [{"key": str(k), "value": str(v)} for k, v in sorted((attributes or {}).items())],
    }
