"""End to end on the emulators: Pub/Sub in, the streaming pipeline on the direct runner, BigQuery and
Bigtable out, dead letters to a Pub/Sub topic; then the SQL of docs/sli.md on the BigQuery emulator."""

import datetime
import json
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, bigtable, pubsub_v1

from pipelines import sli
from pipelines.samples.request_logs import MALFORMED, generate_with_truth
from tests.oracle import expected_rows

ROOT = Path(__file__).resolve().parent.parent


def bq_client(services, project):
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=services.env["BIGQUERY_EMULATOR_HOST"]),
    )


def latest_panes(rows):
    latest = {}
    for row in rows:
        key = (row["sli_id"], _iso_utc(row["window_start"]))
        if key not in latest or int(row["pane_index"]) > int(latest[key]["pane_index"]):
            latest[key] = row
    return latest


def _iso_utc(value):
    return value.astimezone(datetime.UTC).isoformat() if isinstance(value, datetime.datetime) else value


@pytest.fixture(scope="module")
def streamed(services, project):
    """Publishes 400 requests spread over the last 4 minutes plus malformed lines, runs the streaming
    pipeline until BigQuery holds the expected totals, and returns what the test needs."""
    now = time.time()
    start = datetime.datetime.fromtimestamp(now - 250, datetime.UTC)
    pairs = list(generate_with_truth(400, seconds=240, seed=11, malformed_every=100, start=start))
    truths = [t for _, t in pairs if t]
    expected = expected_rows(truths)

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead_topic = publisher.topic_path(project, "request-logs"), publisher.topic_path(project, "sli-dead-letters")
    sub, dead_sub = (subscriber.subscription_path(project, n) for n in ("request-logs-sli", "dead-letters-check"))
    for t in (topic, dead_topic):
        publisher.create_topic(name=t)
    subscriber.create_subscription(name=sub, topic=topic)
    subscriber.create_subscription(name=dead_sub, topic=dead_topic)

    bq = bq_client(services, project)
    bq.create_dataset("sre", exists_ok=True)

    options = PipelineOptions(
        [
            "--runner",
            "BundleBasedDirectRunner",
            "--project",
            project,
            "--input_subscription",
            sub,
            "--output_table",
            f"{project}:sre.sli_windows",
            "--bigtable_instance",
            "sre",
            "--bigtable_table",
            "sli_windows",
            "--dead_letter_topic",
            dead_topic,
        ]
    )
    config = sli.validate(options)
    pipeline = beam.Pipeline(options=options)
    sli.build(pipeline, options, config)
    result = pipeline.run()
    try:
        futures = [publisher.publish(topic, line.encode()) for line, _ in pairs]
        for f in futures:
            f.result(timeout=30)
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(5)
            try:
                rows = [dict(r) for r in bq.query("SELECT * FROM sre.sli_windows").result()]
            except Exception:  # noqa: BLE001 - the table appears with the first write
                continue
            latest = latest_panes(rows)
            if set(latest) == set(expected) and all(int(latest[k]["total"]) == expected[k]["total"] for k in expected):
                break
        else:
            pytest.fail(f"BigQuery did not reach the expected rows in time ({len(latest)} of {len(expected)} windows)")
        time.sleep(5)  # let the Bigtable and dead-letter writes of the same bundles land
    finally:
        result.cancel()
    dead = subscriber.pull(subscription=dead_sub, max_messages=100, timeout=10).received_messages
    return {"pairs": pairs, "expected": expected, "rows": rows, "dead": dead, "bq": bq, "day": start.date()}


def test_bigquery_rows_match_independent_computation(streamed):
    latest = latest_panes(streamed["rows"])
    expected = streamed["expected"]
    assert set(latest) == set(expected)
    for key, cell in expected.items():
        row = latest[key]
        assert int(row["total"]) == cell["total"], key
        if row["sli_kind"] != "unmatched":
            assert (int(row["good"]), int(row["bad"])) == (cell["good"], cell["bad"]), key
        assert row["latency_max_ms"] == pytest.approx(max(cell["latencies"]))


def test_counts_reconcile_and_dead_letters_carry_payloads(streamed):
    lines = [line for line, _ in streamed["pairs"]]
    bad_lines = [line for line in lines if line in MALFORMED]
    dead = [json.loads(m.message.data) for m in streamed["dead"]]
    assert sorted(d["payload_string"] for d in dead) == sorted(bad_lines)
    assert all(d["step"] == "ParseLogRecords" and d["reason"] for d in dead)
    latest = latest_panes(streamed["rows"])
    events = sum(int(r["total"]) for r in latest.values() if r["sli_kind"] in ("availability", "unmatched"))
    assert events + len(dead) == len(lines)


def test_bigtable_latest_cells_match(streamed, project):
    client = bigtable.Client(project=project, admin=True)
    table = client.instance("sre").table("sli_windows")
    expected = streamed["expected"]
    found, slo_rows = {}, {}
    for row in table.read_rows():
        if row.row_key.startswith(b"~slo#"):
            slo_rows[row.row_key.decode()] = {q.decode(): c[0].value.decode() for q, c in row.cells["sli"].items()}
            continue
        cells = {q.decode(): c[0].value.decode() for q, c in row.cells["sli"].items()}
        sli_id, _, start = row.row_key.decode().rpartition("#")
        assert cells["sli_id"] == sli_id
        found[(sli_id, _iso_utc(datetime.datetime.fromisoformat(cells["window_start"])))] = int(cells["total"])
    assert found == {k: v["total"] for k, v in expected.items()}
    # the SLOs of the sample config keep their latest status in one row each
    assert set(slo_rows) == {f"~slo#{slo.name}" for slo in sli.load_sli_config(sli.SAMPLE_CONFIG).slos}
    view = slo_rows["~slo#view-profile-availability"]
    assert view["status"] in ("OK", "ALERTING") and 0 < float(view["compliance"]) <= 1
    assert json.loads(view["burn_rates"])[0]["window_minutes"] == 5
    # a prefix scan returns one SLI's series, in time order
    some_sli = sorted(expected)[0][0]
    keys = [
        r.row_key.decode() for r in table.read_rows(start_key=f"{some_sli}#".encode(), end_key=f"{some_sli}$".encode())
    ]
    assert keys == sorted(keys) and len(keys) == sum(1 for k in expected if k[0] == some_sli)


def _query(streamed, name):
    sql = (ROOT / "sql" / name).read_text()
    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("day", "DATE", streamed["day"])]
    )
    return [dict(r) for r in streamed["bq"].query(sql, job_config=job_config).result()]


def _expected_for_day(streamed):
    day = streamed["day"].isoformat()
    return {k: v for k, v in streamed["expected"].items() if k[1].startswith(day)}


def test_readme_daily_report_query(streamed):
    expected = _expected_for_day(streamed)
    per_sli = {}
    for (sli_id, _), cell in expected.items():
        if sli_id.endswith(("/availability",)) or "/latency_" in sli_id:
            acc = per_sli.setdefault(sli_id, [0, 0, 0.0])
            acc[0] += cell["total"]
            acc[1] += cell["good"]
    rows = _query(streamed, "sli_daily_report.sql")
    got = {
        f"{r['service']}/{r['journey']}/{r['sli_name']}": (r["requests"], r["good"], r["good_fraction"]) for r in rows
    }
    assert set(got) == set(per_sli)
    for sli_id, (total, good, _) in per_sli.items():
        assert got[sli_id][:2] == (total, good)
        assert got[sli_id][2] == pytest.approx(good / total)


def test_readme_worst_minutes_query(streamed):
    expected = _expected_for_day(streamed)
    avail = [
        (cell["good"] / cell["total"], -cell["total"], start, sli_id)
        for (sli_id, start), cell in expected.items()
        if sli_id.endswith("/availability")
    ]
    want = sorted(avail)[:10]
    rows = _query(streamed, "sli_worst_minutes.sql")
    assert [(r["sli_id"], _iso_utc(r["window_start"])) for r in rows] == [(s, start) for _, _, start, s in want]
    assert [r["good_fraction"] for r in rows] == pytest.approx([w[0] for w in want])


def test_readme_shows_the_tested_queries():
    readme = (ROOT / "docs" / "sli.md").read_text()
    for name in ("sli_daily_report.sql", "sli_worst_minutes.sql"):
        assert (ROOT / "sql" / name).read_text().strip() in readme, name
