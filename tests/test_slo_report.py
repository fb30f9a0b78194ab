"""The SLO report page and the replay's page, opened in headless Chromium: the numbers and charts they show."""

import datetime
import html.parser
import json
import pathlib
import shutil
import subprocess
import tempfile

import PIL.Image
import plotly.graph_objects
import plotly.offline
import pytest

from pipelines import sli, slo_replay
from pipelines.reports import slo_report
from tests.test_sli_pipeline import read_rows
from tests.test_slo_pipeline import CONFIG, sample_run  # noqa: F401 - the module fixture
from tests.test_slo_queries import loaded  # noqa: F401 - the module fixture
from tests.test_slo_replay import at as replay_minute
from tests.test_slo_replay import constructed  # noqa: F401 - the fixture

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


def _chromium(*args):
    """Headless Chromium on args (its stdout); tests/test_tensorboard.py uses it too."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/bootstrap.sh installs it)"
    out = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def dump_dom(path, screenshot=None):
    """The page's DOM once loaded and its scripts have run; with screenshot, also a 1200x1600 PNG there."""
    shot = ["--window-size=1200,1600", f"--screenshot={screenshot}"] if screenshot else []
    return _chromium(*shot, "--dump-dom", f"file://{path}")


def colours(png):
    """The number of distinct colours in an image."""
    with PIL.Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def assert_one_library(path):
    """plotly.js is inlined once, however many charts the page has."""
    assert pathlib.Path(path).read_text().count(plotly.offline.get_plotlyjs()[:200]) == 1


class Charts(html.parser.HTMLParser):
    """Per section (keyed by its `key` attribute): the chart spec (parsed JSON, validated by plotly's
    Python classes), whether plotly.js drew the chart, and per drawn trace its number of bars."""

    def __init__(self, text, key):
        super().__init__()
        self.key, self.specs, self.drawn, self.traces = key, {}, {}, {}
        self._section, self._spec = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "section":
            self._section = attrs[self.key]
            self.traces[self._section] = []
        elif tag == "script" and "chart-spec" in classes:
            self._spec = ""
        elif tag == "div" and "js-plotly-plot" in classes:
            self.drawn[self._section] = True
        elif tag == "g" and "trace" in classes:
            self.traces[self._section].append(0)
        elif tag == "g" and "point" in classes and self.traces.get(self._section):
            self.traces[self._section][-1] += 1

    def handle_endtag(self, tag):
        if tag == "script" and self._spec is not None:
            spec = self.specs[self._section] = json.loads(self._spec)
            few = [{**t, **{k: t[k][:3] for k in ("x", "y", "customdata", "width") if k in t}} for t in spec["data"]]
            plotly.graph_objects.Figure({**spec, "data": few})  # raises on anything plotly.js would not know
            self._spec = None

    def handle_data(self, data):
        if self._spec is not None:
            self._spec += data


class Page(html.parser.HTMLParser):
    """Collects the SLO table's cells by row, the firing periods listed per section and the alert rows."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.firing, self.alert_rows = {}, {}, 0
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
            self.firing[self._section] = []
        elif tag == "li" and "data-rule" in attrs:
            self.firing[self._section].append(attrs["data-rule"])

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


def _utc(iso):
    return datetime.datetime.fromisoformat(iso).astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _check(text, status, alerts, drawn=True, thresholds=None):
    """The table, the firing periods and each SLO's chart: its points those of the status rows, the
    threshold lines `thresholds` ({SLO: {rule: threshold}}; default: those of the alerts), and drawn
    (`text` a page as Chromium has rendered it)."""
    page, charts = Page(text), Charts(text, "data-slo")
    by_slo = {}
    for row in sorted(status, key=lambda r: r["evaluated_at"]):
        by_slo.setdefault(row["slo"], []).append(row)
    assert set(page.rows) == set(by_slo) == set(charts.specs)
    for name, rows in by_slo.items():
        last = rows[-1]
        cells = page.rows[name]
        assert cells[3] == f"{last['compliance']:.4%}"
        assert cells[4] == f"{last['budget_remaining']:.1%}"
        assert int(cells[5]) == sum(r["status"] == "ALERTING" for r in rows)
        fired = sorted((a["at"], a["rule"]) for a in alerts if a["slo"] == name and a["state"] == "FIRING")
        assert page.firing[name] == [rule for _, rule in fired]

        spec = charts.specs[name]
        traces = {t["name"]: t for t in spec["data"]}
        if drawn:
            assert charts.drawn[name] and len(charts.traces[name]) == len(spec["data"])
        assert spec["layout"]["hovermode"] == "x unified"
        assert len(rows) < slo_report._MAX_POINTS  # so every row is a point
        budget = traces["budget remaining"]
        assert budget["x"] == [_utc(r["evaluated_at"]) for r in rows]
        assert budget["y"] == [r["budget_remaining"] for r in rows]
        low, high = spec["layout"]["yaxis"]["range"]  # the whole range, 0% and 100% included
        assert low < min(0, *budget["y"]) and high > max(1, *budget["y"])
        assert traces["SLI over 28 d"]["y"] == [r["compliance"] for r in rows]
        for window in (5, 30, 60, 360, 4320):
            rates = [next(b["burn_rate"] for b in r["burn_rates"] if b["window_minutes"] == window) for r in rows]
            assert traces[f"burn rate {window} min"]["y"] == rates
        lines = {(s["yref"], s["y0"]) for s in spec["layout"]["shapes"] if s["type"] == "line"}
        assert ("y", 0) in lines and ("y2", last["target"]) in lines
        expected = (
            {a["rule"]: a["threshold"] for a in alerts if a["slo"] == name and "threshold" in a}
            if thresholds is None
            else thresholds[name]
        )
        assert sorted(y for ref, y in lines if ref == "y3") == pytest.approx(sorted(expected.values()))
        labels = {a["text"] for a in spec["layout"]["annotations"] if a["yref"] == "y3"}
        assert labels == {f"{rule} threshold {value:.2f}" for rule, value in expected.items()}
        shaded = sorted(s["x0"] for s in spec["layout"]["shapes"] if s["type"] == "rect")
        assert shaded == sorted(_utc(at) for at, _ in fired)
    assert page.alert_rows == len(alerts)
    return charts


def _short_window_sli(windows, slo_name, evaluated_at):
    """Good/total of the SLI windows ending in the 5 minutes up to evaluated_at, the components' ratios
    weighted as the SLO says (those without data left out); windows: {(sli_id, window_end): row}."""
    (slo,) = [s for s in CONFIG.slos if s.name == slo_name]
    end = datetime.datetime.fromisoformat(evaluated_at)
    ends = [(end - datetime.timedelta(minutes=m)).isoformat() for m in range(5)]
    weighted = []  # (weight, ratio) of the components with data in the window
    for sli_id, weight in slo.slis():
        rows = [windows[(sli_id, e)] for e in ends if (sli_id, e) in windows]
        total = sum(r["total"] for r in rows)
        if total:
            weighted.append((weight, sum(r["good"] for r in rows) / total))
    return sum(w * r for w, r in weighted) / sum(w for w, _ in weighted) if weighted else None


def test_report_from_local_outputs(sample_run, tmp_path):  # noqa: F811
    output = tmp_path / "report.html"
    slo_report.main(["--input_dir", str(sample_run), "--output", str(output)])
    status, alerts = read_rows(sample_run, "slo_status"), read_rows(sample_run, "alerts")
    for alert in alerts:
        alert["rule"] = f"{alert['severity']}:{alert['long_window_minutes']}m/{alert['short_window_minutes']}m"
    text = dump_dom(output, screenshot=tmp_path / "page.png")
    charts = _check(text, status, alerts)
    assert Page(text).rows["view-profile-availability"][6] == "3"  # FIRING transitions of the sample day
    # the SLI over the shortest alert window, against the SLI rows themselves
    windows = {(r["sli_id"], r["window_end"]): r for r in read_rows(sample_run)}
    assert {r["window_seconds"] for r in windows.values()} == {60}
    for name in ("view-profile-availability", "profile-pages"):
        trace = next(t for t in charts.specs[name]["data"] if t["name"] == "SLI over 5 min")
        for at, value in zip(trace["x"], trace["y"], strict=True):
            expected = _short_window_sli(windows, name, at.replace(" ", "T") + "+00:00")
            assert value is None if expected is None else value == pytest.approx(expected)
        assert min(v for v in trace["y"] if v is not None) < 0.9  # the incident is in it
    assert_one_library(output)
    assert colours(tmp_path / "page.png") > 200  # charts in colour, not a blank or one-colour page


# The sample config's rules are the default policy; threshold = budget share * 28 days * 1440 / long window.
SAMPLE_THRESHOLDS = {"page:60m/5m": 0.02 * 28 * 1440 / 60, "page:360m/30m": 0.05 * 28 * 1440 / 360}
SAMPLE_THRESHOLDS["ticket:4320m/360m"] = 0.10 * 28 * 1440 / 4320


def test_report_from_bigquery(loaded, sample_run, project, tmp_path):  # noqa: F811
    """From the status table, with the --sli_config the rows were computed with: every rule's threshold
    line (by hand above; those of the rules that fired in the local run's alerts agree), drawn in Chromium."""
    _, status = loaded
    fired = {
        (a["severity"], a["long_window_minutes"], a["short_window_minutes"], a["threshold"])
        for a in read_rows(sample_run, "alerts")
    }
    assert fired and all(SAMPLE_THRESHOLDS[f"{s}:{lw}m/{sw}m"] == pytest.approx(t) for s, lw, sw, t in fired)
    output = tmp_path / "report.html"
    slo_report.main(
        [
            "--slo_table",
            f"{project}:sre.slo_status",
            "--project",
            project,
            "--sli_config",
            str(sli.SAMPLE_CONFIG),
            "--since",
            "2026-11-22T00:00:00+00:00",
            "--until",
            "2026-11-24T00:00:00+00:00",
            "--output",
            str(output),
        ]
    )
    # alert transitions rebuilt from the status rows' alerts_firing; the table holds no thresholds
    alerts, previous = [], {}
    for row in sorted(status, key=lambda r: (r["slo"], r["evaluated_at"])):
        now, before = set(row["alerts_firing"]), set(previous.get(row["slo"], []))
        for rule in now - before:
            alerts.append({"slo": row["slo"], "state": "FIRING", "at": row["evaluated_at"], "rule": rule})
        for rule in before - now:
            alerts.append({"slo": row["slo"], "state": "RESOLVED", "at": row["evaluated_at"], "rule": rule})
        previous[row["slo"]] = row["alerts_firing"]
    thresholds = {name: SAMPLE_THRESHOLDS for name in {r["slo"] for r in status}}
    _check(dump_dom(output), status, alerts, thresholds=thresholds)


def test_unreadable_sli_config_is_a_clear_error(project, tmp_path):
    missing = tmp_path / "nope.yaml"  # checked before the table is read
    with pytest.raises(SystemExit, match=f"--sli_config: cannot read {missing}"):
        slo_report.main(["--slo_table", f"{project}:sre.slo_status", "--sli_config", str(missing)])


def test_no_status_rows_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no SLO status rows in --input_dir"):
        slo_report.main(["--input_dir", str(tmp_path)])


def test_firing_periods_by_hand():
    rows = [
        {"evaluated_at": "t1", "alerts_firing": []},
        {"evaluated_at": "t2", "alerts_firing": ["page:60m/5m", "ticket:4320m/360m"]},
        {"evaluated_at": "t3", "alerts_firing": ["ticket:4320m/360m"]},
        {"evaluated_at": "t4", "alerts_firing": ["page:60m/5m", "ticket:4320m/360m"]},
    ]
    assert slo_report.firing_periods(rows) == [
        ("page:60m/5m", "t2", "t3"),
        ("ticket:4320m/360m", "t2", None),
        ("page:60m/5m", "t4", None),
    ]


def test_long_series_are_sampled_evenly_keeping_the_ends():
    rows = list(range(5 * slo_report._MAX_POINTS + 3))
    shown = slo_report._sample(rows)
    assert len(shown) == slo_report._MAX_POINTS and shown[0] == 0 and shown[-1] == rows[-1]
    assert {b - a for a, b in zip(shown[:-2], shown[1:-1], strict=True)} <= {5, 6}


def test_replay_page_compares_the_configs_side_by_side(constructed, tmp_path):  # noqa: F811
    """The replay of tests/test_slo_replay.py's constructed rows under configs a, b and c (page rule 10 min /
    2 min, threshold 0.025 * 1440 / 10 = 3.6): per-minute budget and burn rates worked out from the rows."""
    rows, configs = constructed
    page = tmp_path / "replay.html"
    out = tmp_path / "out"
    slo_replay.run(
        ["--input_files", str(rows), "--sli_config", ",".join(configs), "--output_dir", str(out)]
        + ["--progress", "off", "--report_html", str(page)]
    )
    comparison = read_rows(out, "comparison")
    text = dump_dom(page, screenshot=tmp_path / "page.png")
    cells = ReplayTable(text).rows
    assert set(cells) == {("avail", c) for c in "abc"}
    for row in comparison:
        got = cells[(row["slo"], row["config"])]
        assert got[3:7] == [str(row[k]) for k in ("pages", "tickets", "page_minutes", "ticket_minutes")]
        assert got[7] == f"{row['budget_consumed']:.1%}" and got[9] == str(row["evaluated_minutes"])

    bad = [100 if 10 <= m <= 14 else 0 for m in range(30)] + [0]  # minute 30: the evaluator runs on, no data
    total = [100] * 30 + [0]
    charts = Charts(text, "data-slo")
    spec = charts.specs["avail"]
    assert charts.drawn["avail"] and len(charts.traces["avail"]) == len(spec["data"])
    traces = {t["name"]: t for t in spec["data"]}
    minutes = [_utc(replay_minute(m + 1)) for m in range(31)]  # a minute is evaluated at its end
    for config, budget in (("a", 0.1), ("b", 0.1), ("c", 0.2)):
        consumed = traces[f"budget consumed · {config}"]
        assert consumed["x"] == minutes
        assert consumed["y"] == pytest.approx([sum(bad[: m + 1]) / sum(total[: m + 1]) / budget for m in range(31)])
        for window in (2, 10):
            expected = []
            for m in range(31):
                b, t = sum(bad[max(0, m - window + 1) : m + 1]), sum(total[max(0, m - window + 1) : m + 1])
                expected.append(b / t / budget if t else None)
            assert traces[f"burn rate {window} min · {config}"]["y"] == pytest.approx(expected), (config, window)
        assert traces[f"threshold page:10m/2m · {config}"]["y"] == pytest.approx([3.6, 3.6])
    assert traces["pages fired · a"]["x"] == [_utc(replay_minute(14))] and traces["pages fired · b"]["x"] == [
        _utc(replay_minute(16))
    ]
    assert "pages fired · c" not in traces
    assert spec["layout"]["yaxis2"]["type"] == "log"
    assert_one_library(page)
    assert colours(tmp_path / "page.png") > 200


class ReplayTable(html.parser.HTMLParser):
    """The replay page's comparison cells by (slo, config)."""

    def __init__(self, text):
        super().__init__()
        self.rows, self._row, self._cell = {}, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-config" in attrs:
            self._row = (attrs["data-slo"], attrs["data-config"])
            self.rows[self._row] = []
        elif tag == "td" and self._row:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[self._row].append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
