"""Pipelines' own SLIs (transforms/slo/health.py): the per-record health step on arbitrary input, many
events at once against one by one, the health rows of a window-features stream with a stall (counts worked
out by hand), the sample pipeline_slos.yaml firing its burn-rate alerts at the minutes the budget says, the
flags, and the SQL of docs/pipeline_slos.md on the BigQuery emulator."""

import datetime
import importlib
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from google.cloud import bigquery
from hypothesis import given
from hypothesis import strategies as st

from pipelines import sli, window_features
from tests.collect import AppendJsonLines
from tests.test_sli_e2e import bq_client
from tests.test_slo_queries import _schema
from transforms.core.config import ConfigError
from transforms.sli.config import parse_sli_config
from transforms.sli.rows import SLI_ROW_BQ_SCHEMA
from transforms.sli.stats import JourneyWindowStats
from transforms.slo.health import PipelineHealth, add_health_events, health_event
from transforms.slo.status import ALERTS_TAG, ComputeSloStatus
from transforms.window_features.aggregate import ComputeWindowFeatures
from transforms.window_features.spec import WindowFeatureSpec

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "pipelines" / "samples" / "pipeline_slos" / "pipeline_slos.yaml"
T0 = 1795341600  # 2026-11-22T10:00:00Z, a minute boundary
SPEC = WindowFeatureSpec.model_validate(
    {
        "entity_field": "card_id",
        "time_field": "event_time",
        "windows": [{"name": "1m", "size": "1m"}],
        "aggregations": [{"field": "amount", "aggregates": ["count"]}],
    }
)


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


# -- the per-record step ---------------------------------------------------------------------------------------
ELEMENTS = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.integers(), max_size=5),
)
BEAM_SECONDS = st.floats(min_value=-9.2e12, max_value=9.2e12, allow_nan=False)  # Beam's timestamp range


@given(ELEMENTS, BEAM_SECONDS, st.floats(min_value=0, max_value=4e9), st.booleans())
def test_every_element_is_one_health_value(element, event_seconds, now, dead_letter):
    key, (lag_ms, events, (stale, is_dead_letter)) = health_event(
        "p", 120_000, element, event_seconds, now, dead_letter
    )
    service, journey, minute = key
    assert (service, journey) == ("pipelines", "p")
    assert minute % 60 == 0 and minute <= now < minute + 60
    assert lag_ms == pytest.approx(max(now - event_seconds, 0) * 1000)
    assert stale == (lag_ms > 120_000) and is_dead_letter == dead_letter
    assert events == (max(len(element), 1) if isinstance(element, list) else 1)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False), st.integers(1, 50), st.booleans(), st.booleans())
def test_many_events_at_once_give_what_they_give_one_by_one(lag_ms, events, stale, dead):
    at_once = add_health_events(JourneyWindowStats(), lag_ms, events, (stale, dead))
    one_by_one = JourneyWindowStats()
    for _ in range(events):
        add_health_events(one_by_one, lag_ms, 1, (stale, dead))
    assert (
        (at_once.count, at_once.bad) == (one_by_one.count, one_by_one.bad) == (events, [events * stale, events * dead])
    )
    assert at_once.latency_max_ms == one_by_one.latency_max_ms == lag_ms
    assert at_once.latency_sum_ms == pytest.approx(one_by_one.latency_sum_ms)
    assert at_once.sketch._store.bins == one_by_one.sketch._store.bins
    assert at_once.sketch._zero_count == one_by_one.sketch._zero_count


# -- a window-features stream with a stall ----------------------------------------------------------------------
class StallClock:
    """Processing time of an element of event time t: t + 30 s, except that what falls in [T0+240, T0+540)
    leaves at T0+570: the pipeline stalled for five minutes, then caught up."""

    def __call__(self, t):
        return T0 + 570 if T0 + 240 <= t < T0 + 540 else t + 30


def _stream(batches=True):
    """One card event a minute for ten minutes (a 1m window row each, stamped at the window's end), and an
    event without card_id (a dead letter, stamped at its event time) at T0+70 and T0+130; in batches of
    one (as ComputeWindowFeatures takes them) or as records (as window_features.build does)."""

    def event(record, t):
        return TimestampedValue([record] if batches else record, t)

    stream = TestStream().advance_watermark_to(T0)
    for i in range(10):
        t = T0 + 60 * i + 10
        stream = stream.add_elements([event({"card_id": "c", "event_time": t, "amount": 1.0}, t)])
        if i < 2:
            stream = stream.add_elements([event({"event_time": t + 60, "amount": 1.0}, t + 60)])
        stream = stream.advance_watermark_to(T0 + 60 * (i + 1))
    return stream.advance_watermark_to_infinity()


# By hand, with the stall clock (freshness threshold 120 s). Row i (window [T0+60i, T0+60i+60)) has event time
# T0+60(i+1) (less 1 us): rows 0-3 and 9 leave 30 s later, in minute T0+60(i+1); rows 4-8 (event times
# T0+300..T0+540) leave at T0+570, lags 270, 210, 150, 90 and 30 s: three stale. The dead letters leave at
# T0+100 and T0+160. Minutes T0+300..T0+480 have nothing.
#           minute start: (events, stale, dead letters, max lag s)
EXPECTED = {
    T0 + 60: (2, 0, 1, 30),
    T0 + 120: (2, 0, 1, 30),
    T0 + 180: (1, 0, 0, 30),
    T0 + 240: (1, 0, 0, 30),
    T0 + 540: (5, 3, 0, 270),
    T0 + 600: (1, 0, 0, 30),
}


@pytest.fixture(scope="module")
def health_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("health") / "rows.jsonl"
    with beam.Pipeline(options=PipelineOptions(runner="BundleBasedDirectRunner", streaming=True)) as p:
        features = p | _stream() | ComputeWindowFeatures(SPEC, "window_features")
        rows = features | PipelineHealth("window_features", freshness_seconds=120, clock=StallClock())
        rows | beam.ParDo(AppendJsonLines(path))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_health_rows_count_what_left_in_each_minute(health_rows):
    by_sli = {}
    for row in health_rows:
        assert (row["pane_timing"], row["pane_index"], row["window_seconds"]) == ("ON_TIME", 0, 60)
        minute = datetime.datetime.fromisoformat(row["window_start"]).timestamp()
        by_sli[(row["sli_id"], minute)] = row
    freshness = {m: r for (sli, m), r in by_sli.items() if sli == "pipelines/window_features/freshness"}
    dead = {m: r for (sli, m), r in by_sli.items() if sli == "pipelines/window_features/dead_letters"}
    assert len(health_rows) == 2 * len(EXPECTED) and freshness.keys() == dead.keys() == EXPECTED.keys()
    for minute, (events, stale, dead_letters, max_lag_s) in EXPECTED.items():
        row = freshness[minute]
        assert (row["sli_kind"], row["threshold_ms"]) == ("latency", 120_000)
        assert (row["total"], row["good"], row["bad"]) == (events, events - stale, stale)
        assert row["latency_max_ms"] == pytest.approx(max_lag_s * 1000, abs=1)
        row = dead[minute]
        assert (row["sli_kind"], row["total"], row["good"], row["bad"]) == (
            "error_rate",
            events,
            events - dead_letters,
            dead_letters,
        )
    assert freshness[T0 + 540]["latency_p50_ms"] == pytest.approx(150_000, rel=0.01)  # lags 30..270: median 150


# The sample config over those rows, by hand (budget 0.001 of minutes for freshness, 0.01 of records for dead
# letters; 28-day thresholds: 60m/5m 0.02*40320/60 = 13.44, 6h/30m 0.05*40320/360 = 5.6, 3d/6h 0.1*40320/4320
# = 0.933; min_events 0). Minute k is T0+60k.
# Freshness: minutes 1-4 good, 5-8 without rows (bad), 9 bad (2 of 5 fresh < 99%), 10 good. At minute 5 every
# window holds 4 good minutes of 5: burn (1 - 4/5) / 0.001 = 200 over every threshold: all three rules fire;
# then no window recovers (at minute 10: 5 of 10 good over the long ones, 1 of 5 over 5 m). Nothing resolves.
# Dead letters: (records, dead) per minute 1: (2, 1), 2: (2, 1), 3: (1, 0), 4: (1, 0), 9: (5, 0), 10: (1, 0).
# Minute 1: 1/2 over every window, burn 50: all fire. Each rule resolves when its short window no longer holds
# minute 2 (the last dead letter), evaluation going on after the data while alerts fire: 60m/5m at minute 7
# (minutes 3-7 hold 0 of 2; the long window 2 of 6: burn 33.3), 6h/30m at minute 32, 3d/6h at minute 362
# (their long windows: 2 of 12, burn 16.7).
EXPECTED_ALERTS = [
    ("window-features-dead-letters", "FIRING", 60, 5, T0 + 120, 50.0),
    ("window-features-dead-letters", "FIRING", 360, 30, T0 + 120, 50.0),
    ("window-features-dead-letters", "FIRING", 4320, 360, T0 + 120, 50.0),
    ("window-features-dead-letters", "RESOLVED", 60, 5, T0 + 480, 2 / 6 / 0.01),
    ("window-features-dead-letters", "RESOLVED", 360, 30, T0 + 33 * 60, 2 / 12 / 0.01),
    ("window-features-dead-letters", "RESOLVED", 4320, 360, T0 + 363 * 60, 2 / 12 / 0.01),
    ("window-features-freshness", "FIRING", 60, 5, T0 + 360, 200.0),
    ("window-features-freshness", "FIRING", 360, 30, T0 + 360, 200.0),
    ("window-features-freshness", "FIRING", 4320, 360, T0 + 360, 200.0),
]


def test_sample_config_alerts_when_the_budget_says(health_rows, tmp_path):
    config = parse_sli_config(SAMPLE_CONFIG.read_text(), str(SAMPLE_CONFIG))
    status_path, alerts_path = tmp_path / "status.jsonl", tmp_path / "alerts.jsonl"
    with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        slos = p | beam.Create(health_rows) | ComputeSloStatus(config, True, "pipeline_slos")
        slos.status | "Status" >> beam.ParDo(AppendJsonLines(status_path))
        slos[ALERTS_TAG] | "Alerts" >> beam.ParDo(AppendJsonLines(alerts_path))
    alerts = sorted(
        (a["slo"], a["state"], a["long_window_minutes"], a["short_window_minutes"], a["at"], a["burn_rate_long"])
        for a in map(json.loads, alerts_path.read_text().splitlines())
    )
    assert alerts == sorted((s, st_, lw, sw, _iso(at), pytest.approx(b)) for s, st_, lw, sw, at, b in EXPECTED_ALERTS)
    status = [json.loads(line) for line in status_path.read_text().splitlines()]
    freshness = {r["evaluated_at"]: r for r in status if r["slo"] == "window-features-freshness"}
    assert sorted(freshness) == [_iso(T0 + 60 * (k + 1)) for k in range(1, 11)]  # minutes 1-10, stall included
    last = freshness[_iso(T0 + 660)]
    assert last["compliance"] == pytest.approx(0.5)  # 5 good minutes of 10
    assert last["budget_consumed"] == pytest.approx(0.5 / 0.001)
    assert last["events"] == 12 and last["status"] == "ALERTING"


def test_streaming_evaluation_pages_when_the_rows_stop(health_rows, tmp_path):
    """pipelines.sli --sli_rows_subscription, the job that evaluates other pipelines' health rows: the rows
    arrive as messages published 5 s after their minute ends (each minute is evaluated 120 s after its end,
    --sli_rows_delay_seconds); the watermark moving on without rows makes the stalled minutes bad. One rule, 10m/2m at budget share 0.01: threshold 0.01 * 40320 / 10 = 40.32.
    Freshness: at minute 5 the 10 m window holds 4 good minutes of 5 (burn 200), the 2 m one 1 of 2: fires.
    Dead letters: minute 1 burns 50 over both: fires; minute 3's long window holds 2 of 5 (burn 40, not over
    40.32): resolves."""
    config = tmp_path / "slos.yaml"
    rule = "  rules:\n    - {severity: page, long_window_minutes: 10, short_window_minutes: 2, budget_share: 0.01}\n"
    config.write_text(SAMPLE_CONFIG.read_text() + rule)
    out = tmp_path / "out"
    argv = ["--sli_rows_subscription", "projects/p/subscriptions/health", "--sli_config", str(config)]
    options = PipelineOptions([*argv, "--output_dir", str(out)], runner="BundleBasedDirectRunner")
    settings = sli.validate(options)
    stream = TestStream().advance_watermark_to(T0)
    for minute in sorted(EXPECTED):
        published = minute + 65
        rows = [r for r in health_rows if datetime.datetime.fromisoformat(r["window_start"]).timestamp() == minute]
        stream = stream.advance_watermark_to(published).add_elements(
            [TimestampedValue(json.dumps(r), published) for r in rows]
        )
    stream = stream.advance_watermark_to(T0 + 1800).advance_watermark_to_infinity()
    with beam.Pipeline(options=options) as p:
        built = sli.build(p, options, settings, source=stream)
        built.alerts | beam.ParDo(AppendJsonLines(tmp_path / "alerts.jsonl"))
    alerts = sorted(
        (a["slo"], a["state"], a["at"], a["burn_rate_long"])
        for a in map(json.loads, (tmp_path / "alerts.jsonl").read_text().splitlines())
    )
    assert alerts == [
        ("window-features-dead-letters", "FIRING", _iso(T0 + 120), pytest.approx(50.0)),
        ("window-features-dead-letters", "RESOLVED", _iso(T0 + 240), pytest.approx(40.0)),
        ("window-features-freshness", "FIRING", _iso(T0 + 360), pytest.approx(200.0)),
    ]


def test_minutes_without_data_need_timeslices():
    text = SAMPLE_CONFIG.read_text().replace("    method: timeslices\n    timeslice_threshold: 0.99\n", "", 1)
    with pytest.raises(ConfigError, match=r"slos\[0\].*minutes_without_data: bad.*method: timeslices"):
        parse_sli_config(text, "pipeline_slos.yaml")


# -- the pipelines' wiring and flags ------------------------------------------------------------------------------
def test_window_features_writes_health_rows_that_reconcile(tmp_path):
    """Wall clock: every feature row and dead letter is counted once, whatever minute it left in."""
    health_dir, out = tmp_path / "health", tmp_path / "out"
    options = PipelineOptions(
        ["--health_output_dir", str(health_dir), "--output_dir", str(out), "--streaming"],
        runner="BundleBasedDirectRunner",
    )
    settings = window_features.Settings(SPEC, None)
    with beam.Pipeline(options=options) as p:
        built = window_features.build(p, options, settings, source=_stream(batches=False))
        built.row_batches | beam.ParDo(AppendJsonLines(tmp_path / "rows.jsonl"))
    rows = [json.loads(line) for path in health_dir.glob("health_rows*") for line in path.read_text().splitlines()]
    freshness = [r for r in rows if r["sli_name"] == "freshness"]
    dead = [r for r in rows if r["sli_name"] == "dead_letters"]
    feature_rows = sum(len(json.loads(line)) for line in (tmp_path / "rows.jsonl").read_text().splitlines())
    assert feature_rows == 10
    assert sum(r["total"] for r in freshness) == sum(r["total"] for r in dead) == 12
    assert sum(r["bad"] for r in dead) == 2
    # the feature rows' event times are of 2026-11-22, long before the wall clock; the dead letters carry the
    # timestamp of the batch their record came in (BatchRecords in the global window), not an event time
    assert sum(r["bad"] for r in freshness) == 10


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--health_table", "p:d.t"], "--health_table: health rows describe a streaming job"),
        (["--health_topic", "projects/p/topics/t", "--health_freshness_seconds", "0"], "--health_freshness_seconds"),
    ],
)
def test_bad_health_flags_fail_naming_the_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        window_features.run(argv)
    assert str(exc.value).startswith("error: ") and words in str(exc.value)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--input_topic", "projects/p/topics/t"], "give --sli_rows_subscription or --input_topic, not both"),
        (["--sli_rows_delay_seconds", "-1"], "--sli_rows_delay_seconds must be >= 0"),
        (["--udf_path", str(ROOT / "udf/mask_pii.py")], "--udf_path reshapes log records"),
        (["--sli_config", str(ROOT / "pipelines/samples/sli/store.yaml")], "add a 'slos' section"),
    ],
)
def test_bad_sli_rows_flags_fail_naming_the_flag(argv, words):
    with pytest.raises(SystemExit) as exc:
        sli.run(["--sli_rows_subscription", "projects/p/subscriptions/health", *argv])
    assert str(exc.value).startswith("error: ") and words in str(exc.value)


@pytest.mark.parametrize("module", ["sli", "window_features", "skew", "image_ingest", "score"])
def test_every_streaming_pipeline_has_the_health_flags(module, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"pipelines.{module}").run(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--health_topic", "--health_table", "--health_output_dir", "--health_freshness_seconds"):
        assert flag in text, flag


# -- the SQL of docs/pipeline_slos.md ------------------------------------------------------------------------------
def test_health_query_on_bigquery(services, project, health_rows):
    client = bq_client(services, project)
    client.create_dataset("ops", exists_ok=True)
    table = bigquery.Table(f"{project}.ops.pipeline_health", schema=_schema(SLI_ROW_BQ_SCHEMA["fields"]))
    client.delete_table(table, not_found_ok=True)
    client.create_table(table)
    assert client.insert_rows_json(table, health_rows, retry=None) == []
    sql = (ROOT / "sql" / "pipeline_health_minutes.sql").read_text()
    params = [
        bigquery.ScalarQueryParameter("pipeline", "STRING", "window_features"),
        bigquery.ScalarQueryParameter("start", "TIMESTAMP", _iso(T0 + 60)),
        bigquery.ScalarQueryParameter("end", "TIMESTAMP", _iso(T0 + 660)),
    ]
    got = [dict(r) for r in client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params)).result()]
    assert [r["minute"].timestamp() for r in got] == [T0 + 60 * k for k in range(1, 11)]
    for row in got:
        minute = row["minute"].timestamp()
        events, stale, dead_letters, max_lag_s = EXPECTED.get(minute, (0, 0, 0, None))
        assert row["records"] == events and row["stale"] == stale and row["dead_letters"] == dead_letters
        assert row["has_rows"] == (minute in EXPECTED)
        assert row["max_lag_s"] == (None if max_lag_s is None else pytest.approx(max_lag_s, abs=0.01))


def test_manual_shows_the_tested_query_and_every_flag():
    manual = (ROOT / "docs" / "pipeline_slos.md").read_text()
    assert (ROOT / "sql" / "pipeline_health_minutes.sql").read_text().strip() in manual
    for flag in ("health_topic", "health_table", "health_output_dir", "health_freshness_seconds"):
        assert f"`--{flag}" in manual, flag
    for flag in ("sli_rows_subscription", "sli_rows_delay_seconds"):
        assert f"--{flag}" in manual, flag
