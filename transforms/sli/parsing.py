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
    MAX_EVENT_MICROS,
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


def parse_timestamp(value, field):
    """Seconds since the epoch (see `micros_seconds`), truncated to the microsecond in integer arithmetic, from
    RFC 3339 text (nanoseconds allowed), epoch seconds/millis, {epochSecond, nanoOfSecond} (log4j2),
    {seconds, nanos} or a datetime; within the event-time range."""
    return event_time(_timestamp_micros(value, field), field)


def _event_micros(value, field):
    """`parse_timestamp`'s microseconds, checked by event_micros; the usual UTC text of a second seen before
    (cached only within the event-time range) is read without either."""
    if type(value) is str:
        second = _SECOND_MICROS.get(value[:19])
        if second is not None:
            fraction = _fraction_micros(value[19:])
            if fraction is not None:
                return second + fraction
    elif type(value) is int and 1e11 < value <= _MAX_EVENT_MILLIS:  # epoch milliseconds (log4j2's timeMillis)
        return value * 1000
    return event_micros(_timestamp_micros(value, field), field)


_MAX_EVENT_MILLIS = MAX_EVENT_MICROS // 1000


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
_MINUTE_MICROS = {}  # "YYYY-MM-DDTHH:MM" -> microseconds at that minute, UTC
_MAX_CACHED_SECONDS, _MAX_CACHED_MINUTES = 1 << 16, 1 << 14
_FRACTION_SCALE = (None, 100_000, 10_000, 1000, 100, 10, 1, 1, 1, 1)  # us per unit of the first 1-6 of 1-9 digits
_DIGITS = frozenset("0123456789")


def _utc_rfc3339_micros(text):
    """The fast path of `_timestamp_micros` for the usual UTC form "YYYY-MM-DDTHH:MM:SS[.1-9 digits]" + "Z" or
    "+00:00" (the same microseconds as fromisoformat); None for any other text, which the general parser
    then reads or rejects."""
    second = _SECOND_MICROS.get(text[:19])
    if second is None:
        second = _second_micros(text[:19])
        if second is None:
            return None
    fraction = _fraction_micros(text[19:])
    return None if fraction is None else second + fraction


def _fraction_micros(rest):
    """Microseconds of what follows the second in the usual UTC form: "Z" or "+00:00", after an optional
    "." and 1-9 digits (truncated to the microsecond); None for anything else."""
    if rest[-1:] == "Z":
        fraction = rest[1:-1]
    elif rest[-6:] == "+00:00":
        fraction = rest[1:-6]
    else:
        return None
    if not fraction:
        return 0 if len(rest) == 1 or len(rest) == 6 else None  # "Z" or "+00:00" alone
    if rest[0] != "." or len(fraction) > 9 or not _DIGITS.issuperset(fraction):
        return None
    return int(fraction[:6]) * _FRACTION_SCALE[len(fraction)]


def _second_micros(second):
    """Microseconds at "YYYY-MM-DDTHH:MM:SS" (ASCII); None if it is not such a second. Seconds whose every
    microsecond is an event time are remembered (so that `_event_micros` needs no range check for them)."""
    minute = _MINUTE_MICROS.get(second[:16])
    if minute is None:
        minute = _minute_micros(second[:16])
    if minute is None or len(second) != 19 or second[16] != ":":
        return None
    ss = second[17:]
    if not (ss.isdigit() and ss.isascii() and ss <= "59"):
        return None
    micros = minute + int(ss) * 1_000_000
    if 0 <= micros and micros + 999_999 <= MAX_EVENT_MICROS:
        remember(_SECOND_MICROS, second, micros, _MAX_CACHED_SECONDS)
    return micros


def _minute_micros(minute):
    """Microseconds at "YYYY-MM-DDTHH:MM" (ASCII), remembered; None if it is not such a minute."""
    if (
        len(minute) != 16
        or not minute.isascii()
        or minute[4] != "-"
        or minute[7] != "-"
        or minute[10] != "T"
        or minute[13] != ":"
        or not (minute[:4] + minute[5:7] + minute[8:10] + minute[11:13] + minute[14:16]).isdigit()
        or minute[11:13] > "23"
        or minute[14:16] > "59"
    ):
        return None
    try:
        day = datetime_micros(datetime.datetime.fromisoformat(minute[:10]))
    except ValueError:
        return None
    micros = day + (int(minute[11:13]) * 60 + int(minute[14:16])) * 60_000_000
    return remember(_MINUTE_MICROS, minute, micros, _MAX_CACHED_MINUTES)


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
    status = _STATUS_TEXTS.get(value) if type(value) is str else None
    if status is not None:
        return status
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise RecordError("bad_status", f"field '{field}': {value!r} is not an HTTP status code (100-599)")
    return value


_STATUS_TEXTS = {str(status): status for status in range(100, 600)}  # as Java layouts log them, in their MDC


def _check_present(fmt, fields, values):
    """Raises missing_field for the first of `fields` (name, the config's mapping of it or None) whose value is
    None or empty text. Callers come here only when a value is falsy, so 0 and False pass through it."""
    for (name, mapped_by), value in zip(fields, values, strict=True):
        if value is None or value == "":
            why = f"required; mapped by formats.{fmt}.{mapped_by} in the SLI config" if mapped_by else "required"
            raise RecordError("missing_field", f"{fmt} record has no '{name}' ({why})")


class Request(NamedTuple):
    """What a log line says of its request apart from time, status and latency. Logs repeat their requests,
    so a `_Requests` makes each once per distinct (service, method, URL) as logged."""

    service: str
    host: str
    method: str
    path: str  # without query string
    journey: tuple | None  # (service, journey name, SLIs) by the parser's JourneyMatcher; None without one


class _Requests:
    """(service, method, URL) as one format logs them -> their `Request`, remembered when all are text (or no
    service) and short; a failure raises every time. `fields` names the three for error messages."""

    def __init__(self, fields, matcher):
        self._service_field, self._method_field, self._url_field = fields
        self._matcher = matcher
        self._memo = {}

    def get(self, service, method, url):
        try:
            request = self._memo.get((service, method, url))
        except TypeError:  # an unhashable value (a list or an object where text belongs): _make rejects it
            request = None
        return self._make(service, method, url) if request is None else request

    def _make(self, service, method, url):
        method_text = text(method, self._method_field).upper()
        url_text = text(url, self._url_field)
        try:
            parts = urlsplit(url_text)
            host, path = parts.hostname or "", parts.path or "/"
        except ValueError as e:
            raise RecordError("bad_field", f"field '{self._url_field}': {url_text!r:.80} is not a URL: {e}") from None
        name = key_part(service or host or "unknown", self._service_field)
        journey = None if self._matcher is None else self._matcher.classify(name, host, method_text, path)
        request = Request(name, host, method_text, path, journey)
        if (
            type(method) is str
            and type(url) is str
            and (service is None or type(service) is str)
            and len(method) + len(url) + len(service or "") <= _CACHED_REQUEST_CHARS
        ):
            remember(self._memo, (service, method, url), request, _MAX_CACHED_REQUESTS)
        return request


_CACHED_REQUEST_CHARS, _MAX_CACHED_REQUESTS = 1024, 1 << 16
_HTTP_REQUEST_FIELDS = tuple(
    (f"httpRequest.{name}", None) for name in ("requestMethod", "requestUrl", "status", "latency")
)


class _CloudLogging:
    """Cloud Logging LogEntry records with `httpRequest`."""

    def __init__(self, matcher):
        self._requests = _Requests(("service", "httpRequest.requestMethod", "httpRequest.requestUrl"), matcher)

    def fields(self, entry, http):
        if not isinstance(http, dict):
            raise RecordError("bad_field", "'httpRequest' must be an object")
        ts_field = "timestamp"
        ts = entry.get(ts_field)
        if not ts:
            ts_field = "receiveTimestamp"
            ts = entry.get(ts_field)
        method, url, status, latency = (
            http.get("requestMethod"),
            http.get("requestUrl"),
            http.get("status"),
            http.get("latency"),
        )
        if not (ts and method and url and status and latency):
            _check_present("LogEntry", ((ts_field, None), *_HTTP_REQUEST_FIELDS), (ts, method, url, status, latency))
        micros = _event_micros(ts, ts_field)
        labels = entry.get("resource")
        labels = labels.get("labels") if isinstance(labels, dict) else None
        service = (
            labels.get("service_name") or labels.get("module_id") or labels.get("backend_service_name")
            if isinstance(labels, dict)
            else None
        )
        if not service:
            labels = entry.get("labels")
            service = labels.get("service") if isinstance(labels, dict) else None
        return (
            micros,
            self._requests.get(service, method, url),
            parse_status(status, "httpRequest.status"),
            parse_latency_ms(latency, "httpRequest.latency", "s"),
            "cloud_logging",
        )


class _MappedFormat:
    """App log or flat JSON records read through a `FieldMapping`, its field names prepared once here."""

    def __init__(self, mapping, fmt, matcher):
        self._fmt = fmt
        times = (mapping.timestamp_field,) + (_APP_LOG_TIME if fmt == "app_log" else ())
        self._time_fields = tuple(_mapped(f) for f in dict.fromkeys(times))  # the first with a value wins
        required = ("method_field", "path_field", "status_field", "latency_field")
        self._method, self._url, self._status, self._latency, self._service = (
            _mapped(getattr(mapping, name)) for name in (*required, "service_field")
        )
        self._required = tuple((getattr(mapping, name), name) for name in ("timestamp_field", *required))
        self._requests = _Requests((mapping.service_field, mapping.method_field, mapping.path_field), matcher)
        self._latency_unit = mapping.latency_unit

    def fields(self, obj, fallback_time=None, context=None):
        """Request fields looked up in `context` (the MDC) first, then `obj`; a LogEntry's own time
        (`fallback_time`) when none of the time fields has a value."""
        ts_field, ts = "timestamp", fallback_time
        for field in self._time_fields:
            value = _mapped_value(obj, context, field)
            if value is not None and value != "":
                ts_field, ts = field[0], value
                break
        method, url, status, latency = (
            _mapped_value(obj, context, self._method),
            _mapped_value(obj, context, self._url),
            _mapped_value(obj, context, self._status),
            _mapped_value(obj, context, self._latency),
        )
        if not (ts and method and url and status and latency):
            _check_present(self._fmt, self._required, (ts, method, url, status, latency))
        return (
            _event_micros(ts, ts_field),
            self._requests.get(_mapped_value(obj, context, self._service), method, url),
            parse_status(status, self._status[0]),
            parse_latency_ms(latency, self._latency[0], self._latency_unit),
            self._fmt,
        )


def _mapped(name):
    """A mapped field name as `_mapped_value` takes it: (name, its dotted parts or None for a plain key)."""
    return name, tuple(name.split(".")) if "." in name else None


def _mapped_value(obj, context, field):
    """A mapped field's value: from the context map (the MDC) when it has one there, else from the record. A
    dotted name is a literal key (ECS style "log.level") where that key exists, else a path."""
    name, parts = field
    if parts is None:  # a plain key
        value = None if context is None else context.get(name)
        return obj.get(name) if value is None else value
    if context is not None:
        value = context.get(name, _ABSENT)
        if value is _ABSENT:
            value = _nested(context, parts)
        if value is not None:
            return value
    value = obj.get(name, _ABSENT)
    return _nested(obj, parts) if value is _ABSENT else value


def _nested(node, parts):
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _is_app_log(obj):
    keys = obj.keys()
    return not keys.isdisjoint(_APP_LOG_LEVEL) and not keys.isdisjoint(_APP_LOG_LOGGER)


def _context_map(obj):
    if obj.keys().isdisjoint(_CONTEXT_MAPS):  # logstash's layout, say: its request fields are nested
        return None
    for key in _CONTEXT_MAPS:
        value = obj.get(key)
        if isinstance(value, dict):
            return value
    return None


class LogParser:
    """Request-log records of the three formats -> their request fields, with the SLI config's field
    mappings (`formats`) prepared once. With a JourneyMatcher (`matcher`), each `Request` carries its
    journey too."""

    def __init__(self, formats, matcher=None):
        self._cloud_logging = _CloudLogging(matcher)
        self._app_log = _MappedFormat(formats.app_log, "app_log", matcher)
        self._flat = _MappedFormat(formats.flat, "flat", matcher)

    def event(self, payload):
        """One record (bytes, str or an already-decoded dict such as a BigQuery row) -> a `RequestEvent`."""
        micros, request, status, latency_ms, log_format = self.fields(payload)
        service, host, method, path, _ = request
        return RequestEvent(micros_seconds(micros), service, host, method, path, status, latency_ms, log_format)

    def fields(self, payload):
        """(event time in whole microseconds since the epoch, `Request`, status, latency in ms, log format):
        `event`'s fields for the batch path's integer window arithmetic, within the same range and with the
        same errors."""
        obj = payload if isinstance(payload, dict) else parse_json(payload)
        if not isinstance(obj, dict):
            raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        http = obj.get("httpRequest")
        if http is not None:
            return self._cloud_logging.fields(obj, http)
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
