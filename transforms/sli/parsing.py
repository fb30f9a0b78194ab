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
    remember,
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


_ABSENT = object()


def _lookup(obj, dotted, parts=None):
    """obj[dotted] if that literal key exists (ECS style "log.level"), else the nested path (`parts`: dotted
    split at its dots, when the caller has it)."""
    value = obj.get(dotted, _ABSENT)
    if value is not _ABSENT:
        return value
    if "." not in dotted:
        return None
    node = obj
    for part in parts or dotted.split("."):
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
    micros = _utc_rfc3339_micros(value) if type(value) is str else None  # the usual case first
    return event_micros(_timestamp_micros(value, field) if micros is None else micros, field)


def _timestamp_micros(value, field):
    if type(value) is int and -(2**62) < value < 2**62:  # epoch_micros' result for an int, quicker
        return value * 1_000_000 // (1000 if value > 1e11 else 1)
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


_SECOND_MICROS = {}  # "YYYY-MM-DDTHH:MM:SS" -> microseconds at that second, UTC: log lines share their seconds
_DAY_MICROS = {}  # "YYYY-MM-DD" -> microseconds at its midnight, UTC
_MAX_CACHED_SECONDS, _MAX_CACHED_DAYS = 1 << 16, 1 << 14
_FRACTION_SCALE = (None, 100_000, 10_000, 1000, 100, 10, 1)  # microseconds per unit of 1-6 fraction digits


def _utc_rfc3339_micros(text):
    """The fast path of `_timestamp_micros` for the usual UTC form "YYYY-MM-DDTHH:MM:SS[.1-9 digits]" + "Z" or
    "+00:00" (the same microseconds as fromisoformat); None for any other text, which the general parser
    then reads or rejects."""
    second = _SECOND_MICROS.get(text[:19])
    if second is None:
        second = _second_micros(text[:19])
        if second is None:
            return None
    rest = text[19:]
    if rest == "Z" or rest == "+00:00":
        return second
    if rest.endswith("Z"):
        fraction = rest[1:-1]
    elif rest.endswith("+00:00"):
        fraction = rest[1:-6]
    else:
        return None
    if rest[0] != "." or not 0 < len(fraction) <= 9 or not fraction.isdigit() or not fraction.isascii():
        return None
    digits = fraction[:6]
    return second + int(digits) * _FRACTION_SCALE[len(digits)]


def _second_micros(second):
    """Microseconds at "YYYY-MM-DDTHH:MM:SS" (ASCII), remembered; None if it is not such a second."""
    if (
        len(second) != 19
        or not second.isascii()
        or second[4] != "-"
        or second[7] != "-"
        or second[10] != "T"
        or second[13] != ":"
        or second[16] != ":"
        or not (second[:4] + second[5:7] + second[8:10] + second[11:13] + second[14:16] + second[17:]).isdigit()
        or second[11:13] > "23"
        or second[14:16] > "59"
        or second[17:] > "59"
    ):
        return None
    day = _DAY_MICROS.get(second[:10])
    if day is None:
        try:
            day = datetime_micros(datetime.datetime.fromisoformat(second[:10]))
        except ValueError:
            return None
        remember(_DAY_MICROS, second[:10], day, _MAX_CACHED_DAYS)
    micros = day + ((int(second[11:13]) * 60 + int(second[14:16])) * 60 + int(second[17:])) * 1_000_000
    return remember(_SECOND_MICROS, second, micros, _MAX_CACHED_SECONDS)


def parse_latency_ms(value, field, unit):
    """Milliseconds from a number in `unit`, a duration string like "0.231s", or {seconds, nanos}."""
    if type(value) is float and 0 <= value < 1e300 or type(value) is int and 0 <= value < 2**53:
        return value * _UNIT_TO_MS[unit]  # what the general path gives a plain number
    if type(value) is str and value.endswith("s") and value.isascii():  # what _DURATION matches, usually
        whole, dot, part = value[:-1].partition(".")
        if whole.isdigit() and (part.isdigit() or not dot):
            ms = float(value[:-1]) * 1000.0  # not negative: digits only
            if ms != math.inf:
                return ms
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
    return _checked_ms(ms, value, field)


def _checked_ms(ms, value, field):
    if not ms >= 0:  # also rejects NaN
        raise RecordError("bad_latency", f"field '{field}': latency {value!r} is negative")
    if ms == math.inf:
        raise RecordError("out_of_range", f"field '{field}': latency {value!r:.40} is not finite")
    return ms


def parse_status(value, field):
    if type(value) is int and 100 <= value <= 599:
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise RecordError("bad_status", f"field '{field}': {value!r} is not an HTTP status code (100-599)")
    return value


def _required(obj, field, fmt):
    value = obj.get(field)
    if value is None or value == "":
        raise RecordError("missing_field", f"{fmt} record has no '{field}' (required)")
    return value


def _split_url(url, field):
    """(host, path) of a URL or path; remembered for the URLs logs repeat (a failure raises every time)."""
    split = _URLS.get(url) if type(url) is str else None
    if split is None:
        url = text(url, field)
        try:
            parts = urlsplit(url)
            split = parts.hostname or "", parts.path or "/"
        except ValueError as e:
            raise RecordError("bad_field", f"field '{field}': {url!r:.80} is not a URL: {e}") from None
        if len(url) <= _CACHED_URL_CHARS:
            remember(_URLS, url, split, _MAX_CACHED_URLS)
    return split


_URLS = {}  # URL -> (host, path)
_CACHED_URL_CHARS, _MAX_CACHED_URLS = 1024, 1 << 16


def _dict(value):
    return value if isinstance(value, dict) else {}


_METHODS = {}  # method as logged -> upper case: logs hold few distinct methods
_SERVICES = {}  # service names already checked by key_part
_MAX_MEMO = 1 << 12


def _method(value, field):
    method = _METHODS.get(value) if type(value) is str else None
    if method is None:
        method = text(value, field).upper()
        if type(value) is str and len(value) <= 16:
            remember(_METHODS, value, method, _MAX_MEMO)
    return method


def _service(value, field):
    if type(value) is str and value in _SERVICES:
        return value
    service = key_part(value, field)
    if type(value) is str:
        remember(_SERVICES, value, None, _MAX_MEMO)
    return service


def _from_cloud_logging(entry, http):
    if not isinstance(http, dict):
        raise RecordError("bad_field", "'httpRequest' must be an object")
    ts_field = "timestamp" if entry.get("timestamp") else "receiveTimestamp"
    micros = _event_micros(_required(entry, ts_field, "LogEntry"), ts_field)
    method = _method(_required(http, "requestMethod", "LogEntry httpRequest"), "httpRequest.requestMethod")
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
    return micros, _service(service, "service"), host, method, path, status, latency, "cloud_logging"


class _MappedFormat:
    """App log or flat JSON records read through a `FieldMapping`, its field names looked up once here."""

    def __init__(self, mapping, fmt):
        self._fmt = fmt
        self._timestamp_field = mapping.timestamp_field
        times = (mapping.timestamp_field,) + (_APP_LOG_TIME if fmt == "app_log" else ())
        self._time_fields = tuple(_Field(f) for f in dict.fromkeys(times))  # the first with a value wins
        self._required = tuple(
            (_Field(getattr(mapping, name)), name)
            for name in ("method_field", "path_field", "status_field", "latency_field")
        )
        self._service = _Field(mapping.service_field)
        self._latency_unit = mapping.latency_unit

    def fields(self, obj, fallback_time=None, context=None):
        """Request fields looked up in `context` (the MDC) first, then `obj`."""
        ts_field, ts_value = None, fallback_time
        for field in self._time_fields:
            value = field.get(obj, context)
            if value is not None and value != "":
                ts_field, ts_value = field.name, value
                break
        if ts_field is None and fallback_time is None:
            raise RecordError("missing_field", f"{self._fmt} record has no '{self._timestamp_field}' (required)")
        micros = _event_micros(ts_value, ts_field or "timestamp")
        values = []
        for field, name in self._required:
            value = field.get(obj, context)
            if value is None or value == "":
                raise RecordError(
                    "missing_field",
                    f"{self._fmt} record has no '{field.name}' (required; mapped by formats.{self._fmt}.{name} "
                    f"in the SLI config)",
                )
            values.append(value)
        (method_field, _), (path_field, _), (status_field, _), (latency_field, _) = self._required
        method, url, status, latency = values
        host, path = _split_url(url, path_field.name)
        return (
            micros,
            _service(self._service.get(obj, context) or host or "unknown", self._service.name),
            host,
            _method(method, method_field.name),
            path,
            parse_status(status, status_field.name),
            parse_latency_ms(latency, latency_field.name, self._latency_unit),
            self._fmt,
        )


class _Field:
    """A mapped field: `get` looks it up in the context map (when there is one), then in the record."""

    def __init__(self, name):
        self.name = name
        self._parts = tuple(name.split(".")) if "." in name else None

    def get(self, obj, context):
        if self._parts is None:  # a plain key
            value = None if context is None else context.get(self.name)
            return obj.get(self.name) if value is None else value
        if context is not None:
            value = _lookup(context, self.name, self._parts)
            if value is not None:
                return value
        return _lookup(obj, self.name, self._parts)


def _is_app_log(obj):
    keys = obj.keys()
    return not keys.isdisjoint(_APP_LOG_LEVEL) and not keys.isdisjoint(_APP_LOG_LOGGER)


def _context_map(obj):
    for key in _CONTEXT_MAPS:
        value = obj.get(key)
        if isinstance(value, dict):
            return value
    return None


class LogParser:
    """Request-log records of the three formats -> their request fields, with the SLI config's field
    mappings (`formats`) prepared once."""

    def __init__(self, formats):
        self._app_log = _MappedFormat(formats.app_log, "app_log")
        self._flat = _MappedFormat(formats.flat, "flat")

    def event(self, payload):
        """One record (bytes, str or an already-decoded dict such as a BigQuery row) -> a `RequestEvent`."""
        micros, *fields = self.fields(payload)
        return RequestEvent(micros_seconds(micros), *fields)

    def fields(self, payload):
        """`event`'s fields as a tuple, the event time in whole microseconds since the epoch (the batch path's
        integer window arithmetic), within the same range and with the same errors."""
        obj = payload if isinstance(payload, dict) else parse_json(payload)
        if not isinstance(obj, dict):
            raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        http = obj.get("httpRequest")
        if http is not None:
            return _from_cloud_logging(obj, http)
        payload_obj = obj.get("jsonPayload")
        if isinstance(payload_obj, dict):
            entry_time = obj.get("timestamp") or obj.get("receiveTimestamp")
            if _is_app_log(payload_obj):
                return self._app_log.fields(payload_obj, entry_time, _context_map(payload_obj))
            return self._flat.fields(payload_obj, entry_time)
        if _is_app_log(obj):
            return self._app_log.fields(obj, None, _context_map(obj))
        return self._flat.fields(obj)


def parse_log_record(payload, formats):
    """One record to a `RequestEvent` (`LogParser.event`, for a single record)."""
    return LogParser(formats).event(payload)


class ParseLogRecords(GuardedDoFn):
    """Raw records (Pub/Sub messages, text lines, BigQuery rows) to event-timestamped `RequestEvent`s;
    failures go to the `dead_letters` output. Main output count + dead letters = records in."""

    STEP = "ParseLogRecords"

    def __init__(self, formats, pipeline_name):
        super().__init__(pipeline_name)
        self._parser = LogParser(formats)
        self._parsed = Metrics.counter(pipeline_name, "records_parsed")

    def handle(self, record):
        event = self._parser.event(payload_and_attributes(record)[0])
        self._parsed.inc()
        yield TimestampedValue(event, event_timestamp(event.timestamp))
