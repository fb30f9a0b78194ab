"""SLO replay and what-if: the SLI pipeline's own rows replayed under its own config give the alerts and
budgets that run wrote; configs side by side on constructed rows differ as worked out by hand; --start and
--end cut the period; bad rows are dead letters; flag errors name the flag; latency thresholds the rows lack
are counted from their sketches, against the raw requests (JSONL and BigQuery rows), and rows without
sketches replay their own thresholds only."""

import gzip
import json
from datetime import UTC, datetime, timedelta

import apache_beam as beam
import pytest
from google.cloud import bigquery

from pipelines import sli, slo_replay
from pipelines.launch import metric_counts, parse_pipeline_options
from pipelines.samples.request_logs import generate_with_truth
from tests.oracle import profile_journey, sample_truth, window_start_iso
from tests.test_bad_inputs import BAD_LINES
from tests.test_sli_e2e import bq_client
from tests.test_sli_pipeline import read_rows
from tests.test_slo_queries import _schema
from transforms.io.deadletter import RecordError
from transforms.sli.config import load_sli_config
from transforms.sli.rows import SLI_ROW_BQ_SCHEMA
from transforms.sli.stats import LATENCY_RELATIVE_ACCURACY
from transforms.slo.replay import LatencyFromSketches, ReplaySeries, ReplaySummary, parse_sli_row

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def at(minute):
    return (T0 + timedelta(minutes=minute)).isoformat()


def replay(tmp_path, *argv):
    out = tmp_path / "replay"
    slo_replay.run([*argv, "--output_dir", str(out), "--progress", "off"])
    return {r["config"] + "/" + r["slo"]: r for r in read_rows(out, "comparison")}, read_rows(out, "alerts")


@pytest.fixture(scope="module")
def sli_run(tmp_path_factory):
    """The SLI pipeline on about 3 hours of the sample (12:30-15:50 UTC, the 14:00 incident inside)."""
    lines, _ = sample_truth()
    tmp = tmp_path_factory.mktemp("replay_sli")
    logs = tmp / "logs.jsonl.gz"
    with gzip.open(logs, "wt") as f:
        f.write("\n".join(lines[15000:19000]) + "\n")
    sli.run(["--input_files", str(logs), "--output_dir", str(tmp / "sli"), "--progress", "off"])
    return tmp


def test_replaying_the_sli_runs_rows_gives_its_alerts_and_final_budgets(sli_run, tmp_path):
    comparison, alerts = replay(
        tmp_path,
        "--input_files",
        str(sli_run / "sli" / "sli_rows-*.jsonl"),
        "--sli_config",
        f"own={sli.SAMPLE_CONFIG}",
    )
    expected_alerts = read_rows(sli_run / "sli", "alerts")
    assert any(a["state"] == "FIRING" and a["severity"] == "page" for a in expected_alerts)

    def lines(alerts):
        return sorted(json.dumps(a, sort_keys=True) for a in alerts)

    assert lines({k: v for k, v in a.items() if k != "config"} for a in alerts) == lines(expected_alerts)
    assert {a["config"] for a in alerts} == {"own"}
    status = read_rows(sli_run / "sli", "slo_status")
    for slo in load_sli_config(sli.SAMPLE_CONFIG).slos:
        rows = [r for r in status if r["slo"] == slo.name]
        last = max(rows, key=lambda r: r["evaluated_at"])
        got = comparison[f"own/{slo.name}"]
        assert got["budget_consumed"] == last["budget_consumed"], slo.name
        assert got["evaluated_minutes"] == len(rows)
        assert got["pages"] == sum(
            a["slo"] == slo.name and a["state"] == "FIRING" and a["severity"] == "page" for a in expected_alerts
        )


CONFIG = """
services:
  - name: web
    hosts: [web.example.com]
    slis: [{{kind: availability}}]
    journeys: [{{name: all, regex: /.*}}]
slos:
  - {{name: avail, sli: web/all/availability, target: {target}, window_days: 1}}
alerting:
  min_events: 0
  rules:
    - {{severity: page, long_window_minutes: 10, short_window_minutes: 2, budget_share: 0.025, for_minutes: {hold}}}
"""


@pytest.fixture
def constructed(tmp_path):
    """30 minutes of 100 requests from 10:00 UTC, all failing in minutes 10-14; configs A (target 0.9, so
    the page threshold is 0.025 * 1440 / 10 = 3.6), B (A, fired after 2 minutes of burning), C (target 0.8)."""
    rows = [
        {
            "sli_id": "web/all/availability",
            "sli_kind": "availability",
            "window_start": at(m),
            "window_seconds": 60,
            "good": 0 if 10 <= m <= 14 else 100,
            "total": 100,
            "pane_index": 0,
        }
        for m in range(30)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n" + json.dumps({"sli_id": "x"}) + "\n")
    configs = []
    for name, target, hold in (("a", 0.9, 0), ("b", 0.9, 2), ("c", 0.8, 0)):
        (tmp_path / f"{name}.yaml").write_text(CONFIG.format(target=target, hold=hold))
        configs.append(f"{name}={tmp_path / name}.yaml")
    return path, configs


def test_configs_side_by_side_differ_as_worked_out_by_hand(constructed, tmp_path):
    rows, configs = constructed
    comparison, alerts = replay(tmp_path, "--input_files", str(rows), "--sli_config", ",".join(configs))
    transitions = sorted((a["config"], a["at"], a["state"]) for a in alerts)
    # A: at minute 13 the 10-minute window (4..13) holds 400 bad of 1000 (burn 4 > 3.6) and the 2-minute
    # one burns 10: FIRING at the end of minute 13; minute 16's 2-minute window (15, 16) is clean: RESOLVED.
    # B holds it 2 minutes: FIRING at minute 15. C (budget 0.2) burns at most 500/1000/0.2 = 2.5: silent.
    assert transitions == [
        ("a", at(14), "FIRING"),
        ("a", at(17), "RESOLVED"),
        ("b", at(16), "FIRING"),
        ("b", at(17), "RESOLVED"),
    ]
    a, b, c = comparison["a/avail"], comparison["b/avail"], comparison["c/avail"]
    assert (a["pages"], a["page_minutes"]) == (1, 3)  # minutes 13, 14, 15
    assert (b["pages"], b["page_minutes"]) == (1, 1)  # minute 15
    assert (c["pages"], c["page_minutes"]) == (0, 0)
    # 500 bad of 3000: consumed (1/6) / budget; the most after minute 14: 500 bad of 1500
    assert a["budget_consumed"] == b["budget_consumed"] == pytest.approx(1 / 6 / 0.1)
    assert c["budget_consumed"] == pytest.approx(1 / 6 / 0.2)
    assert a["max_budget_consumed"] == pytest.approx(1 / 3 / 0.1)
    assert c["max_budget_consumed"] == pytest.approx(1 / 3 / 0.2)
    # evaluated from minute 0 through minute 30 (the evaluator runs on for the 2-minute short window)
    assert a["evaluated_minutes"] == 31 and a["last_evaluated_at"] == at(31)
    assert a["compliance"] == pytest.approx(2500 / 3000)
    assert a["tickets"] == a["ticket_minutes"] == 0


def test_start_and_end_cut_the_period(constructed, tmp_path, capsys):
    rows, configs = constructed
    comparison, alerts = replay(
        tmp_path, "--input_files", str(rows), "--sli_config", configs[0], "--start", at(12), "--end", at(15)
    )
    # minutes 12-14 only, all failing: the windows start empty at 10:12, so both burn 10 from minute 12;
    # the alert is still open at 10:15 (its RESOLVED would come from minutes after --end)
    assert [(x["at"], x["state"]) for x in alerts] == [(at(13), "FIRING")]
    got = comparison["a/avail"]
    assert got["evaluated_minutes"] == 3 and got["first_evaluated_at"] == at(13) and got["last_evaluated_at"] == at(15)
    assert got["budget_consumed"] == pytest.approx(1 / 0.1)
    assert got["page_minutes"] == 3
    report = capsys.readouterr().out
    assert "SLI rows replayed: 3  outside --start/--end: 27  dead letters: 2" in report
    assert "invalid_json=1" in report and "missing_field=1" in report


def test_bad_lines_are_dead_letters_and_counts_reconcile(constructed, tmp_path):
    rows, configs = constructed
    with rows.open("ab") as f:
        f.write(b"\n".join(BAD_LINES) + b"\n")
    out = tmp_path / "out"
    result = slo_replay.run(["--input_files", str(rows), "--sli_config", configs[0], "--output_dir", str(out)])
    counts = metric_counts(result, "slo_replay")
    dead = read_rows(out, "dead_letters")
    assert counts["records_in"] == 32 + len(BAD_LINES) == counts["rows_parsed"] + len(dead)
    assert counts["rows_parsed"] == 30 and {d["step"] for d in dead} == {"ParseSliRows"}
    assert {"not json", json.dumps({"sli_id": "x"})} <= {d["payload_string"] for d in dead}
    assert {"invalid_json", "missing_field", "invalid_utf8", "too_deep", "out_of_range", "empty", "not_an_object"} == {
        d["reason"] for d in dead
    }


@pytest.mark.parametrize(
    "row, reason, words",
    [
        ({"window_start": at(0), "good": 1, "total": 1, "pane_index": 0}, "missing_field", "sli_id"),
        ({"sli_id": "s", "window_start": at(0), "total": 1, "pane_index": 0}, "missing_field", "good"),
        ({"sli_id": "s", "window_start": "noon", "good": 1, "total": 1, "pane_index": 0}, "bad_timestamp", "noon"),
        ({"sli_id": "s", "window_start": at(0), "good": 2, "total": 1, "pane_index": 0}, "bad_field", "more than"),
        ({"sli_id": "s", "window_start": at(0), "good": 1.5, "total": 2, "pane_index": 0}, "out_of_range", "whole"),
        ({"sli_id": "s", "window_start": at(0), "good": "1", "total": 2, "pane_index": 0}, "wrong_type", "good"),
        (
            {"sli_id": "s", "window_start": at(0), "window_seconds": 300, "good": 1, "total": 1, "pane_index": 0},
            "bad_field",
            "--window_seconds 60",
        ),
    ],
)
def test_rows_that_are_not_sli_rows_are_rejected_with_a_reason(row, reason, words):
    with pytest.raises(RecordError) as e:
        parse_sli_row(json.dumps(row))
    assert e.value.reason == reason and words in str(e.value)


def test_bigquery_rows_and_unmatched_rows_parse():
    # BigQuery gives datetimes and may give whole floats; a naive time is UTC
    row = {"sli_id": "s", "window_start": datetime(2026, 11, 22, 10, 0), "good": 3.0, "total": 4, "pane_index": 1}
    assert parse_sli_row(row) == {
        "sli_id": "s",
        "window_start": at(0),
        "good": 3,
        "total": 4,
        "pane_index": 1,
        "latency_sketch": None,
    }
    unmatched = {"sli_id": "w/_unmatched/requests", "sli_kind": "unmatched", "window_start": at(1), "total": 2}
    assert parse_sli_row({**unmatched, "good": None, "pane_index": 0})["good"] is None


def test_summary_of_merged_partial_accumulators_equals_one_accumulator():
    def status(minute, consumed, firing):
        return {"evaluated_at": at(minute), "budget_consumed": consumed, "alerts_firing": firing}

    inputs = [
        ("seed", 0.99),
        ("status", status(0, 0.5, [])),
        ("status", status(1, 2.0, ["page:60m/5m", "page:360m/30m"])),
        ("alert", {"severity": "page", "state": "FIRING"}),
        ("status", status(2, 1.5, ["ticket:4320m/360m"])),
        ("alert", {"severity": "page", "state": "RESOLVED"}),
    ]
    whole = ReplaySummary()
    for element in inputs:
        whole.add(*element)
    parts = [ReplaySummary(), ReplaySummary(), ReplaySummary()]
    for i, element in enumerate(inputs):
        parts[i % 3].add(*element)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    expected = {
        "config": "x",
        "slo": "s",
        "target": 0.99,
        "evaluated_minutes": 3,
        "first_evaluated_at": at(0),
        "last_evaluated_at": at(2),
        "pages": 1,
        "tickets": 0,
        "page_minutes": 1,
        "ticket_minutes": 1,
        "compliance": None,
        "budget_consumed": 1.5,
        "budget_remaining": None,
        "max_budget_consumed": 2.0,
        "latency_from_sketches": [],
    }
    assert whole.extract("x", "s") == merged.extract("x", "s") == expected
    whole.add("sketch", "web/all/latency_300ms")
    assert whole.extract("x", "s")["latency_from_sketches"] == ["web/all/latency_300ms"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--sli_config", "a=x.yaml,a=y.yaml"], "two configs are named 'a'"),
        (["--sli_config", "bad name=x.yaml"], "NAME=PATH"),
        (["--start", "yesterday"], "--start: 'yesterday'"),
        (["--start", "2026-11-22T10:00:00Z", "--end", "2026-11-22T09:00:00Z"], "--end 2026-11-22T09:00:00Z must be"),
        (["--sli_config", str(slo_replay.SLI_DIR / "store.yaml")], "defines no SLOs"),
        (["--input_files", "a.jsonl", "--input_table", "p:d.t"], "give only one input flag"),
    ],
)
def test_flag_errors_name_the_flag(argv, words):
    options = parse_pipeline_options(argv, "", slo_replay.OPTION_CLASSES)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        slo_replay.validate(options)


def test_series_of_merged_partial_accumulators_equals_one_accumulator_and_keeps_the_highest_rates():
    # 5,000 minutes: buckets of 4 minutes (2,500 of 2 would be over MAX_POINTS), each the highest burn rate
    # of its 4 minutes and the last minute's budget
    def status(minute):
        return {
            "evaluated_at": at(minute),
            "budget_consumed": minute / 10_000,
            "window_days": 28,
            "burn_rates": [{"window_minutes": 5, "burn_rate": (minute * 7919) % 101 / 10}],
        }

    rows = [status(m) for m in range(5000)]
    whole = ReplaySeries()
    for row in rows:
        whole.add(row)
    parts = [ReplaySeries(), ReplaySeries(), ReplaySeries()]
    for i, row in enumerate(rows):
        parts[(i * i) % 3].add(row)
    merged = parts[1].merge(parts[0]).merge(parts[2])
    got = whole.extract("c", "s")
    assert merged.extract("c", "s") == got
    assert got["stride_minutes"] == 4 and got["window_days"] == 28
    first_minute = int(T0.timestamp() // 60)
    expected, bucket = [], None
    for m in range(5000):
        if (first_minute + m) // 4 != bucket:
            bucket = (first_minute + m) // 4
            expected.append({"evaluated_at": at(m), "budget_consumed": 0, "burn_rates": {"5": -1}})
        point = expected[-1]
        point["evaluated_at"], point["budget_consumed"] = at(m), m / 10_000
        point["burn_rates"]["5"] = max(point["burn_rates"]["5"], (m * 7919) % 101 / 10)
    assert got["points"] == expected


NEW_THRESHOLDS = """
      - name: view-profile
        methods: [GET]
        path: /profile/{user}
        slis:
          - kind: availability
          - kind: latency
            threshold_ms: 500
          - kind: latency
            threshold_ms: 300
          - kind: latency
            threshold_ms: 350
"""
NEW_SLOS = """slos:
  - name: view-profile-latency-300
    sli: profile-web/view-profile/latency_300ms
    target: 0.95
  - name: view-profile-latency-350
    sli: profile-web/view-profile/latency_350ms
    target: 0.999
"""


@pytest.fixture(scope="module")
def new_thresholds(sli_run):
    """The sample config with view-profile's latency thresholds 300 and 350 ms, which the SLI run's rows lack,
    and an SLO on each (the old SLOs kept); and the raw requests of the SLI run's view-profile journey."""
    text = (slo_replay.SLI_DIR / "profile_service.yaml").read_text()
    old = "      - name: view-profile\n        methods: [GET]\n        path: /profile/{user}\n"
    assert old in text and "\nslos:\n" in text
    path = sli_run / "new_thresholds.yaml"
    path.write_text(text.replace(old, NEW_THRESHOLDS.lstrip("\n")).replace("\nslos:\n", "\n" + NEW_SLOS))
    pairs = list(generate_with_truth(28800))[15000:19000]  # the lines of the SLI run
    requests = [t for _, t in pairs if t is not None and profile_journey(t)[0] == "view-profile"]
    return f"new={path}", requests


def _band(requests, threshold):
    """(surely over, possibly over) the threshold: latency over T/(1-a), over T/(1+a)."""
    a = LATENCY_RELATIVE_ACCURACY
    lat = [r["latency_ms"] for r in requests]
    return sum(x > threshold / (1 - a) * (1 + 1e-12) for x in lat), sum(
        x > threshold / (1 + a) * (1 - 1e-12) for x in lat
    )


def test_new_latency_thresholds_per_minute_against_the_raw_requests(sli_run, new_thresholds):
    _, requests = new_thresholds
    rows = [parse_sli_row(json.dumps(r)) for r in read_rows(sli_run / "sli")]
    minutes = {}
    for row in rows:
        if row["sli_id"].startswith("profile-web/view-profile/"):
            minutes.setdefault(row["window_start"], []).append(row)
    slis = {
        ("profile-web", "view-profile"): (
            ("profile-web/view-profile/latency_300ms", 300.0),
            ("profile-web/view-profile/latency_350ms", 350.0),
        )
    }
    step = LatencyFromSketches("test", "new", slis)
    counted = {}
    for start, group in minutes.items():
        for out in step.process((("profile-web", "view-profile", start), group)):
            if not hasattr(out, "tag"):
                counted[(out["sli_id"].rsplit("_", 1)[1], start)] = out["total"] - out["good"], out["total"]
    by_minute = {}
    for r in requests:
        by_minute.setdefault(window_start_iso(r["t"]), []).append(r)
    assert {start for _, start in counted} == set(by_minute)
    near = 0
    for start, reqs in by_minute.items():
        for name, threshold in (("300ms", 300.0), ("350ms", 350.0)):
            bad, total = counted[(name, start)]
            surely, possibly = _band(reqs, threshold)
            assert total == len(reqs) and surely <= bad <= possibly, (start, name)
            if surely == possibly:
                assert bad == sum(r["latency_ms"] > threshold for r in reqs)
            near += surely != possibly
    assert near > 0  # some minutes of 300 ms have latencies within 1%: the band is exercised
    assert _band(requests, 350.0)[0] == _band(requests, 350.0)[1]  # none near 350 ms: exact everywhere


def test_replay_evaluates_new_latency_thresholds_from_sketches(sli_run, new_thresholds, tmp_path, capsys):
    config, requests = new_thresholds
    comparison, _ = replay(tmp_path, "--input_files", str(sli_run / "sli" / "sli_rows-*.jsonl"), "--sli_config", config)
    total = len(requests)
    bad_350 = sum(r["latency_ms"] > 350 for r in requests)
    assert 0 < bad_350 < total
    got = comparison["new/view-profile-latency-350"]
    assert got["budget_consumed"] == pytest.approx(bad_350 / total / 0.001)  # exact: nothing within 1% of 350
    assert got["latency_from_sketches"] == ["profile-web/view-profile/latency_350ms"]
    surely, possibly = _band(requests, 300.0)
    got = comparison["new/view-profile-latency-300"]
    assert surely / total / 0.05 - 1e-9 <= got["budget_consumed"] <= possibly / total / 0.05 + 1e-9
    assert comparison["new/view-profile-latency"]["latency_from_sketches"] == []  # 500 ms is in the rows
    out = capsys.readouterr().out
    assert "counted from their latency sketches (exact except requests within 1% of the threshold)" in out
    assert "new/view-profile-latency-350: profile-web/view-profile/latency_350ms" in out


def test_rows_without_sketches_replay_their_own_thresholds_and_reject_new_ones(sli_run, new_thresholds, tmp_path):
    config, _ = new_thresholds
    old_rows = tmp_path / "old.jsonl"
    with old_rows.open("w") as f:
        for row in read_rows(sli_run / "sli"):
            row.pop("latency_sketch")
            f.write(json.dumps(row) + "\n")
    out = tmp_path / "replay"
    comparison, alerts = replay(
        tmp_path, "--input_files", str(old_rows), "--sli_config", f"own={sli.SAMPLE_CONFIG},{config}"
    )
    expected = read_rows(sli_run / "sli", "alerts")
    assert sorted(json.dumps({**a, "config": "own"}, sort_keys=True) for a in expected) == sorted(
        json.dumps(a, sort_keys=True) for a in alerts if a["config"] == "own"
    )
    dead = read_rows(out, "dead_letters")
    assert {d["step"] for d in dead} == {"LatencyFromSketches[new]"} and {d["reason"] for d in dead} == {
        "missing_field"
    }
    view_minutes = {r["window_start"] for r in read_rows(sli_run / "sli") if "/view-profile/" in r["sli_id"]}
    assert len(dead) == len(view_minutes)
    assert "field 'latency_sketch' is missing" in dead[0]["error_message"]
    assert comparison["new/view-profile-latency-350"]["evaluated_minutes"] == 0


def test_replay_of_rows_read_back_from_bigquery(services, project, sli_run, new_thresholds, tmp_path):
    """The SLI rows through the BigQuery schema (emulator) and back as the client gives them (dicts,
    datetimes), replayed: the new thresholds as from the JSONL rows."""
    config, requests = new_thresholds
    client = bq_client(services, project)
    client.create_dataset("sre", exists_ok=True)
    table = bigquery.Table(f"{project}.sre.replay_sli_rows", schema=_schema(SLI_ROW_BQ_SCHEMA["fields"]))
    client.delete_table(table, not_found_ok=True)
    client.create_table(table)
    rows = [r for r in read_rows(sli_run / "sli") if "/view-profile/" in r["sli_id"]]
    assert client.insert_rows_json(table, rows, retry=None) == []
    stored = [dict(r) for r in client.list_rows(table)]
    assert len(stored) == len(rows) and isinstance(stored[0]["window_start"], datetime)
    assert sorted(r["latency_sketch"] for r in stored) == sorted(r["latency_sketch"] for r in rows)

    out = tmp_path / "replay"
    argv = ["--sli_config", config, "--output_dir", str(out), "--progress", "off", "--runner", "FnApiRunner"]
    options = parse_pipeline_options(argv, "", slo_replay.OPTION_CLASSES)
    with beam.Pipeline(options=options) as p:
        slo_replay.build(p, options, slo_replay.validate(options), source=beam.Create(stored))
    got = {r["slo"]: r for r in read_rows(out, "comparison")}["view-profile-latency-350"]
    assert got["budget_consumed"] == pytest.approx(sum(r["latency_ms"] > 350 for r in requests) / len(requests) / 0.001)
    assert got["latency_from_sketches"] == ["profile-web/view-profile/latency_350ms"]
