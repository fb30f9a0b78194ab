"""User-defined functions applied to each raw record before parsing.

A UDF is one named function in a file (local or gs://), chosen by extension:
- `.py`: `def fn(record)` gets the record as `str` (a text line or a Pub/Sub message body) or `dict`
  (a BigQuery row) and returns a `str` or `dict` to pass on, or None to filter the record out.
- `.js`: the Google-provided-template convention, run unchanged in an embedded V8 (mini-racer):
  `function process(inJson) { ...; return JSON.stringify(obj); }` gets the record as JSON text and
  returns JSON text, or null/undefined to filter it out.

Raising (or a JS `throw`) sends the record to dead letters with the UDF's error. UDFs are loaded once per
worker in `setup()`; `load_udf` also runs at start-up so a broken file fails before any work is done,
naming the file and line.
"""
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics

from transforms.io.deadletter import DEAD_LETTER_TAG, RecordError, make_dead_letter


class UdfError(ValueError):
    """The UDF file cannot be used; the message names the flag, file and line."""


def _read(path):
    try:
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8")
    except Exception as e:  # noqa: BLE001 - any IO failure becomes a message naming the flag
        raise UdfError(f"--udf_path: cannot read {path}: {e}") from None


def _load_python(path, function, source):
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise UdfError(f"--udf_path: syntax error in {path} line {e.lineno}: {e.msg}") from None
    namespace = {"__name__": "udf", "__file__": path}
    try:
        exec(code, namespace)  # noqa: S102 - running the user's UDF file is the point
    except Exception as e:  # noqa: BLE001
        raise UdfError(f"--udf_path: {path} failed while loading: {type(e).__name__}: {e}") from None
    fn = namespace.get(function)
    if not callable(fn):
        raise UdfError(f"--udf_function: {path} defines no function {function!r}")
    return fn


def _load_javascript(path, function, source):
    from py_mini_racer import JSParseException, MiniRacer

    ctx = MiniRacer()
    try:
        ctx.eval(source)
    except JSParseException as e:
        first_line = str(e).splitlines()[0].replace("<anonymous>", path)
        raise UdfError(f"--udf_path: syntax error in {first_line}") from None
    except Exception as e:  # noqa: BLE001 - a throw at load time
        raise UdfError(f"--udf_path: {path} failed while loading: {str(e).splitlines()[0]}") from None
    if ctx.eval(f"typeof {function}") != "function":
        raise UdfError(f"--udf_function: {path} defines no function {function!r}")
    # undefined cannot cross into Python: map it (and null) to None, meaning "filter the record out"
    ctx.eval(f"function __call_udf(s) {{ var r = {function}(s); return r === undefined ? null : r; }}")

    def call(record):
        text = record if isinstance(record, str) else json.dumps(record)
        return ctx.call("__call_udf", text)

    return call


def load_udf(path, function):
    """Returns a callable record -> record | None. Raises UdfError naming the flag, file and line."""
    source = _read(path)
    if path.endswith(".py"):
        return _load_python(path, function, source)
    if path.endswith(".js"):
        return _load_javascript(path, function, source)
    raise UdfError(f"--udf_path: {path} must end in .py or .js")


class ApplyUdf(beam.DoFn):
    """Applies the UDF to each raw record; filtered records are counted (`<pipeline>:udf_filtered`),
    failures go to `dead_letters` with the original payload."""

    STEP = "ApplyUdf"

    def __init__(self, path, function, pipeline_name):
        self._path, self._function, self._pipeline = path, function, pipeline_name
        self._filtered = Metrics.counter(pipeline_name, "udf_filtered")

    def setup(self):
        self._udf = load_udf(self._path, self._function)

    def process(self, record):
        message = record if isinstance(record, PubsubMessage) else None
        payload = message.data if message else record
        if isinstance(payload, bytes):
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, make_dead_letter(
                    self._pipeline, self.STEP, record.data if message else record,
                    RecordError("invalid_utf8", f"UDFs take text; the payload is not UTF-8: {e}"),
                    message.attributes if message else None))
                return
        try:
            result = self._udf(payload)
            if result is not None and not isinstance(result, (str, dict)):
                raise TypeError(f"the UDF returned {type(result).__name__}; return a str, a dict or None")
        except Exception as e:  # noqa: BLE001 - any UDF failure is the record's dead letter
            error = RecordError("udf_error", f"UDF {self._function} in {self._path}: {str(e).splitlines()[0]}")
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, make_dead_letter(
                self._pipeline, self.STEP, message.data if message else record, error,
                message.attributes if message else None))
            return
        if result is None:
            self._filtered.inc()
            return
        if message:
            text = result if isinstance(result, str) else json.dumps(result)
            yield PubsubMessage(text.encode("utf-8"), message.attributes)
        else:
            yield result
