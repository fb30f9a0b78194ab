"""Records as they enter a pipeline: JSON decoded once, totally (every input is an object or a RecordError
with a reason from transforms.io.deadletter.REASONS), and the checks made where a value enters.

JSON is decoded with orjson, which already refuses NaN, Infinity, numbers that overflow a double
(`1e400`), lone UTF-16 surrogates, invalid UTF-8 and nesting deeper than 1024; this module adds a tighter
depth limit, so that no later step (encoders, dead letters) can hit Python's recursion limit.
"""

import datetime
import math
from fractions import Fraction
from typing import NamedTuple

import orjson
from apache_beam.utils.timestamp import Timestamp

from transforms.io.deadletter import RecordError

MAX_JSON_DEPTH = 64
MAX_RECORD_BYTES = 10 * 1024 * 1024  # a record over it is too_large (Pub/Sub's messages are at most 10 MB)
_BOM_BYTES, _BOM_TEXT = b"\xef\xbb\xbf", "\ufeff"
_SHALLOW_BYTES = 2 * MAX_JSON_DEPTH  # too short to open and close more than MAX_JSON_DEPTH brackets


class SerializedExample(NamedTuple):
    """A tf.train.Example as read from a TFRecord file, decoded by record_dict (so a corrupt one is a dead
    letter of the parse step, not a failed read)."""

    data: bytes


def is_missing(value):
    """None, NaN or empty text: a value the record does not have."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _depth_exceeds(value, limit):
    """Whether containers nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(payload):
    """JSON text or bytes -> the decoded value; a leading byte-order mark is ignored. Raises RecordError:
    too_large (over MAX_RECORD_BYTES), invalid_utf8, out_of_range (NaN, Infinity, overflow), too_deep, empty or
    invalid_json."""
    if type(payload) is not bytes:  # bytes first: the usual case costs one check
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        elif not isinstance(payload, str):
            raise RecordError("wrong_type", f"expected JSON text, got {type(payload).__name__}")
    size = len(payload)
    if size > MAX_RECORD_BYTES:
        raise RecordError(
            "too_large", f"the record is over {MAX_RECORD_BYTES} bytes, the most one JSON record may hold"
        )
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        bom = _BOM_BYTES if type(payload) is bytes else _BOM_TEXT
        if not payload.startswith(bom):  # orjson refuses a BOM: checked here, not on every record
            raise _decode_error(payload, str(e)) from None
        payload = payload[len(bom) :]
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise _decode_error(payload, str(e)) from None
    if size <= _SHALLOW_BYTES:
        return value
    if type(payload) is bytes:
        brackets = payload.count(b"{") + (payload.count(b"[") if b"[" in payload else 0)
    else:
        brackets = payload.count("{") + payload.count("[")
    if brackets > MAX_JSON_DEPTH and isinstance(value, (dict, list)) and _depth_exceeds(value, MAX_JSON_DEPTH):
        raise RecordError("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _decode_error(payload, message):
    """The RecordError for JSON orjson could not decode, by its message."""
    if "UTF-8" in message or "surrogate" in message:
        return RecordError("invalid_utf8", f"not valid UTF-8 text: {message}")
    if "depth limit" in message:
        return RecordError("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if "infinity" in message or (
        ("NaN" in payload or "Infinity" in payload)
        if isinstance(payload, str)
        else (b"NaN" in payload or b"Infinity" in payload)
    ):
        return RecordError("out_of_range", f"a number is not finite (NaN, Infinity or overflow): {message}")
    if not payload.strip():
        return RecordError("empty", "the record is empty")
    return RecordError(
        "invalid_json",
        f"not valid JSON: {message} (a record is one JSON object: a line of a JSONL file, a value of a "
        f"multi-line JSON file or array, or a message)",
    )


def remember(memo, key, value, limit):
    """`memo[key] = value` in a memo (a dict) of at most `limit` entries, emptied when full (what records
    repeat comes back at once); returns `value`."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


def record_dict(record):
    """A record as read (dict, JSON text/bytes, or a SerializedExample) -> dict; RecordError otherwise."""
    if isinstance(record, dict):
        return record
    if isinstance(record, SerializedExample):
        return example_to_dict(record.data)
    row = parse_json(record)
    if not isinstance(row, dict):
        raise RecordError("not_an_object", f"a record must be a JSON object, got {type(row).__name__}")
    return row


def example_to_dict(serialized):
    """A tf.train.Example -> {feature: first value} (UTF-8 bytes decoded to text, other bytes kept, such as
    encoded images; empty lists are missing)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError as e:
        raise RecordError("invalid_json", f"not a tf.train.Example: {e}") from None
    row = {}
    for name, feature in example.features.feature.items():
        values = feature.bytes_list.value or feature.float_list.value or feature.int64_list.value
        if values:
            value = values[0]
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            elif isinstance(value, float) and not math.isfinite(value):
                raise RecordError("out_of_range", f"feature '{name}': {value} is not a finite number")
            row[name] = value
    return row


def finite(value, field):
    """A JSON number as a finite float (bools are not numbers); RecordError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_type", f"field '{field}': expected a number, got {type(value).__name__}")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    if not math.isfinite(number):
        raise RecordError("out_of_range", f"field '{field}': {value!r:.40} is not a finite number")
    return number


def text(value, field):
    """A string field (numbers are accepted as their text); containers and other types are wrong_type."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError("wrong_type", f"field '{field}': expected a string, got {type(value).__name__}")


# Event times a record may carry: from 1970 up to the year 9000, which leaves room for any window or
# rolling SLO period after it without leaving the years 1-9999 that timestamps and ISO text can represent.
MIN_EVENT_SECONDS = 0.0
MAX_EVENT_SECONDS = 221845392000.0  # 9000-01-01T00:00:00Z
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def datetime_micros(value):
    """A datetime (naive: UTC) -> whole microseconds since the epoch."""
    return ((value if value.tzinfo else value.replace(tzinfo=datetime.UTC)) - _EPOCH) // _MICROSECOND


def epoch_micros(number, per_second, field):
    """An epoch number counting `per_second` units a second -> whole microseconds since the epoch, truncated
    toward the past in exact integer arithmetic (nanoseconds never round up); RecordError as `finite`."""
    finite(number, field)
    numerator, denominator = number.as_integer_ratio()
    return numerator * 1_000_000 // (denominator * per_second)


def micros_seconds(micros):
    """Whole microseconds -> seconds as the largest float not after them, so that float window arithmetic
    (`seconds // 60`) never moves an event into the next window; `event_timestamp` gives the microsecond back."""
    seconds = micros / 1_000_000
    numerator, denominator = seconds.as_integer_ratio()
    return seconds if numerator * 1_000_000 <= micros * denominator else math.nextafter(seconds, -math.inf)


def event_timestamp(seconds):
    """The Beam timestamp of seconds from `micros_seconds`: the same microsecond (floats are at most 1 us
    below it up to 2**33 s, the year 2242; later, a microsecond not after the time, so never a later window)."""
    numerator, denominator = seconds.as_integer_ratio()
    return Timestamp(micros=-(-numerator * 1_000_000 // denominator))  # rounded up to the microsecond


def event_time(micros, field):
    """Whole microseconds since the epoch, checked to be within MIN/MAX_EVENT_SECONDS -> `micros_seconds`."""
    seconds = micros_seconds(micros)
    if not MIN_EVENT_SECONDS <= seconds <= MAX_EVENT_SECONDS:
        raise RecordError(
            "out_of_range",
            f"field '{field}': event time {seconds!r:.40} s is outside 1970-9000 "
            f"(check its unit: seconds, milliseconds or microseconds)",
        )
    return seconds


# The largest whole microsecond whose `micros_seconds` is not after MAX_EVENT_SECONDS (the float just above it
# is 2**-15 s later): event_micros accepts exactly the times event_time accepts.
MAX_EVENT_MICROS = math.ceil(Fraction(math.nextafter(MAX_EVENT_SECONDS, math.inf)) * 1_000_000) - 1


def event_micros(micros, field):
    """`event_time`'s check on whole microseconds, in integer arithmetic: the same micros back, or the same
    RecordError."""
    if not 0 <= micros <= MAX_EVENT_MICROS:
        event_time(micros, field)  # raises out_of_range
    return micros


MAX_KEY_PART_CHARS = 256
_KEY_SEPARATORS = frozenset("#/\x7f") | frozenset(chr(c) for c in range(32))


def key_part(value, field):
    """A value that becomes part of an identifier or a Bigtable row key (a service or entity name): text of
    1-256 characters without '#', '/' or control characters, else RecordError("bad_key")."""
    value = text(value, field)
    if not 0 < len(value) <= MAX_KEY_PART_CHARS or not _KEY_SEPARATORS.isdisjoint(value):
        raise RecordError(
            "bad_key",
            f"field '{field}': {value[:60]!r} must be 1-{MAX_KEY_PART_CHARS} characters "
            f"without '#', '/' or control characters (it becomes part of a row key)",
        )
    return value
