"""SLO report: a self-contained HTML page (a table, and an error-budget burn-down chart per SLO) from the
SLI pipeline's outputs, local files or BigQuery.

    python -m pipelines.reports.slo_report                                 # from output/sli (the default run)
    python -m pipelines.reports.slo_report --slo_table P:sre.slo_status --project P \\
        --since 2026-11-01T00:00:00Z --until 2026-11-23T00:00:00Z --output report.html
"""

import argparse
import datetime
import html
import os
import sys

from apache_beam.io.filesystems import FileSystems

from transforms.io.files import read_jsonl

_CHART_W, _CHART_H, _PAD = 720, 180, 40
_MAX_POINTS = 600


def read_local(input_dir):
    """(status rows, alerts) from <input_dir>/slo_status-*.jsonl and alerts-*.jsonl."""
    return (
        read_jsonl(FileSystems.join(input_dir, "slo_status-*.jsonl")),
        read_jsonl(FileSystems.join(input_dir, "alerts-*.jsonl")),
    )


def read_bigquery(table, project, since, until):
    """Status rows from the --slo_table between since and until (alerts are derived from status changes
    of alerts_firing, as the table holds no separate alert rows)."""
    from google.cloud import bigquery

    client = bigquery.Client(project=project)
    sql = (
        f"SELECT slo, evaluated_at, status, target, window_days, compliance, budget_remaining, events, "
        f"alerts_firing FROM `{table.replace(':', '.')}` WHERE evaluated_at BETWEEN @since AND @until "
        f"ORDER BY slo, evaluated_at"
    )
    config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("since", "TIMESTAMP", since),
            bigquery.ScalarQueryParameter("until", "TIMESTAMP", until),
        ]
    )
    rows = []
    for r in client.query(sql, job_config=config).result():
        row = dict(r)
        row["evaluated_at"] = row["evaluated_at"].astimezone(datetime.UTC).isoformat()
        row["alerts_firing"] = list(row["alerts_firing"] or [])
        rows.append(row)
    alerts = []
    previous = {}
    for row in rows:
        before, now = set(previous.get(row["slo"], [])), set(row["alerts_firing"])
        for rule in sorted(now - before):
            alerts.append({"slo": row["slo"], "state": "FIRING", "at": row["evaluated_at"], "rule": rule})
        for rule in sorted(before - now):
            alerts.append({"slo": row["slo"], "state": "RESOLVED", "at": row["evaluated_at"], "rule": rule})
        previous[row["slo"]] = row["alerts_firing"]
    return rows, alerts


def _pct(value, digits=4):
    return "no data" if value is None else f"{value:.{digits}%}"


def _chart(points):
    """Inline SVG of budget remaining (fraction) over time, with the zero line."""
    if len(points) > _MAX_POINTS:
        step = len(points) / _MAX_POINTS
        points = [points[int(i * step)] for i in range(_MAX_POINTS)] + [points[-1]]
    times = [t for t, _ in points]
    values = [v for _, v in points]
    t0, t1 = min(times), max(times)
    lo, hi = min(values + [0.0]), max(values + [1.0])

    def x(t):
        return _PAD + (t - t0) / max(t1 - t0, 1) * (_CHART_W - 2 * _PAD)

    def y(v):
        return _CHART_H - _PAD / 2 - (v - lo) / max(hi - lo, 1e-9) * (_CHART_H - _PAD)

    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    start = datetime.datetime.fromtimestamp(t0, datetime.UTC).strftime("%Y-%m-%d %H:%M")
    end = datetime.datetime.fromtimestamp(t1, datetime.UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f'<svg class="burndown" width="{_CHART_W}" height="{_CHART_H}" role="img" '
        f'aria-label="error budget remaining from {start} to {end}">'
        f'<line class="zero" x1="{_PAD}" x2="{_CHART_W - _PAD}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>'
        f'<text x="4" y="{y(0) + 4:.1f}">0%</text><text x="4" y="{y(hi) + 10:.1f}">{hi:.0%}</text>'
        f'<polyline points="{line}"/>'
        f'<text x="{_PAD}" y="{_CHART_H - 2}">{start}</text>'
        f'<text x="{_CHART_W - _PAD}" y="{_CHART_H - 2}" text-anchor="end">{end} UTC</text></svg>'
    )


def _rule(alert):
    """The rule as in the status rows' alerts_firing, e.g. page:60m/5m."""
    if "rule" in alert:
        return alert["rule"]
    return f"{alert['severity']}:{alert['long_window_minutes']}m/{alert['short_window_minutes']}m"


def render(status, alerts, title="SLO report"):
    by_slo = {}
    for row in sorted(status, key=lambda r: r["evaluated_at"]):
        by_slo.setdefault(row["slo"], []).append(row)
    fired = {}
    for alert in alerts:
        if alert["state"] == "FIRING":
            fired[alert["slo"]] = fired.get(alert["slo"], 0) + 1
    table_rows, sections = [], []
    for name, rows in sorted(by_slo.items()):
        last = rows[-1]
        alerting = sum(r["status"] == "ALERTING" for r in rows)
        table_rows.append(
            f'<tr data-slo="{html.escape(name)}"><td>{html.escape(name)}</td><td>{last["target"]:.2%}</td>'
            f'<td>{last["window_days"]} d</td><td class="compliance">{_pct(last["compliance"])}</td>'
            f'<td class="budget">{_pct(last["budget_remaining"], 1)}</td><td>{alerting}</td>'
            f"<td>{fired.get(name, 0)}</td></tr>"
        )
        points = [
            (datetime.datetime.fromisoformat(r["evaluated_at"]).timestamp(), r["budget_remaining"])
            for r in rows
            if r["budget_remaining"] is not None
        ]
        chart = _chart(points) if points else "<p>no data</p>"
        sections.append(
            f'<section data-slo="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
            f"<p>Error budget remaining, {html.escape(rows[0]['evaluated_at'])} to "
            f"{html.escape(last['evaluated_at'])}</p>{chart}</section>"
        )
    alert_rows = "".join(
        f"<tr><td>{html.escape(a['at'])}</td><td>{html.escape(a['slo'])}</td><td>{a['state']}</td>"
        f"<td>{html.escape(_rule(a))}</td></tr>"
        for a in sorted(alerts, key=lambda a: (a["at"], a["slo"]))
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
svg.burndown polyline {{ fill: none; stroke: #1a73e8; stroke-width: 2; }}
svg.burndown line.zero {{ stroke: #d93025; stroke-dasharray: 4 3; }}
svg.burndown text {{ font-size: 11px; fill: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table id="slos"><thead><tr><th>SLO</th><th>target</th><th>window</th><th>compliance</th>
<th>budget remaining</th><th>minutes alerting</th><th>alerts fired</th></tr></thead>
<tbody>{"".join(table_rows)}</tbody></table>
{"".join(sections)}
<h2>Alerts</h2>
<table id="alerts"><thead><tr><th>at</th><th>SLO</th><th>state</th><th>rule</th></tr></thead>
<tbody>{alert_rows}</tbody></table>
</body></html>
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input_dir",
        type=str,
        default=os.path.join("output", "sli"),
        help="Directory (local or gs://) with the pipeline's slo_status-*.jsonl and "
        "alerts-*.jsonl. Default: output/sli.",
    )
    parser.add_argument(
        "--slo_table",
        type=str,
        default=None,
        help="Read status rows from this BigQuery table PROJECT:DATASET.TABLE instead.",
    )
    parser.add_argument("--project", type=str, default=None, help="Project to run the BigQuery query in.")
    parser.add_argument(
        "--since",
        type=str,
        default=None,
        help="With --slo_table: start time (RFC 3339). Default: 7 days before --until.",
    )
    parser.add_argument("--until", type=str, default=None, help="With --slo_table: end time (RFC 3339). Default: now.")
    parser.add_argument(
        "--output",
        type=str,
        default=None,
        help="HTML file to write. Default: slo_report.html in --input_dir (or here).",
    )
    args = parser.parse_args(argv)
    if args.slo_table:
        until = datetime.datetime.fromisoformat(args.until) if args.until else datetime.datetime.now(datetime.UTC)
        since = datetime.datetime.fromisoformat(args.since) if args.since else until - datetime.timedelta(days=7)
        status, alerts = read_bigquery(args.slo_table, args.project, since, until)
        output = args.output or "slo_report.html"
    else:
        status, alerts = read_local(args.input_dir)
        output = args.output or FileSystems.join(args.input_dir, "slo_report.html")
    if not status:
        source = f"--slo_table {args.slo_table}" if args.slo_table else f"--input_dir {args.input_dir}"
        raise SystemExit(f"error: no SLO status rows in {source}; run python -m pipelines.sli with SLOs first")
    with FileSystems.create(output) as f:
        f.write(render(status, alerts).encode("utf-8"))
    print(
        f"wrote {output}: {len({r['slo'] for r in status})} SLOs, {len(status)} status rows, "
        f"{len(alerts)} alert transitions"
    )
    return output


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
