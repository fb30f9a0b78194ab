"""The whole batch pipeline on local files, its streaming twin on TestStream, and its CLI."""

import gc
import gzip
import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines import sli
from pipelines.samples import SLI_DIR
from pipelines.samples.request_logs import DAY_START, MALFORMED
from tests.oracle import expected_rows, sample_truth
from transforms.sli.rows import PANE_COLUMNS
from transforms.sli.stats import LATENCY_RELATIVE_ACCURACY


def read_rows(output_dir, name="sli_rows"):
    rows = []
    for path in sorted(output_dir.glob(f"{name}-*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text().splitlines())
    return rows


def assert_same_rows(actual, expected):
    """Rows equal but for pane columns; floats to 1e-9 relative (sums in another order differ in the last
    bits). A plain function, so it also serves as an assert_that matcher."""

    def key(row):
        return row["sli_id"], row["window_start"]

    actual, expected = sorted(actual, key=key), sorted(expected, key=key)
    assert [key(r) for r in actual] == [key(r) for r in expected]
    for a, e in zip(actual, expected, strict=True):
        assert {
            k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in e.items() if k not in PANE_COLUMNS
        } == {k: v for k, v in a.items() if k not in PANE_COLUMNS}, key(e)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The no-flag default run, on the bundled sample (its output dir redirected to a temp dir)."""
    out = tmp_path_factory.mktemp("sample")
    sli.run(["--output_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def subset_file(tmp_path_factory):
    """The first 5,000 sample requests (one malformed line among them), gzipped."""
    lines, _ = sample_truth()
    path = tmp_path_factory.mktemp("subset") / "logs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines[:5001]) + "\n")
    return path, lines[:5001]


@pytest.fixture(scope="module")
def subset_batch_rows(subset_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("subset_out")
    sli.run(["--input_files", str(subset_file[0]), "--output_dir", str(out)])
    return read_rows(out)


def test_sample_counts_reconcile(sample_run):
    lines, truths = sample_truth()
    rows = read_rows(sample_run)
    dead = read_rows(sample_run, "dead_letters")
    # every malformed line, and only those, is a dead letter, with its payload
    assert sorted(d["payload_string"] for d in dead) == sorted(line for line in lines if line in MALFORMED)
    assert all(d["step"] == "ParseLogRecords" and d["error_message"] for d in dead)
    # one availability row per matched journey window plus the unmatched rows cover every event once
    events = sum(r["total"] for r in rows if r["sli_kind"] in ("availability", "unmatched"))
    assert events == len(truths)
    assert events + len(dead) == len(lines)


def test_sample_rows_match_independent_computation(sample_run):
    _, truths = sample_truth()
    expected = expected_rows(truths)
    rows = read_rows(sample_run)
    assert {(r["sli_id"], r["window_start"]) for r in rows} == set(expected)
    for row in rows:
        cell = expected[(row["sli_id"], row["window_start"])]
        assert (row["total"], row["good"] if row["good"] is not None else cell["good"]) == (cell["total"], cell["good"])
        assert row["throughput_rps"] == pytest.approx(cell["total"] / 60)
        assert row["latency_max_ms"] == pytest.approx(max(cell["latencies"]))
        data = np.sort(cell["latencies"])
        rank = 0.99 * (len(data) - 1)
        assert (
            data[math.floor(rank)] * (1 - LATENCY_RELATIVE_ACCURACY)
            <= row["latency_p99_ms"]
            <= data[math.ceil(rank)] * (1 + LATENCY_RELATIVE_ACCURACY)
        )
        assert row["pane_timing"] == "ON_TIME" and row["is_final"]


def test_sample_has_the_incident_and_the_regression(sample_run):
    rows = read_rows(sample_run)
    view = [r for r in rows if r["sli_id"] == "profile-web/view-profile/availability"]
    incident = [r for r in view if "T14:0" in r["window_start"] or "T14:1" in r["window_start"]]
    quiet = [r for r in view if r["window_start"] < "2026-11-22T13"]
    assert sum(r["bad"] for r in incident) / sum(r["total"] for r in incident) > 0.15
    assert sum(r["bad"] for r in quiet) / sum(r["total"] for r in quiet) < 0.01
    slow = [r for r in rows if r["sli_id"] == "profile-web/view-profile/latency_500ms" and "T18:" in r["window_start"]]
    assert sum(r["bad"] for r in slow) / sum(r["total"] for r in slow) > 0.05


def test_report_is_printed(capsys, tmp_path, subset_file):
    sli.run(["--input_files", str(subset_file[0]), "--output_dir", str(tmp_path)])
    report = capsys.readouterr().out
    assert "records in: 5001  events: 5000  dead letters: 1  filtered by the UDF: 0" in report
    assert "profile-web/view-profile/availability" in report
    assert gc.get_freeze_count() == 0  # frozen for the run only (launch.run_pipeline): a process keeps no cycle


def test_report_line_of_an_alert_resolved_by_an_empty_window():
    alert = {
        "at": "2026-11-23T06:00:00+00:00",
        "budget_remaining": -3.34,
        "burn_rate_long": 4.3437,
        "burn_rate_short": None,
        "long_window_minutes": 4320,
        "severity": "ticket",
        "short_window_minutes": 360,
        "slo": "view-profile-availability",
        "state": "RESOLVED",
        "threshold": 0.9333,
    }
    assert sli.alert_line(alert) == (
        "alert RESOLVED 2026-11-23T06:00:00+00:00 view-profile-availability ticket "
        "4320m/360m burn 4.3/no data (threshold 0.93)"
    )


def test_streaming_path_gives_the_same_rows_as_backfill(subset_file, subset_batch_rows, tmp_path):
    _, lines = subset_file
    publish_time = DAY_START.timestamp() + 86400  # like Pub/Sub: arrival (publish) time, not event time
    stream = TestStream()
    for i in range(0, len(lines), 500):
        stream = stream.add_elements([TimestampedValue(line, publish_time) for line in lines[i : i + 500]])
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(["--output_dir", str(tmp_path)], runner="BundleBasedDirectRunner", streaming=True)
    config = sli.validate(options)
    with beam.Pipeline(options=options) as p:
        outputs = sli.build(p, options, config, source=stream)
        assert_that(outputs.sli_rows, lambda rows: assert_same_rows(rows, subset_batch_rows), label="RowsEqual")
        assert_that(
            outputs.dead_letters | beam.Map(lambda d: d["payload_string"]),
            equal_to([line for line in lines if line in MALFORMED]),
            label="DeadLettersEqual",
        )


def test_backfill_with_workers_in_separate_processes(subset_file, subset_batch_rows, tmp_path):
    """As on Dataflow: DoFns pickled and shipped, modules imported afresh in each worker process."""
    sli.run(
        [
            "--input_files",
            str(subset_file[0]),
            "--output_dir",
            str(tmp_path),
            "--runner",
            "FnApiRunner",
            "--direct_num_workers",
            "2",
            "--direct_running_mode",
            "multi_processing",
        ]
    )
    assert_same_rows(read_rows(tmp_path), subset_batch_rows)


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        sli.run(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--sli_config",
        "--input_subscription",
        "--input_topic",
        "--input_files",
        "--input_table",
        "--window_seconds",
        "--allowed_lateness_seconds",
        "--output_table",
        "--bigtable_instance",
        "--bigtable_table",
        "--tensorboard_dir",
        "--tensorboard_run",
        "--slo_table",
        "--alerts_topic",
        "--output_dir",
        "--dead_letter_table",
        "--dead_letter_topic",
        "--bq_write_method",
        "--runner",
        "--project",
        "--streaming",
    ):
        assert flag in text, flag


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--input_files", "a", "--input_table", "p:d.t"], "--input_files and --input_table"),
        (["--window_seconds", "0"], "--window_seconds must be positive"),
        (["--window_seconds", "ten"], "--window_seconds"),
        (["--bigtable_instance", "i"], "--bigtable_instance and --bigtable_table"),
        (["--bigtable_instance", "i", "--bigtable_table", "t"], "needs --project"),
        (["--output_table", "p:d.t"], "dead letters need a destination"),
        (["--sli_config", "/no/such.yaml"], "--sli_config: cannot read /no/such.yaml"),
        (["--bq_write_method", "FAST"], "--bq_write_method"),
        (
            ["--sli_config", str(SLI_DIR / "store.yaml"), "--slo_table", "p:d.t"],
            "--slo_table and --alerts_topic need SLOs",
        ),
    ],
)
def test_bad_flags_fail_naming_the_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as done:
        sli.run(argv)
    assert words in str(done.value.code) + capsys.readouterr().err
