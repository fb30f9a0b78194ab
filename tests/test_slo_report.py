"""The SLO report page, opened in headless Chromium: the numbers and charts it shows."""

import html.parser
import shutil
import subprocess
import tempfile

import pytest

from pipelines.reports import slo_report
from tests.test_sli_pipeline import read_rows
from tests.test_slo_pipeline import sample_run  # noqa: F401 - the module fixture
from tests.test_slo_queries import loaded  # noqa: F401 - the module fixture

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def dump_dom(path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/bootstrap.sh installs it)"
    out = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", "--dump-dom", f"file://{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class Page(html.parser.HTMLParser):
    """Collects the SLO table's cells by row, the polylines per section and the alert rows."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.polylines, self.alert_rows = {}, {}, 0
        self._row = self._section = self._table = None
        self._in_body = False
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "tr" and "data-slo" in attrs:
            self._row = attrs["data-slo"]
            self.rows[self._row] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table == "alerts" and self._in_body:
            self.alert_rows += 1
        elif tag == "td" and self._row:
            self._cell = ""
        elif tag == "section":
            self._section = attrs.get("data-slo")
        elif tag == "polyline" and self._section:
            self.polylines[self._section] = attrs["points"].split()

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _check(page, status, alerts):
    by_slo = {}
    for row in status:
        by_slo.setdefault(row["slo"], []).append(row)
    assert set(page.rows) == set(by_slo)
    for name, rows in by_slo.items():
        last = max(rows, key=lambda r: r["evaluated_at"])
        cells = page.rows[name]
        assert cells[3] == f"{last['compliance']:.4%}"
        assert cells[4] == f"{last['budget_remaining']:.1%}"
        assert int(cells[5]) == sum(r["status"] == "ALERTING" for r in rows)
        assert len(page.polylines[name]) >= min(len(rows), 100)
    assert page.alert_rows == len(alerts)


def test_report_from_local_outputs(sample_run, tmp_path):  # noqa: F811
    output = tmp_path / "report.html"
    slo_report.main(["--input_dir", str(sample_run), "--output", str(output)])
    page = Page(dump_dom(output))
    status, alerts = read_rows(sample_run, "slo_status"), read_rows(sample_run, "alerts")
    _check(page, status, alerts)
    assert page.rows["view-profile-availability"][6] == "3"  # FIRING transitions of the sample day


def test_report_from_bigquery(loaded, project, tmp_path):  # noqa: F811
    _, status = loaded
    output = tmp_path / "report.html"
    slo_report.main(
        [
            "--slo_table",
            f"{project}:sre.slo_status",
            "--project",
            project,
            "--since",
            "2026-11-22T00:00:00+00:00",
            "--until",
            "2026-11-24T00:00:00+00:00",
            "--output",
            str(output),
        ]
    )
    page = Page(dump_dom(output))
    # alert transitions rebuilt from the status rows' alerts_firing
    transitions, previous = 0, {}
    for row in sorted(status, key=lambda r: (r["slo"], r["evaluated_at"])):
        transitions += len(set(row["alerts_firing"]) ^ set(previous.get(row["slo"], [])))
        previous[row["slo"]] = row["alerts_firing"]
    _check(page, status, [None] * transitions)


def test_no_status_rows_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no SLO status rows in --input_dir"):
        slo_report.main(["--input_dir", str(tmp_path)])
