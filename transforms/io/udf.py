"""User-defined functions applied to each raw record before parsing.

A UDF is one named function in a file (local or gs://), chosen by extension:
- `.py`: `def fn(record)` gets the record as `str` (a text line or a Pub/Sub message body) or `dict`
  (a BigQuery row) and returns a `str` or `dict` to pass on, or None to filter the record out.
- `.js`: the Google-provided-template convention, run unchanged in an embedded V8 (mini-racer):
  `function process(inJson) { ...; return JSON.stringify(obj); }` gets the record as JSON text and
  returns JSON text, or null/undefined to filter it out.

Raising (or a JS `throw`, or `sys.exit()`), running past `--udf_timeout_ms`, going over the memory limit
(JavaScript) or returning something that is not a record sends the record to dead letters with the reason
(udf_error, udf_timeout, udf_memory), and the UDF goes on with the next record. UDFs are loaded once per
worker in `setup()`; `load_udf` also runs at start-up so a broken file fails before any work is done,
naming the file and line.
"""

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms.io.deadletter import GuardedDoFn, RecordError, make_dead_letter, payload_and_attributes

DEFAULT_TIMEOUT_MS = 500
DEFAULT_MAX_MEMORY_BYTES = 256 * 1024 * 1024


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


def _call_python(fn):
    """The Python UDF's call, with whatever it raises (SystemExit included) as the record's RecordError."""

    def call(record):
        try:
            return fn(record)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a UDF's failure is its record's dead letter
            detail = str(e).splitlines()[0] if str(e).strip() else "(no message)"
            raise RecordError("udf_error", f"{type(e).__name__}: {detail}") from None

    return call


def _load_javascript(path, function, source, timeout_ms, max_memory_bytes):
    from py_mini_racer import JSOOMException, JSParseException, JSTimeoutException, MiniRacer

    ctx = MiniRacer()
    try:
        ctx.eval(source, timeout=timeout_ms or None, max_memory=max_memory_bytes)
    except JSParseException as e:
        first_line = (str(e).splitlines() or ["?"])[0].replace("<anonymous>", path)
        raise UdfError(f"--udf_path: syntax error in {first_line}") from None
    except Exception as e:  # noqa: BLE001 - a throw, a loop or a memory bomb at load time
        raise UdfError(
            f"--udf_path: {path} failed while loading: {(str(e).splitlines() or [type(e).__name__])[0]}"
        ) from None
    if ctx.eval(f"typeof {function}") != "function":
        raise UdfError(f"--udf_function: {path} defines no function {function!r}")
    # undefined cannot cross into Python: map it (and null) to None, meaning "filter the record out"
    ctx.eval(f"function __call_udf(s) {{ var r = {function}(s); return r === undefined ? null : r; }}")

    def call(record):
        text = record if isinstance(record, str) else json.dumps(record)
        try:
            return ctx.call("__call_udf", text, timeout=timeout_ms or None, max_memory=max_memory_bytes)
        except JSTimeoutException:
            raise RecordError("udf_timeout", f"the UDF ran past --udf_timeout_ms={timeout_ms}") from None
        except JSOOMException:
            raise RecordError("udf_memory", f"the UDF went over {max_memory_bytes} bytes of JavaScript heap") from None
        except Exception as e:  # noqa: BLE001 - a JS throw: the record's dead letter
            raise RecordError("udf_error", (str(e).splitlines() or [type(e).__name__])[0]) from None

    return call


def load_udf(path, function, timeout_ms=DEFAULT_TIMEOUT_MS, max_memory_bytes=DEFAULT_MAX_MEMORY_BYTES):
    """Returns a callable record -> record | None that raises RecordError for whatever the UDF does wrong
    (JavaScript: bounded by `timeout_ms` and `max_memory_bytes`; Python UDFs are bounded by running them in
    a subprocess, see ApplyUdf). Raises UdfError naming the flag, file and line when the file is unusable."""
    source = _read(path)
    if path.endswith(".py"):
        return _call_python(_load_python(path, function, source))
    if path.endswith(".js"):
        return _load_javascript(path, function, source, timeout_ms, max_memory_bytes)
    raise UdfError(f"--udf_path: {path} must end in .py or .js")


def _check_result(result):
    """A UDF's return value must be None, text, or an object JSON can encode."""
    if result is None:
        return None
    if isinstance(result, str):
        try:
            result.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError("udf_error", "the UDF returned text with lone surrogates") from None
        return result
    if isinstance(result, dict):
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise RecordError("udf_error", f"the UDF returned a dict JSON cannot encode: {e}") from None
        return result
    raise RecordError("udf_error", f"the UDF returned {type(result).__name__}; return a str, a dict or None")


class ApplyUdf(GuardedDoFn):
    """Applies the UDF to each raw record; filtered records are counted (`<pipeline>:udf_filtered`),
    failures go to `dead_letters` with the original payload. A Python UDF's time limit is enforced by
    running this DoFn in a subprocess (see `bounded_udf` in pipelines/launch.py)."""

    STEP = "ApplyUdf"

    def __init__(
        self, path, function, pipeline_name, timeout_ms=DEFAULT_TIMEOUT_MS, max_memory_bytes=DEFAULT_MAX_MEMORY_BYTES
    ):
        super().__init__(pipeline_name)
        self._path, self._function = path, function
        self._timeout_ms, self._max_memory_bytes = timeout_ms, max_memory_bytes
        self._filtered = Metrics.counter(pipeline_name, "udf_filtered")

    def setup(self):
        self._udf = load_udf(self._path, self._function, self._timeout_ms, self._max_memory_bytes)

    def handle(self, record):
        message = record if isinstance(record, PubsubMessage) else None
        payload = message.data if message else record
        if isinstance(payload, bytes):
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError("invalid_utf8", f"UDFs take text; the payload is not UTF-8: {e}") from None
        result = _check_result(self._udf(payload))
        if result is None:
            self._filtered.inc()
            return
        if message:
            text = result if isinstance(result, str) else json.dumps(result)
            yield PubsubMessage(text.encode("utf-8"), message.attributes)
        else:
            yield result


class ApplyUdfToBatch(beam.DoFn):
    """ApplyUdf over a list of (record, timestamp) pairs (one subprocess round trip for all of them): the
    outputs of each record as ApplyUdf gives them, with the record's own timestamp (batching would
    otherwise stamp them with the batch's)."""

    def __init__(self, apply_udf):
        self._apply = apply_udf

    def setup(self):
        self._apply.setup()

    def process(self, batch):
        for record, at in batch:
            for output in self._apply.process(record):
                yield output if isinstance(output, beam.pvalue.TaggedOutput) else TimestampedValue(output, at)


def udf_failure_dead_letter(failed, pipeline_name, path, function, timeout_ms):
    """A record Beam's subprocess runner gave up on, (record, (exception type, repr, traceback)): the UDF
    ran past its time limit, or its process died (a crash, os._exit, the memory limit)."""
    record, (exc_type, exc_repr, _) = failed
    payload, attributes = payload_and_attributes(record)
    if issubclass(exc_type, TimeoutError):
        error = RecordError("udf_timeout", f"UDF {function} in {path} ran past --udf_timeout_ms={timeout_ms}")
    else:
        error = RecordError("udf_error", f"UDF {function} in {path}: its process failed: {exc_repr[:500]}")
    return make_dead_letter(pipeline_name, ApplyUdf.STEP, payload, error, attributes)
