"""UDFs cannot stop a job: an endless loop, a memory bomb, an exception with no message, sys.exit(), a crash
of the UDF's process and a return value JSON cannot encode each give one dead letter with its reason
within the time limit, and the next record is still processed."""

import json
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.launch import apply_udf
from transforms.io.udf import ApplyUdf

JS = """
function process(inJson) {
  var r = JSON.parse(inJson);
  if (r.kind === "loop") { while (true) {} }
  if (r.kind === "bomb") { var a = []; while (true) { a.push(new Array(1e6).fill(r.kind)); } }
  if (r.kind === "silent") { throw new Error(""); }
  r.seen = true;
  return JSON.stringify(r);
}
"""

PY = """
import os
import sys


def process(record):
    if '"loop"' in record:
        while True:
            pass
    if '"exit"' in record:
        sys.exit(3)
    if '"silent"' in record:
        raise ValueError()
    if '"set"' in record:
        return {"values": {1, 2}}
    if '"crash"' in record:
        os._exit(1)
    return record.replace("}", ', "seen": true}')
"""


def test_javascript_limits_turn_records_into_dead_letters(tmp_path):
    path = tmp_path / "udf.js"
    path.write_text(JS)
    fn = ApplyUdf(str(path), "process", "sli", timeout_ms=1500, max_memory_bytes=32 * 1024 * 1024)
    fn.setup()
    reasons = []
    for kind in ("loop", "bomb", "silent", "ok"):
        started = time.monotonic()
        [out] = list(fn.process(f'{{"kind": "{kind}"}}'))
        assert time.monotonic() - started < 10
        reasons.append(out.value["reason"] if isinstance(out, beam.pvalue.TaggedOutput) else out)
    assert reasons == ["udf_timeout", "udf_memory", "udf_error", '{"kind":"ok","seen":true}']


def test_python_udf_exceptions_and_bad_returns_are_dead_letters(tmp_path):
    path = tmp_path / "udf.py"
    path.write_text(PY)
    fn = ApplyUdf(str(path), "process", "sli")
    fn.setup()
    outcomes = []
    for kind in ("exit", "silent", "set", "ok"):
        [out] = list(fn.process(f'{{"kind": "{kind}"}}'))
        outcomes.append(
            (out.value["reason"], out.value["error_message"]) if isinstance(out, beam.pvalue.TaggedOutput) else out
        )
    assert outcomes == [
        ("udf_error", "SystemExit: 3"),
        ("udf_error", "ValueError: (no message)"),
        ("udf_error", "the UDF returned a dict JSON cannot encode: Object of type set is not JSON serializable"),
        '{"kind": "ok", "seen": true}',
    ]


def test_python_udf_time_limit_and_crash_in_the_pipeline(tmp_path):
    """Through apply_udf, as every pipeline runs it: the subprocess that enforces --udf_timeout_ms. The
    batch holding the endless loop and the crash fails as a whole, and its records are tried again one by one."""
    path = tmp_path / "udf.py"
    path.write_text(PY)
    options = PipelineOptions(["--runner", "FnApiRunner", "--udf_path", str(path), "--udf_timeout_ms", "200"])
    records = [f'{{"kind": "{kind}", "n": {i}}}' for i, kind in enumerate(("ok", "loop", "ok", "crash", "ok"))]
    with TestPipeline(options=options) as p:
        out, dead_letter_sources = apply_udf(options, p | beam.Create(records), "sli")
        dead = dead_letter_sources | beam.Flatten() | beam.Map(lambda d: (d["reason"], d["payload_string"]))
        assert_that(out, equal_to([r.replace("}", ', "seen": true}') for r in records if '"ok"' in r]))
        assert_that(dead, equal_to([("udf_timeout", records[1]), ("udf_error", records[3])]), label="dead")


def test_python_udf_without_a_limit_runs_in_the_worker(tmp_path):
    """--udf_timeout_ms 0: a trusted UDF, called in the SDK worker; its failures are still dead letters."""
    path = tmp_path / "udf.py"
    path.write_text(PY)
    options = PipelineOptions(["--runner", "FnApiRunner", "--udf_path", str(path), "--udf_timeout_ms", "0"])
    records = ['{"kind": "ok"}', '{"kind": "exit"}', '{"kind": "set"}']
    with TestPipeline(options=options) as p:
        out, dead_letter_sources = apply_udf(options, p | beam.Create(records), "sli")
        assert len(dead_letter_sources) == 1  # no subprocess, so no second output for its failures
        dead = dead_letter_sources[0] | beam.Map(lambda d: (d["reason"], d["payload_string"]))
        assert_that(out, equal_to(['{"kind": "ok", "seen": true}']))
        assert_that(dead, equal_to([("udf_error", records[1]), ("udf_error", records[2])]), label="dead")


def test_records_keep_their_timestamps_through_a_bounded_python_udf(tmp_path):
    """Streaming pipelines window records by their timestamps after the UDF: batching for the subprocess
    must not restamp them, neither in a batch nor when a failed batch is tried one record at a time."""
    path = tmp_path / "udf.py"
    path.write_text(PY)
    options = PipelineOptions(["--runner", "FnApiRunner", "--udf_path", str(path), "--udf_timeout_ms", "200"])
    kinds = ["ok"] * 40 + ["crash"] + ["ok"] * 10
    records = [f'{{"kind": "{kind}", "n": {n}}}' for n, kind in enumerate(kinds)]
    with TestPipeline(options=options) as p:
        stamped = p | beam.Create(list(enumerate(records))) | beam.MapTuple(lambda n, r: TimestampedValue(r, 1000 + n))
        out, _ = apply_udf(options, stamped, "sli")
        got = out | beam.Map(lambda r, at=beam.DoFn.TimestampParam: (json.loads(r)["n"], at.micros // 1_000_000))
        assert_that(got, equal_to([(n, 1000 + n) for n, kind in enumerate(kinds) if kind == "ok"]))
