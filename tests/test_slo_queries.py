"""The SLO queries of docs/sli.md on the BigQuery emulator, over the status rows of the sample run,
checked against the same numbers worked out in Python from those rows."""

import datetime
from pathlib import Path

import pytest
from google.cloud import bigquery

from tests.test_sli_e2e import bq_client
from tests.test_sli_pipeline import read_rows
from tests.test_slo_pipeline import sample_run  # noqa: F401 - the module fixture
from transforms.slo.status import SLO_STATUS_BQ_SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def _schema(fields):
    return [
        bigquery.SchemaField(f["name"], f["type"], mode=f["mode"], fields=_schema(f.get("fields", []))) for f in fields
    ]


@pytest.fixture(scope="module")
def loaded(services, project, sample_run):  # noqa: F811
    status = read_rows(sample_run, "slo_status")
    client = bq_client(services, project)
    client.create_dataset("sre", exists_ok=True)
    table = bigquery.Table(f"{project}.sre.slo_status", schema=_schema(SLO_STATUS_BQ_SCHEMA["fields"]))
    client.delete_table(table, not_found_ok=True)
    client.create_table(table)
    for i in range(0, len(status), 500):
        errors = client.insert_rows_json(table, status[i : i + 500], retry=None)
        assert errors == []
    return client, status


def _query(client, name, params):
    sql = (ROOT / "sql" / name).read_text()
    return [dict(r) for r in client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params)).result()]


def test_daily_report(loaded):
    client, status = loaded
    day = [r for r in status if r["evaluated_at"].startswith("2026-11-22")]
    rows = _query(client, "slo_daily_report.sql", [bigquery.ScalarQueryParameter("day", "DATE", "2026-11-22")])
    assert [r["slo"] for r in rows] == sorted({r["slo"] for r in day})
    for row in rows:
        mine = [r for r in day if r["slo"] == row["slo"]]
        last = max(mine, key=lambda r: r["evaluated_at"])
        assert row["compliance"] == pytest.approx(last["compliance"])
        assert row["budget_remaining"] == pytest.approx(last["budget_remaining"])
        assert row["minutes_alerting"] == sum(r["status"] == "ALERTING" for r in mine)
        burns = [
            b["burn_rate"]
            for r in mine
            for b in r["burn_rates"]
            if b["window_minutes"] == 60 and b["burn_rate"] is not None
        ]
        assert row["max_burn_rate_1h"] == pytest.approx(max(burns))
    incident = next(r for r in rows if r["slo"] == "view-profile-availability")
    assert incident["minutes_alerting"] > 0 and incident["max_burn_rate_1h"] > 13.44


def test_budget_burndown(loaded):
    client, status = loaded
    since = datetime.datetime(2026, 11, 22, 12, tzinfo=datetime.UTC)
    until = datetime.datetime(2026, 11, 22, 18, tzinfo=datetime.UTC)
    rows = _query(
        client,
        "slo_budget_burndown.sql",
        [
            bigquery.ScalarQueryParameter("slo", "STRING", "view-profile-availability"),
            bigquery.ScalarQueryParameter("since", "TIMESTAMP", since),
            bigquery.ScalarQueryParameter("until", "TIMESTAMP", until),
        ],
    )
    expected = sorted(
        (r["evaluated_at"], r["budget_remaining"])
        for r in status
        if r["slo"] == "view-profile-availability"
        and r["evaluated_at"].endswith(":00:00+00:00")
        and since <= datetime.datetime.fromisoformat(r["evaluated_at"]) <= until
    )
    assert [(r["evaluated_at"].isoformat(), r["budget_remaining"]) for r in rows] == [
        (t, pytest.approx(b)) for t, b in expected
    ]
    assert len(rows) == 7
    # the incident at 14:00-14:20 burns budget: remaining drops between 14:00 and 15:00
    by_hour = {r["evaluated_at"].hour: r["budget_remaining"] for r in rows}
    assert by_hour[15] < by_hour[14]


def test_readme_shows_the_slo_queries():
    readme = (ROOT / "docs" / "sli.md").read_text()
    for name in ("slo_daily_report.sql", "slo_budget_burndown.sql"):
        assert (ROOT / "sql" / name).read_text().strip() in readme, name
