"""SLO report: a self-contained HTML page from the SLI pipeline's outputs, local files or BigQuery: a table,
then per SLO interactive charts of the error-budget burn-down, the SLI against the target and the burn
rates against the alert thresholds with firing periods shaded (plotly.js inlined: works offline).

    python -m pipelines.reports.slo_report                                 # from output/sli (the default run)
    python -m pipelines.reports.slo_report --slo_table P:sre.slo_status --project P \\
        --sli_config gs://B/config/profile_service.yaml \\
        --since 2026-11-01T00:00:00Z --until 2026-11-23T00:00:00Z --output report.html

The burn-rate threshold lines come from the alerts (local outputs: those of the rules that fired) or, with
--sli_config (the config the SLI pipeline ran with), from every alert rule of it: status rows read from
BigQuery carry no thresholds.
"""

import argparse
import datetime
import html
import os
import sys

from apache_beam.io.filesystems import FileSystems

from pipelines.reports.charts import chart, draw, library
from transforms.core.config import ConfigError
from transforms.io.files import read_jsonl
from transforms.sli.config import load_sli_config

_MAX_POINTS = 2000  # per chart line; longer series are sampled evenly


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
        f"SELECT slo, evaluated_at, status, target, window_days, compliance, error_budget, budget_remaining, "
        f"events, burn_rates, alerts_firing FROM `{table.replace(':', '.')}` "
        f"WHERE evaluated_at BETWEEN @since AND @until ORDER BY slo, evaluated_at"
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


def _utc(iso):
    """RFC 3339 -> "YYYY-MM-DD HH:MM:SS" in UTC, the form plotly.js reads as a date."""
    return datetime.datetime.fromisoformat(iso).astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sample(rows):
    """At most _MAX_POINTS rows, evenly spaced, the last one kept."""
    if len(rows) <= _MAX_POINTS:
        return rows
    step = len(rows) / _MAX_POINTS
    return [rows[int(i * step)] for i in range(_MAX_POINTS - 1)] + [rows[-1]]


def firing_periods(rows):
    """[(rule, first firing evaluated_at, first clear evaluated_at or None while still firing)] from
    the rows' alerts_firing, rows in time order."""
    periods, open_since = [], {}
    for row in rows:
        now = set(row["alerts_firing"] or [])
        for rule in sorted(now - set(open_since)):
            open_since[rule] = row["evaluated_at"]
        for rule in sorted(set(open_since) - now):
            periods.append((rule, open_since.pop(rule), row["evaluated_at"]))
    periods += [(rule, since, None) for rule, since in sorted(open_since.items())]
    return sorted(periods, key=lambda p: (p[1], p[0]))


def _line(y, yref, colour, dash):
    """A horizontal line across the plot at y on axis yref."""
    return {
        "type": "line",
        "xref": "x domain",
        "x0": 0,
        "x1": 1,
        "yref": yref,
        "y0": y,
        "y1": y,
        "line": {"color": colour, "dash": dash, "width": 1.5},
    }


def _label(y, yref, text):
    return {
        "xref": "x domain",
        "x": 1,
        "yref": yref,
        "y": y,
        "text": text,
        "showarrow": False,
        "xanchor": "right",
        "yanchor": "bottom",
        "font": {"size": 11},
    }


def figure(rows, thresholds):
    """The plotly figure of one SLO's rows (time order), three panels on one time axis: the budget
    burn-down (axis from its lowest value or 0 to its highest or 100%), the SLI against the target, and
    the burn rate of each alert window against the thresholds {rule: threshold} known from alerts;
    alert firing periods shaded on all three."""
    last = rows[-1]
    shown = _sample(rows)
    x = [_utc(r["evaluated_at"]) for r in shown]
    windows = [b["window_minutes"] for b in last["burn_rates"]]
    burn = {w: [{b["window_minutes"]: b["burn_rate"] for b in r["burn_rates"]}.get(w) for r in shown] for w in windows}

    def line(y, name, axis, hover, **style):
        return {
            "type": "scatter",
            "mode": "lines",
            "x": x,
            "y": y,
            "name": name,
            "xaxis": "x",
            "yaxis": axis,
            "hovertemplate": hover,
            **style,
        }

    budget = [r["budget_remaining"] for r in shown]
    traces = [line(budget, "budget remaining", "y", "%{y:.1%}", line={"color": "#1a73e8", "width": 2})]
    traces.append(line([r["compliance"] for r in shown], f"SLI over {last['window_days']} d", "y2", "%{y:.4%}"))
    if windows:  # the SLI over the shortest alert window shows an incident as it happens
        sli = [None if b is None else 1 - b * r["error_budget"] for b, r in zip(burn[windows[0]], shown, strict=True)]
        traces.append(line(sli, f"SLI over {windows[0]} min", "y2", "%{y:.4%}"))
    traces += [line(burn[w], f"burn rate {w} min", "y3", "%{y:.2f}") for w in windows]

    known = [v for v in budget if v is not None]
    lo, hi = min(known + [0.0]), max(known + [1.0])
    pad = (hi - lo) * 0.05
    shapes = [_line(0, "y", "#d93025", "dash"), _line(last["target"], "y2", "#d93025", "dash")]
    annotations = [_label(last["target"], "y2", f"target {last['target']:.2%}")]
    for rule, threshold in sorted(thresholds.items()):
        shapes.append(_line(threshold, "y3", "#5f6368", "dot"))
        annotations.append(_label(threshold, "y3", f"{rule} threshold {threshold:.2f}"))
    for rule, start, end in firing_periods(rows):
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "x0": _utc(start),
                "x1": _utc(end or last["evaluated_at"]),
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "fillcolor": "#d93025" if rule.startswith("page:") else "#f9ab00",
                "opacity": 0.15,
                "line": {"width": 0},
                "layer": "below",
            }
        )
    layout = {
        "height": 640,
        "margin": {"l": 70, "r": 20, "t": 20, "b": 40},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": -0.08},
        "xaxis": {"type": "date", "anchor": "y3", "title": {"text": "UTC"}},
        "yaxis": {
            "domain": [0.7, 1],
            "range": [lo - pad, hi + pad],
            "tickformat": ".0%",
            "title": {"text": "budget left"},
        },
        "yaxis2": {"domain": [0.36, 0.64], "anchor": "x", "tickformat": ".2%", "title": {"text": "SLI"}},
        "yaxis3": {"domain": [0, 0.3], "anchor": "x", "title": {"text": "burn rate"}},
        "shapes": shapes,
        "annotations": annotations,
    }
    return {"data": traces, "layout": layout}


def _rule(alert):
    """The rule as in the status rows' alerts_firing, e.g. page:60m/5m."""
    if "rule" in alert:
        return alert["rule"]
    return f"{alert['severity']}:{alert['long_window_minutes']}m/{alert['short_window_minutes']}m"


def config_thresholds(config, status):
    """{SLO: {rule: burn-rate threshold}} of every alert rule of an SliConfig, for the SLOs of the status rows
    (a calendar-month SLO's threshold is that of its last row's month, `window_days`)."""
    period = {r["slo"]: r["window_days"] for r in sorted(status, key=lambda r: r["evaluated_at"])}
    return {
        slo.name: {
            f"{r.severity}:{r.long_window_minutes}m/{r.short_window_minutes}m": float(r.threshold(period[slo.name]))
            for r in config.alerting.rules
        }
        for slo in config.slos
        if slo.name in period
    }


def render(status, alerts, title="SLO report", thresholds=None):
    """The page; `thresholds` ({SLO: {rule: threshold}}, see config_thresholds) replace those of the alerts."""
    by_slo = {}
    for row in sorted(status, key=lambda r: r["evaluated_at"]):
        by_slo.setdefault(row["slo"], []).append(row)
    fired, from_alerts = {}, {}
    for alert in sorted(alerts, key=lambda a: a["at"]):
        if alert["state"] == "FIRING":
            fired[alert["slo"]] = fired.get(alert["slo"], 0) + 1
        if alert.get("threshold") is not None:  # alerts rebuilt from BigQuery rows carry none
            from_alerts.setdefault(alert["slo"], {})[_rule(alert)] = alert["threshold"]
    thresholds = from_alerts if thresholds is None else thresholds
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
        firing = "".join(
            f'<li data-rule="{html.escape(rule)}">{html.escape(rule)}: {html.escape(start)} to '
            f"{html.escape(end or 'now (still firing)')}</li>"
            for rule, start, end in firing_periods(rows)
        )
        plotted = [r for r in rows if r["budget_remaining"] is not None]
        body = chart(figure(rows, thresholds.get(name, {})), f"{name}: budget, SLI and burn rates") if plotted else ""
        sections.append(
            f'<section data-slo="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
            f"<p>{html.escape(rows[0]['evaluated_at'])} to {html.escape(last['evaluated_at'])}; "
            f"shaded: alerts firing (red: page, amber: other)</p>{body or '<p>no data</p>'}"
            f'<ul class="firing">{firing}</ul></section>'
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
ul.firing {{ font-size: 13px; color: #555; }}
</style>{library()}</head><body>
<h1>{html.escape(title)}</h1>
<table id="slos"><thead><tr><th>SLO</th><th>target</th><th>window</th><th>compliance</th>
<th>budget remaining</th><th>minutes alerting</th><th>alerts fired</th></tr></thead>
<tbody>{"".join(table_rows)}</tbody></table>
{"".join(sections)}
<h2>Alerts</h2>
<table id="alerts"><thead><tr><th>at</th><th>SLO</th><th>state</th><th>rule</th></tr></thead>
<tbody>{alert_rows}</tbody></table>
{draw()}
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
        "--sli_config",
        type=str,
        default=None,
        help="The SLI/SLO config YAML (local or gs://) the SLI pipeline ran with: the threshold lines of all its "
        "alert rules on the burn-rate panels. Give it with --slo_table (the status rows carry no thresholds); "
        "without it the page shows the thresholds of the alerts that fired in --input_dir.",
    )
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
    config = None
    if args.sli_config:
        try:
            config = load_sli_config(args.sli_config)
        except ConfigError as e:  # names --sli_config and the field at fault
            raise SystemExit(f"error: {e}") from None
    if args.slo_table:
        until = datetime.datetime.fromisoformat(args.until) if args.until else datetime.datetime.now(datetime.UTC)
        since = datetime.datetime.fromisoformat(args.since) if args.since else until - datetime.timedelta(days=7)
        status, alerts = read_bigquery(args.slo_table, args.project, since, until)
        output = args.output or "slo_report.html"
    else:
        status, alerts = read_local(args.input_dir)
        output = args.output or FileSystems.join(args.input_dir, "slo_report.html")
    source = f"--slo_table {args.slo_table}" if args.slo_table else f"--input_dir {args.input_dir}"
    if not status:
        raise SystemExit(f"error: no SLO status rows in {source}; run python -m pipelines.sli with SLOs first")
    thresholds = None
    if config:
        thresholds = config_thresholds(config, status)
        missing = sorted({r["slo"] for r in status} - set(thresholds))
        if missing:
            print(
                f"note: --sli_config {args.sli_config} has no SLO {', '.join(missing)} of {source}: no threshold lines"
            )
    elif args.slo_table:
        print("note: status rows carry no burn-rate thresholds: give --sli_config to draw them")
    with FileSystems.create(output) as f:
        f.write(render(status, alerts, thresholds=thresholds).encode("utf-8"))
    print(
        f"wrote {output}: {len({r['slo'] for r in status})} SLOs, {len(status)} status rows, "
        f"{len(alerts)} alert transitions"
    )
    return output


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
