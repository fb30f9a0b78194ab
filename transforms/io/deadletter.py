"""The dead-letter convention shared by every pipeline, and the one guarded record boundary.

A step that cannot handle an element emits one dead-letter record (a dict, the same shape in every sink):

    failed_at       TIMESTAMP  when the step gave up (UTC, ISO 8601)
    pipeline        STRING     e.g. "sli"
    step            STRING     the step label, e.g. "ParseLogRecords"
    reason          STRING     one of REASONS, e.g. "missing_field", "invalid_json"
    error_message   STRING     what went wrong and what to do, for people
    stack_trace     STRING     Python traceback of an unexpected exception, else NULL
    payload_string  STRING     the original payload when it is text (NULL otherwise)
    payload_bytes   BYTES      the original payload when it is binary, base64 (BigQuery's JSON encoding of BYTES)
    payload_size    INTEGER    the original payload's size in bytes (before any cut)
    payload_sha256  STRING     SHA-256 of the whole original payload, hex
    payload_truncated BOOLEAN  whether the payload was cut to the sink's --dead_letter_max_payload_bytes
    attributes      RECORD[]   key/value pairs, e.g. Pub/Sub message attributes

All dead letters of a pipeline are flattened into one PCollection and written by
`transforms.io.sinks.WriteDeadLetters`, which cuts payloads to the flag's size, to a BigQuery table, a
Pub/Sub topic (JSON) and/or local JSONL files.

Per-record steps subclass `GuardedDoFn`: they write `handle(element)` as plain code that yields outputs
and raises `RecordError` for input they expect to be bad. Whatever else happens inside `handle`, the
element becomes one dead letter (reason `unexpected_error`, with the exception type, message and stack)
and the job goes on: no record can stop a pipeline. Batched steps subclass `GuardedBatchDoFn`: a batch of
records is handled in one call, and a batch that fails as a whole falls back to the per-record boundary.
"""

import base64
import datetime
import hashlib
import json
import traceback

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics

DEAD_LETTER_TAG = "dead_letters"

# Every reason a dead letter can carry, with what it means. The manual's list is tested against this one.
REASONS = {
    "invalid_json": "the record is not a JSON object (syntax error, or a JSON value other than an object)",
    "invalid_utf8": "the record's bytes are not UTF-8 text (the raw bytes are kept)",
    "too_deep": "the JSON nests deeper than the parser's limit",
    "too_large": "the record, message or image is over its size limit",
    "out_of_range": "a number is infinite, NaN, or outside the range the field allows (event times included)",
    "wrong_type": "a field holds the wrong kind of value (a list or object where a string or number belongs...)",
    "missing_field": "a required field is absent",
    "bad_field": "a field's value cannot be used (a malformed URL, an unknown enum value...)",
    "bad_timestamp": "a time field cannot be parsed",
    "bad_latency": "a latency field cannot be parsed, or is negative",
    "bad_status": "an HTTP status is not an integer in 100-599",
    "bad_key": "a value used in a row key or identifier is too long or holds a separator character",
    "empty": "the record is empty or blank",
    "not_an_object": "the record is valid JSON but not an object",
    "missing_feature": "a feature the spec requires is absent",
    "missing_required": "a required feature is missing",
    "missing_label": "the record has no label",
    "missing_key": "the record has no key for the split",
    "missing_entity": "the record has no entity for the window features",
    "missing_event_time": "the record has no event time",
    "invalid_event_time": "the event time cannot be parsed or is outside the supported range",
    "entity_too_long": "the entity is over Bigtable's 4 KiB row-key limit",
    "bad_feature": "a feature value does not match its type in the spec",
    "bad_base64": "a base64 field does not decode",
    "bad_manifest_line": "a line of the image manifest cannot be parsed",
    "unreadable_file": "a file named by the input cannot be read",
    "not_an_image": "the bytes are not an image of a supported format",
    "corrupt_image": "the image cannot be decoded",
    "bad_exif": "the image's EXIF metadata cannot be read to orient it (--exif_orientation apply)",
    "too_many_pixels": "the image declares more pixels than --max_pixels",
    "unknown_label": "the label is not in --label_map",
    "inference_failed": "the model raised on the example or its batch",
    "feature_lookup_failed": "reading the entity's online features from Bigtable failed (--feature_store_table)",
    "udf_error": "the user-defined function raised, exited, or returned something that is not a record",
    "udf_timeout": "the user-defined function ran past --udf_timeout_ms",
    "udf_memory": "the JavaScript user-defined function went over its memory limit",
    "rejected_by_sink": "the output sink (BigQuery) rejected the row",
    "unexpected_error": "an exception nobody foresaw; the message names its type, the stack trace is kept",
}

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
        {"name": "payload_size", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "payload_sha256", "type": "STRING", "mode": "NULLABLE"},
        {"name": "payload_truncated", "type": "BOOLEAN", "mode": "NULLABLE"},
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

DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024  # --dead_letter_max_payload_bytes: fits BigQuery rows and Pub/Sub messages
MAX_MESSAGE_CHARS = 4096  # error messages and attribute values are cut here
MAX_STACK_CHARS = 16384


class RecordError(ValueError):
    """An element-level failure with a `reason` from REASONS; becomes a dead letter, never a crash."""

    def __init__(self, reason, message):
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}: add it to REASONS")
        super().__init__(message)
        self.reason = reason


def payload_and_attributes(record):
    """(payload, attributes) of a record as read: a Pub/Sub message's body and attributes, else the record
    itself and None."""
    return (record.data, record.attributes) if isinstance(record, PubsubMessage) else (record, None)


def _cut(text, limit):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _as_text(payload, raw):
    """The payload as text when it is text: a str that is valid Unicode, or bytes that decode as UTF-8 and
    hold no NUL; None for binary payloads."""
    if isinstance(payload, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return None if "\x00" in text else text
    return (
        raw.decode("utf-8", "replace")
        if not isinstance(payload, str)
        else (payload if raw.decode("utf-8", "ignore") == payload else None)
    )


def _payload_bytes(payload):
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(payload, sort_keys=True, default=str).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, RecursionError):
        return repr(payload).encode("utf-8", "surrogatepass")


def make_dead_letter(pipeline, step, payload, error, attributes=None):
    """Builds a dead-letter record. `payload` is the element as it arrived (bytes, str, dict...), kept once:
    as text when it is text, base64 when binary. `error` is an exception (a RecordError gives its reason;
    any other exception is `unexpected_error` with its type and stack trace) or a message."""
    if isinstance(error, RecordError):
        reason, message, stack = error.reason, str(error), None
    elif isinstance(error, BaseException):
        reason = "unexpected_error"
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        stack = _cut("".join(traceback.format_exception(error)), MAX_STACK_CHARS)
    else:
        reason, message, stack = "unexpected_error", str(error), None
    raw = _payload_bytes(payload)
    text = _as_text(payload, raw)
    return {
        "failed_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "pipeline": pipeline,
        "step": step,
        "reason": reason,
        "error_message": _cut(message, MAX_MESSAGE_CHARS),
        "stack_trace": stack,
        "payload_string": text,
        "payload_bytes": None if text is not None else base64.b64encode(raw).decode("ascii"),
        "payload_size": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_truncated": False,
        "attributes": [
            {"key": _cut(k, 256), "value": _cut(v, MAX_MESSAGE_CHARS)}
            for k, v in sorted((attributes or {}).items(), key=lambda kv: str(kv[0]))
        ],
    }


def cap_payload(dead_letter, max_bytes):
    """The dead letter with its payload cut to `max_bytes` (size and SHA-256 still describe the whole)."""
    text, b64 = dead_letter["payload_string"], dead_letter["payload_bytes"]
    if text is not None and len(text) * 4 > max_bytes:  # cheap test first: 4 bytes per character at most
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > max_bytes:
            cut = encoded[:max_bytes].decode("utf-8", "ignore")
            return {**dead_letter, "payload_string": cut, "payload_truncated": True}
    if b64 is not None and len(b64) > 4 * ((max_bytes + 2) // 3):
        raw = base64.b64decode(b64)[:max_bytes]
        return {**dead_letter, "payload_bytes": base64.b64encode(raw).decode("ascii"), "payload_truncated": True}
    return dead_letter


class GuardedDoFn(beam.DoFn):
    """The record boundary every per-record step goes through. Subclasses set STEP and write
    `handle(element, *side_inputs)`, a generator of outputs (main values or TaggedOutputs) that raises
    RecordError on bad input. A record's outputs are emitted only when `handle` finishes, so a record is
    either fully output or one dead letter, never both: counts reconcile.

    `dead_letter_payload(element)` says what a dead letter keeps of the element (default: a Pub/Sub
    message's body and attributes, else the element)."""

    STEP = None

    def __init__(self, pipeline_name):
        self._pipeline = pipeline_name

    def handle(self, element, *args):
        raise NotImplementedError

    def dead_letter_payload(self, element):
        return payload_and_attributes(element)

    def process(self, element, *args):
        try:
            outputs = list(self.handle(element, *args))
        except Exception as e:  # noqa: BLE001 - the boundary: RecordError or a bug, either way a dead letter
            try:
                payload, attributes = self.dead_letter_payload(element)
            except Exception:  # noqa: BLE001 - never let the error path fail
                payload, attributes = element, None
            yield self.dead_letter(payload, e, attributes)
            return
        yield from outputs

    def dead_letter(self, payload, error, attributes=None):
        """A dead-letter TaggedOutput of this step (for a step that reports part of a record itself, such as
        one bad image of a message holding several)."""
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG, make_dead_letter(self._pipeline, self.STEP, payload, error, attributes)
        )


class GuardedBatchDoFn(GuardedDoFn):
    """The record boundary for a batch (a list of records, see sources.BatchRecords). Subclasses write
    `handle(record, *args)` as for GuardedDoFn, and may write `handle_batch(records, *args)`, a generator
    of the outputs and dead letters (`self.dead_letter(...)`) of the whole batch, which catches what it
    expects of single records itself. If `handle_batch` raises, its outputs are discarded and every record
    of the batch goes through `handle` under the per-record boundary instead (counted as
    `batch_fallbacks`): a batch's records are all handled together or all one by one, never both."""

    def __init__(self, pipeline_name):
        super().__init__(pipeline_name)
        self._fallbacks = Metrics.counter(type(self).__module__, "batch_fallbacks")

    def handle_batch(self, records, *args):
        for record in records:
            yield from GuardedDoFn.process(self, record, *args)

    def process(self, records, *args):
        try:
            outputs = list(self.handle_batch(records, *args))
        except Exception:  # noqa: BLE001 - the batch boundary: redo it record by record
            self._fallbacks.inc()
            for record in records:
                yield from GuardedDoFn.process(self, record, *args)
            return
        yield from outputs
