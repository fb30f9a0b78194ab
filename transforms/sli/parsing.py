"""Request-log parsing: three JSON formats, detected per record, into one `RequestEvent`.

1. Cloud Logging `LogEntry` with `httpRequest` (as Pub/Sub sinks and BigQuery exports carry it).
2. Java JSON layout application logs (logstash-logback-encoder, log4j2 JsonLayout / JsonTemplateLayout /
   ECS): time, level, logger, message and a context map; the request fields come from the config's
   `formats.app_log` mapping. A LogEntry without `httpRequest` whose `jsonPayload` is such a log is
   unwrapped.
3. Flat JSON request logs, fields named by the config's `formats.flat` mapping.

Anything else (invalid JSON, missing or malformed required fields) raises `RecordError`, which the DoFn
turns into a dead letter.
"""

import datetime
import functools
import math
import re
from typing import NamedTuple
from urllib.parse import urlsplit

from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms.core.records import (
    datetime_micros,
    epoch_micros,
    event_micros,
    event_time,
    event_timestamp,
    finite,
    key_part,
    micros_seconds,
    parse_json,
    text,
)
from transforms.io.deadletter import GuardedDoFn, RecordError, payload_and_attributes


class RequestEvent(NamedTuple):
    timestamp: float  # event time, seconds since the epoch (UTC), from records.micros_seconds
    service: str
    host: str
    method: str
    path: str  # without query string
    status: int
    latency_ms: float
    log_format: str  # cloud_logging | app_log | flat


_CONTEXT_MAPS = ("contextMap", "mdc", "context", "contextData")
_APP_LOG_LEVEL = ("level", "log.level", "severity")
_APP_LOG_LOGGER = ("logger", "logger_name", "loggerName", "log.logger")
_APP_LOG_TIME = ("@timestamp", "timestamp", "timeMillis", "instant", "time")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)s\s*$")
_UNIT_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}


def _lookup(obj, dotted):
    """obj[dotted] if that literal key exists (ECS style "log.level"), else the nested path."""
    if dotted in obj:
        return obj[dotted]
    if "." not in dotted:
        return None
    node = obj
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_timestamp(value, field):
    """Seconds since the epoch (see `micros_seconds`), truncated to the microsecond in integer arithmetic, from
    RFC 3339 text (nanoseconds allowed), epoch seconds/millis, {epochSecond, nanoOfSecond} (log4j2),
    {seconds, nanos} or a datetime; within the event-time range."""
    return event_time(_timestamp_micros(value, field), field)


def _event_micros(value, field):
    return event_micros(_timestamp_micros(value, field), field)


def _timestamp_micros(value, field):
    if isinstance(value, datetime.datetime):
        return datetime_micros(value)
    if isinstance(value, dict):
        secs = value.get("epochSecond", value.get("seconds"))
        nanos = value.get("nanoOfSecond", value.get("nanos", 0))
        if isinstance(secs, (int, float)) and isinstance(nanos, (int, float)):
            return epoch_micros(secs, 1, field) + epoch_micros(nanos, 1_000_000_000, field)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        return epoch_micros(value, 1000 if value > 1e11 else 1, field)  # > 1e11: milliseconds (after 1973)
    elif isinstance(value, str):
        micros = _utc_rfc3339_micros(value)
        if micros is not None:
            return micros
        try:  # fromisoformat truncates digits after the microsecond
            return datetime_micros(datetime.datetime.fromisoformat(value.strip().replace(" UTC", "Z")))
        except ValueError:
            pass
    raise RecordError("bad_timestamp", f"field '{field}': {value!r} is not an RFC 3339 time or epoch number")


_DAY_MICROS = {}  # "YYYY-MM-DD" -> microseconds at its midnight UTC: log lines share few days
_MAX_CACHED_DAYS = 1 << 14


def _utc_rfc3339_micros(text):
    """The fast path of `_timestamp_micros` for the usual UTC form "YYYY-MM-DDTHH:MM:SS[.1-9 digits]" + "Z" or
    "+00:00" (the same microseconds as fromisoformat); None for any other text, which the general parser
    then reads or rejects."""
    if text.endswith("Z"):
        body = text[:-1]
    elif text.endswith("+00:00"):
        body = text[:-6]
    else:
        return None
    if not 19 <= len(body) <= 29 or body[10] != "T" or body[13] != ":" or body[16] != ":" or not body.isascii():
        return None
    clock, fraction = body[11:13] + body[14:16] + body[17:19], body[20:]
    if not clock.isdigit() or (len(body) > 19 and (body[19] != "." or not fraction.isdigit())):
        return None
    hour, minute, second = int(clock[:2]), int(clock[2:4]), int(clock[4:])
    if hour > 23 or minute > 59 or second > 59:
        return None
    day = _DAY_MICROS.get(body[:10])
    if day is None:
        if body[4] != "-" or body[7] != "-" or not (body[:4] + body[5:7] + body[8:10]).isdigit():
            return None
        try:
            day = datetime_micros(datetime.datetime.fromisoformat(body[:10]))
        except ValueError:
            return None
        if len(_DAY_MICROS) >= _MAX_CACHED_DAYS:
            _DAY_MICROS.clear()
        _DAY_MICROS[body[:10]] = day
    micros = day + ((hour * 60 + minute) * 60 + second) * 1_000_000
    return micros + int(fraction[:6].ljust(6, "0")) if fraction else micros


def parse_latency_ms(value, field, unit):
    """Milliseconds from a number in `unit`, a duration string like "0.231s", or {seconds, nanos}."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            ms = float(m.group(1)) * 1000.0
        else:
            try:
                ms = float(value) * _UNIT_TO_MS[unit]
            except ValueError:
                raise RecordError("bad_latency", f"field '{field}': {value!r} is not a duration") from None
    elif isinstance(value, dict) and ("seconds" in value or "nanos" in value):
        ms = (
            finite(value.get("seconds", 0), f"{field}.seconds") * 1000.0
            + finite(value.get("nanos", 0), f"{field}.nanos") / 1e6
        )
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = finite(value, field) * _UNIT_TO_MS[unit]
    else:
        raise RecordError("bad_latency", f"field '{field}': {value!r} is not a duration")
    if not ms >= 0:  # also rejects NaN
        raise RecordError("bad_latency", f"field '{field}': latency {value!r} is negative")
    if ms == math.inf:
        raise RecordError("out_of_range", f"field '{field}': latency {value!r:.40} is not finite")
    return ms


def parse_status(value, field):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise RecordError("bad_status", f"field '{field}': {value!r} is not an HTTP status code (100-599)")
    return value


def _required(obj, field, fmt):
    value = _lookup(obj, field)
    if value is None or value == "":
        raise RecordError("missing_field", f"{fmt} record has no '{field}' (required)")
    return value


def _split_url(url, field):
    url = text(url, field)
    return (_split_url_cached if len(url) <= _CACHED_URL_CHARS else _split_url_text)(url, field)


def _split_url_text(url, field):
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as e:
        raise RecordError("bad_field", f"field '{field}': {url!r:.80} is not a URL: {e}") from None
    return host, (parts.path or "/")


_CACHED_URL_CHARS = 1024
_split_url_cached = functools.lru_cache(maxsize=1 << 16)(_split_url_text)  # logs repeat their URLs; errors raise


def _dict(value):
    return value if isinstance(value, dict) else {}


def _from_cloud_logging(entry, mapping):
    http = entry["httpRequest"]
    if not isinstance(http, dict):
        raise RecordError("bad_field", "'httpRequest' must be an object")
    ts_field = "timestamp" if entry.get("timestamp") else "receiveTimestamp"
    micros = _event_micros(_required(entry, ts_field, "LogEntry"), ts_field)
    method = text(_required(http, "requestMethod", "LogEntry httpRequest"), "httpRequest.requestMethod").upper()
    host, path = _split_url(_required(http, "requestUrl", "LogEntry httpRequest"), "httpRequest.requestUrl")
    status = parse_status(_required(http, "status", "LogEntry httpRequest"), "httpRequest.status")
    latency = parse_latency_ms(_required(http, "latency", "LogEntry httpRequest"), "httpRequest.latency", "s")
    labels = _dict(_dict(entry.get("resource")).get("labels"))
    service = (
        labels.get("service_name")
        or labels.get("module_id")
        or labels.get("backend_service_name")
        or _dict(entry.get("labels")).get("service")
        or host
        or "unknown"
    )
    return micros, key_part(service, "service"), host, method, path, status, latency, "cloud_logging"


def _from_mapping(obj, mapping, fmt, fallback_time=None, context=None):
    """App log or flat JSON: request fields looked up in `context` (the MDC) first, then `obj`."""

    def get(field):
        if context is not None:
            value = _lookup(context, field)
            if value is not None:
                return value
        return _lookup(obj, field)

    ts_field, ts_value = None, fallback_time
    for field in (mapping.timestamp_field,) + (_APP_LOG_TIME if fmt == "app_log" else ()):
        value = get(field)
        if value is not None and value != "":
            ts_field, ts_value = field, value
            break
    if ts_field is None and fallback_time is None:
        raise RecordError("missing_field", f"{fmt} record has no '{mapping.timestamp_field}' (required)")
    micros = _event_micros(ts_value, ts_field or "timestamp")
    values = {}
    for name in ("method_field", "path_field", "status_field", "latency_field"):
        field = getattr(mapping, name)
        value = get(field)
        if value is None or value == "":
            raise RecordError(
                "missing_field",
                f"{fmt} record has no '{field}' (required; mapped by formats.{fmt}.{name} in the SLI config)",
            )
        values[name] = value
    host, path = _split_url(values["path_field"], mapping.path_field)
    return (
        micros,
        key_part(get(mapping.service_field) or host or "unknown", mapping.service_field),
        host,
        text(values["method_field"], mapping.method_field).upper(),
        path,
        parse_status(values["status_field"], mapping.status_field),
        parse_latency_ms(values["latency_field"], mapping.latency_field, mapping.latency_unit),
        fmt,
    )


def _is_app_log(obj):
    return any(k in obj for k in _APP_LOG_LEVEL) and any(k in obj for k in _APP_LOG_LOGGER)


def _app_log(obj, formats, fallback_time=None):
    context = next((obj[k] for k in _CONTEXT_MAPS if isinstance(obj.get(k), dict)), None)
    return _from_mapping(obj, formats.app_log, "app_log", fallback_time, context)


def parse_log_record(payload, formats):
    """One record (bytes, str or an already-decoded dict such as a BigQuery row) to a `RequestEvent`."""
    micros, *fields = parse_log_fields(payload, formats)
    return RequestEvent(micros_seconds(micros), *fields)


def parse_log_fields(payload, formats):
    """`parse_log_record`'s fields as a tuple, the event time in whole microseconds since the epoch (the
    batch path's integer window arithmetic), within the same range and with the same errors."""
    obj = payload if isinstance(payload, dict) else parse_json(payload)
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("httpRequest") is not None:
        return _from_cloud_logging(obj, formats)
    payload_obj = obj.get("jsonPayload")
    if isinstance(payload_obj, dict):
        entry_time = obj.get("timestamp") or obj.get("receiveTimestamp")
        if _is_app_log(payload_obj):
            return _app_log(payload_obj, formats, entry_time)
        return _from_mapping(payload_obj, formats.flat, "flat", entry_time)
    if _is_app_log(obj):
        return _app_log(obj, formats)
    return _from_mapping(obj, formats.flat, "flat")


class ParseLogRecords(GuardedDoFn):
    """Raw records (Pub/Sub messages, text lines, BigQuery rows) to event-timestamped `RequestEvent`s;
    failures go to the `dead_letters` output. Main output count + dead letters = records in."""

    STEP = "ParseLogRecords"

    def __init__(self, formats, pipeline_name):
        super().__init__(pipeline_name)
        self._formats = formats
        self._parsed = Metrics.counter(pipeline_name, "records_parsed")

    def handle(self, record):
        event = parse_log_record(payload_and_attributes(record)[0], self._formats)
        self._parsed.inc()
        yield TimestampedValue(event, event_timestamp(event.timestamp))
