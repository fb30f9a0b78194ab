"""BigQuery inputs on the emulator: the same rows loaded into a table give the same outputs as from files
(the file run, computed in the same test, is the reference). `--input_table` is read with the Storage Read
API over the emulator's gRPC port; a wildcard table with a date range reads the date shards that a Cloud
Logging sink writes (`requests_YYYYMMDD`)."""

import base64
import datetime
import json
import re
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from hypothesis import given
from hypothesis import strategies as st

from pipelines import feature_stats, score, skew, sli, window_features
from pipelines.options import check_input, select_date_shards
from pipelines.samples.request_logs import DAY_START, generate_with_truth
from tests.harness import point_beam_bigquery_storage_at, restore_beam_bigquery_storage
from tests.test_feature_pipeline import read_examples
from tests.test_feature_pipeline import run_pipeline as run_feature_stats
from transforms.features.artifacts import read_statistics
from transforms.sli.rows import PANE_COLUMNS

F = bigquery.SchemaField
# The columns of a Cloud Logging sink's table that the SLI parser reads, typed as the sink writes them.
LOG_ENTRY_SCHEMA = [
    F("insertId", "STRING"),
    F("timestamp", "TIMESTAMP"),
    F("receiveTimestamp", "TIMESTAMP"),
    F("severity", "STRING"),
    F("logName", "STRING"),
    F(
        "resource",
        "RECORD",
        fields=[
            F("type", "STRING"),
            F("labels", "RECORD", fields=[F("service_name", "STRING"), F("location", "STRING")]),
        ],
    ),
    F(
        "httpRequest",
        "RECORD",
        fields=[
            F("requestMethod", "STRING"),
            F("requestUrl", "STRING"),
            F("status", "INT64"),
            F("latency", "STRING"),
            F("userAgent", "STRING"),
            F("protocol", "STRING"),
        ],
    ),
]
TRANSACTION_SCHEMA = [
    F("card_id", "STRING"),
    F("event_time", "TIMESTAMP"),
    F("amount", "FLOAT64"),
    F("merchant", "STRING"),
]
REQUEST_SCHEMA = [F("id", "STRING"), F("image_data", "BYTES")]
SERVING_SCHEMA = [
    F("user_id", "STRING"),
    F("age", "INT64"),
    F("income", "FLOAT64"),
    F("tenure_days", "INT64"),
    F("country", "STRING"),
    F("device", "STRING"),
    F("review", "STRING"),
]
CUSTOMER_SCHEMA = [*SERVING_SCHEMA, F("churned", "STRING")]


@pytest.fixture(scope="module")
def bq(services, project):
    original = point_beam_bigquery_storage_at(services.env["BIGQUERY_STORAGE_EMULATOR_HOST"])
    yield bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=services.env["BIGQUERY_EMULATOR_HOST"]),
    )
    restore_beam_bigquery_storage(original)


def load(bq, table_id, schema, records):
    table = bq.create_table(bigquery.Table(table_id, schema=schema))
    for i in range(0, len(records), 1000):
        assert bq.insert_rows_json(table, records[i : i + 1000], retry=None) == []


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def log_entries(days):
    """Cloud Logging LogEntry records (the sample generator's, time cut to microseconds as BigQuery keeps
    it) over `days` days from the day before the sample's, with their UTC day."""
    start = DAY_START - datetime.timedelta(days=1)
    records = []
    for line, _ in generate_with_truth(300 * days, seconds=86400 * days, seed=5, malformed_every=0, start=start):
        record = json.loads(line)
        if "httpRequest" in record:
            for field in ("timestamp", "receiveTimestamp"):
                record[field] = record[field][:-4] + "Z"  # nanoseconds -> microseconds
            records.append(record)
    return [(r, r["timestamp"][:10].replace("-", "")) for r in records]


def read_sli_rows(output_dir):
    rows = [json.loads(line) for path in sorted(output_dir.glob("sli_rows-*.jsonl")) for line in path.open()]
    return sorted(({k: v for k, v in r.items() if k not in PANE_COLUMNS} for r in rows), key=json.dumps)


def test_sli_backfill_from_date_shards_equals_the_same_days_from_files(bq, project, tmp_path):
    """Three daily shards requests_YYYYMMDD; the wildcard table with a two-day range gives the rows of a
    file holding those two days' records (and only them: the first day's shard is left out)."""
    bq.create_dataset("logs_export", exists_ok=True)
    entries = log_entries(3)
    days = sorted({day for _, day in entries})
    assert len(days) == 3
    for day in days:
        load(bq, f"{project}.logs_export.requests_{day}", LOG_ENTRY_SCHEMA, [r for r, d in entries if d == day])
    bq.create_table(f"{project}.logs_export.requests_summary", exists_ok=True)  # matches the prefix, not a date

    chosen = [r for r, d in entries if d in days[1:]]
    file_out, table_out = tmp_path / "files", tmp_path / "table"
    sli.run(["--input_files", str(write_jsonl(tmp_path / "logs.jsonl", chosen)), "--output_dir", str(file_out)])
    start, end = (datetime.datetime.strptime(d, "%Y%m%d").date().isoformat() for d in (days[1], days[2]))
    sli.run(
        [
            "--project",
            project,
            "--input_table",
            f"{project}:logs_export.requests_*",
            "--input_start_date",
            start,
            "--input_end_date",
            end,
            "--output_dir",
            str(table_out),
        ]
    )
    expected = read_sli_rows(file_out)
    assert expected and read_sli_rows(table_out) == expected
    assert not any(p.read_text() for p in table_out.glob("dead_letters*"))


def _skew_report(out, *flags):
    options = PipelineOptions(["--runner", "FnApiRunner", "--output_dir", str(out), *flags])
    settings = skew.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        skew.build(pipeline, options, settings)
    return json.loads((out / "anomalies.json").read_text())


def test_skew_from_a_table_equals_the_same_records_from_files(bq, project, tmp_path):
    """The bundled serving records (some without age or device: NULLs in the table) from a table and from
    their file give the same anomalies report."""
    records = [json.loads(line) for line in (skew.SAMPLES / "serving.jsonl").read_text().splitlines()]
    bq.create_dataset("serving", exists_ok=True)
    load(bq, f"{project}.serving.requests", SERVING_SCHEMA, records)
    expected = _skew_report(tmp_path / "files", "--input_files", str(skew.SAMPLES / "serving.jsonl"))
    got = _skew_report(tmp_path / "table", "--project", project, "--input_table", f"{project}:serving.requests")
    assert expected["anomalies"] > 0  # the sample drifts: the comparison is not between two empty reports
    assert _same(got, expected)


def _same(actual, expected, rel=1e-9, abs=0.0):  # noqa: A002 - pytest.approx's name
    """Equal JSON values, floats to `rel` relative (sums in another order differ in the last bits)."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected)
        return all(_same(actual[k], v, rel, abs) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        return all(_same(a, e, rel, abs) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=abs)
    else:
        assert actual == expected
    return True


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--input_table", "local-project:logs_none.t", "--input_start_date", "2026-11-01"], "wildcard table"),
        (
            ["--input_table", "local-project:logs_export.requests_*", "--input_end_date", "2026-13-01"],
            "--input_end_date",
        ),
        (["--input_table", "local-project:logs_export.nothing_*"], "no table of local-project:logs_export"),
        (["--input_table", "logs_export.requests_*"], "PROJECT:DATASET.PREFIX*"),
    ],
)
def test_bad_shard_flags_fail_naming_the_flag(bq, flags, words):
    bq.create_dataset("logs_export", exists_ok=True)
    with pytest.raises(ValueError, match=re.escape(words)):
        check_input(PipelineOptions(flags), ("input_files", "input_table"), None)


@given(
    days=st.sets(st.integers(0, 800), max_size=12),
    others=st.lists(st.text("ab_0123456789", max_size=10), max_size=6),
    bounds=st.tuples(st.none() | st.integers(0, 800), st.none() | st.integers(0, 800)),
)
def test_date_shards_are_the_days_in_range(days, others, bounds):
    """Against a second method: every day of the range enumerated with datetime, its shard name looked up."""
    first = datetime.date(2026, 1, 1)
    ids = [f"requests_{first + datetime.timedelta(days=d):%Y%m%d}" for d in days]
    ids = list(dict.fromkeys(ids + [f"requests_{o}" for o in others] + ["other_20260101"]))
    start, end = (None if b is None else first + datetime.timedelta(days=b) for b in bounds)
    got = select_date_shards("requests_", ids, *(None if d is None else f"{d:%Y%m%d}" for d in (start, end)))
    if start is None and end is None:
        assert got == sorted(t for t in ids if t.startswith("requests_"))
        return
    lo, hi = start or first, end or first + datetime.timedelta(days=800)  # the days the ids can have
    in_range = {f"requests_{lo + datetime.timedelta(days=i):%Y%m%d}" for i in range((hi - lo).days + 1)}
    assert got == sorted(set(ids) & in_range)


# --- feature_stats, window_features, score: one dataset, each pipeline's rows from a table and from a file


def load_inputs(bq, project, table, schema, records):
    """`inputs.<table>`, created just before a test reads it."""
    bq.create_dataset("inputs", exists_ok=True)
    load(bq, f"{project}.inputs.{table}", schema, records)
    return f"{project}:inputs.{table}"


def fitting_records(path, schema, limit=None):
    """The JSON-object lines of `path` whose values fit `schema`'s types (a table cannot hold the others)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and all(_fits(record.get(f.name), f.field_type) for f in schema):
            records.append(record)
    return records[:limit]


def _fits(value, field_type):
    if value is None:
        return True
    if field_type == "TIMESTAMP":
        try:
            return datetime.datetime.fromisoformat(value) is not None
        except (TypeError, ValueError):
            return False
    return type(value) is {"STRING": str, "INT64": int, "FLOAT64": float}[field_type]


def _without(rows, *columns):
    return sorted(({k: v for k, v in r.items() if k not in columns} for r in rows), key=json.dumps)


def _jsonl_rows(output_dir, prefix):
    return [json.loads(line) for path in sorted(output_dir.glob(f"{prefix}*.jsonl")) for line in path.open()]


def _dead_letter_reasons(output_dir):
    return sorted(d["reason"] for d in _jsonl_rows(output_dir, "dead_letters"))


def test_feature_stats_from_a_table_equals_the_same_records_from_files(bq, project, tmp_path):
    """600 churn records (NULLs where the file leaves a field out): the same statistics per split and the
    same transformed examples (each split's TFRecords) from the table as from their file."""
    records = fitting_records(feature_stats.SAMPLE_DATA, CUSTOMER_SCHEMA, limit=600)
    table = load_inputs(bq, project, "customers", CUSTOMER_SCHEMA, records)
    runs = {}
    for name, flags in (
        ("files", ["--input_files", str(write_jsonl(tmp_path / "customers.jsonl", records))]),
        ("table", ["--project", project, "--input_table", table]),
    ):
        out = tmp_path / name
        run_feature_stats(feature_stats.SAMPLE_SPEC, out, *flags)
        statistics = read_statistics(out)
        del statistics["run_id"]
        examples = {split: sorted(read_examples(out, split), key=lambda e: e["user_id"]) for split in ("train", "eval")}
        runs[name] = statistics, examples, _dead_letter_reasons(out)
    (stats, examples, dead), expected = runs["table"], runs["files"]
    assert expected[0]["train"]["rows"] + expected[0]["eval"]["rows"] == len(records)
    assert _same(stats, expected[0])
    assert examples == expected[1] and dead == expected[2]


def test_window_features_from_a_table_equals_the_same_events_from_files(bq, project, tmp_path):
    """600 card transactions, event_time a TIMESTAMP column: the same feature rows from the table. The read
    deletes its own temporary datasets only (tests.harness.point_beam_bigquery_at): a dataset of another
    test stays."""
    records = fitting_records(Path(window_features.SAMPLE_EVENTS), TRANSACTION_SCHEMA, limit=600)
    table = load_inputs(bq, project, "transactions", TRANSACTION_SCHEMA, records)
    bq.create_dataset("bystander", exists_ok=True)
    runs = {}
    for name, flags in (
        ("files", ["--input_files", str(write_jsonl(tmp_path / "transactions.jsonl", records))]),
        ("table", ["--input_table", table]),
    ):
        window_features.run(["--output_dir", str(tmp_path / name), "--progress", "off", "--project", project, *flags])
        rows = [{k: v for k, v in r.items() if k != "emitted_at"} for r in _jsonl_rows(tmp_path / name, "feature_rows")]
        runs[name] = sorted(rows, key=lambda r: (r["entity"], r["window"], r["time_index"]))
    assert len(runs["files"]) > len(records)  # sliding windows: several rows per event
    assert _same(runs["table"], runs["files"])
    assert _dead_letter_reasons(tmp_path / "table") == _dead_letter_reasons(tmp_path / "files") == []
    datasets = {d.dataset_id for d in bq.list_datasets()}
    assert {"bystander", "inputs"} <= datasets and not any(d.startswith("beam_temp_dataset_") for d in datasets)


def test_score_from_a_table_of_image_bytes_equals_the_same_requests_from_files(bq, project, tmp_path):
    """The bundled requests with an id and valid base64 (one of them not an image), in a table as a BYTES
    column image_data: the same predictions and dead letters as the JSON requests ({"b64": ...}) of a file."""
    records = [
        r
        for r in fitting_records(score.SAMPLE_REQUESTS, [F("id", "STRING")])
        if r.get("id") and _is_base64(r["image_bytes"]["b64"])
    ]
    rows = [{"id": r["id"], "image_data": r["image_bytes"]["b64"]} for r in records]  # BYTES in JSON: base64
    table = load_inputs(bq, project, "requests", REQUEST_SCHEMA, rows)
    runs = {}
    for name, flags in (
        ("files", ["--input_files", str(write_jsonl(tmp_path / "requests.jsonl", records))]),
        ("table", ["--input_table", table]),
    ):
        score.run(["--output_dir", str(tmp_path / name), "--progress", "off", "--project", project, *flags])
        predictions = _without(_jsonl_rows(tmp_path / name, "predictions"), "scored_at", "latency_ms")
        for row in predictions:
            row["outputs"] = json.loads(row["outputs"])
        runs[name] = sorted(predictions, key=lambda r: r["request_id"]), _dead_letter_reasons(tmp_path / name)
    assert [r["request_id"] for r in runs["files"][0]] == sorted(r["id"] for r in records if r["id"] != "not-an-image")
    assert runs["files"][1] == ["not_an_image"]
    # the same images (content keys) and labels; float32 scores of batches of other sizes differ in the last bits
    assert _same(runs["table"], runs["files"], rel=1e-5, abs=1e-6)


def _is_base64(text):
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True
