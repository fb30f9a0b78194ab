"""The replay's HTML page (`python -m pipelines.slo_replay --report_html PATH`): the comparison table, then
per SLO one chart with every config side by side: budget consumed over time, and the burn rates against
each config's thresholds with the pages and tickets marked where they fired (plotly.js inlined: works
offline). Series longer than `transforms.slo.replay.MAX_POINTS` minutes are shown per bucket of minutes:
the last minute's budget and each window's highest burn rate in the bucket."""

import html

from pipelines.reports.charts import chart, draw, library
from pipelines.reports.slo_report import _line, _pct, _utc

PALETTE = ("#1a73e8", "#e8710a", "#188038", "#a142f4", "#d01884", "#12b5cb", "#5f6368", "#b06000")
_DASHES = ("solid", "dot", "dash", "longdash", "dashdot")
_SYMBOLS = {"page": "triangle-up", "ticket": "diamond"}


def rule_name(alert):
    return f"{alert['severity']}:{alert['long_window_minutes']}m/{alert['short_window_minutes']}m"


def figure(configs, series, alerts, thresholds):
    """One SLO's figure: `configs` (names, in order), `series` {config: series row}, `alerts` {config:
    [transitions, time order]}, `thresholds` {config: {rule: threshold}}. Budget consumed on top, burn rates
    below, one colour per config."""
    traces = []
    for i, config in enumerate(configs):
        colour = PALETTE[i % len(PALETTE)]
        points = series.get(config, {}).get("points", [])
        x = [_utc(p["evaluated_at"]) for p in points]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"budget consumed · {config}",
                "x": x,
                "y": [p["budget_consumed"] for p in points],
                "yaxis": "y",
                "line": {"color": colour, "width": 2},
                "hovertemplate": "%{y:.1%}",
            }
        )
        windows = sorted({int(w) for p in points for w in p["burn_rates"]})
        for j, window in enumerate(windows):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"burn rate {window} min · {config}",
                    "x": x,
                    "y": [p["burn_rates"].get(str(window)) for p in points],
                    "yaxis": "y2",
                    "line": {"color": colour, "width": 1, "dash": _DASHES[j % len(_DASHES)]},
                    "hovertemplate": "%{y:.2f}",
                }
            )
        for rule, threshold in sorted(thresholds.get(config, {}).items()) if x else ():
            traces.append(  # a trace, not a shape: shapes on a log axis take log10 positions
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"threshold {rule} · {config}",
                    "x": [x[0], x[-1]],
                    "y": [threshold, threshold],
                    "yaxis": "y2",
                    "line": {"color": colour, "width": 1, "dash": "dot"},
                    "hovertemplate": f"{rule} threshold %{{y:.2f}}",
                }
            )
        for severity, symbol in _SYMBOLS.items():
            fired = [a for a in alerts.get(config, []) if a["state"] == "FIRING" and a["severity"] == severity]
            if fired:
                traces.append(
                    {
                        "type": "scatter",
                        "mode": "markers",
                        "name": f"{severity}s fired · {config}",
                        "x": [_utc(a["at"]) for a in fired],
                        "y": [a["burn_rate_long"] for a in fired],
                        "customdata": [rule_name(a) for a in fired],
                        "yaxis": "y2",
                        "marker": {"color": colour, "symbol": symbol, "size": 11},
                        "hovertemplate": "%{customdata}: long-window burn %{y:.2f}",
                    }
                )
    layout = {
        "height": 560,
        "margin": {"l": 70, "r": 20, "t": 20, "b": 40},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": -0.1},
        "xaxis": {"type": "date", "anchor": "y2", "title": {"text": "UTC"}},
        "yaxis": {
            "domain": [0.55, 1],
            "tickformat": ".0%",
            "title": {"text": "budget consumed"},
            "rangemode": "tozero",
        },
        # log scale: an incident's burn rates are hundreds, thresholds about 1-15; zero rates are left out
        "yaxis2": {"domain": [0, 0.45], "anchor": "x", "type": "log", "title": {"text": "burn rate (log)"}},
        "shapes": [_line(1, "y", "#d93025", "dash")],  # the whole budget
    }
    return {"data": traces, "layout": layout}


def render(comparison, alerts, series, thresholds, title="SLO replay"):
    """The page. comparison: the comparison rows; alerts: the transitions (with config); series: the series
    rows; thresholds: {config: {slo: {rule: threshold}}}. Configs appear in their order in `thresholds`."""
    configs = list(thresholds)
    by_slo = {}
    for row in comparison:
        by_slo.setdefault(row["slo"], {})[row["config"]] = row
    series_of = {(s["config"], s["slo"]): s for s in series}
    alerts_of = {}
    for alert in sorted(alerts, key=lambda a: (a["at"], a["severity"], a["long_window_minutes"])):
        alerts_of.setdefault((alert["config"], alert["slo"]), []).append(alert)
    table, sections = [], []
    for slo, rows in sorted(by_slo.items()):
        names = [c for c in configs if c in rows]
        for config in names:
            r = rows[config]
            table.append(
                f'<tr data-slo="{html.escape(slo)}" data-config="{html.escape(config)}"><td>{html.escape(slo)}</td>'
                f"<td>{html.escape(config)}</td><td>{r['target']:.3%}</td><td>{r['pages']}</td><td>{r['tickets']}</td>"
                f"<td>{r['page_minutes']}</td><td>{r['ticket_minutes']}</td><td>{_pct(r['budget_consumed'], 1)}</td>"
                f"<td>{_pct(r['max_budget_consumed'], 1)}</td><td>{r['evaluated_minutes']}</td>"
                f"<td>{html.escape(', '.join(r.get('latency_from_sketches') or []))}</td></tr>"
            )
        fired = "".join(
            f'<li data-config="{html.escape(config)}" data-rule="{html.escape(rule_name(a))}">'
            f"{html.escape(config)}: {a['state']} {html.escape(rule_name(a))} at {html.escape(a['at'])}</li>"
            for config in names
            for a in alerts_of.get((config, slo), [])
        )
        has_points = any(series_of.get((c, slo), {}).get("points") for c in names)
        body = (
            chart(
                figure(
                    names,
                    {c: series_of[(c, slo)] for c in names if (c, slo) in series_of},
                    {c: alerts_of.get((c, slo), []) for c in names},
                    {c: thresholds[c].get(slo, {}) for c in names},
                ),
                f"{slo}: budget consumed and burn rates per config",
            )
            if has_points
            else "<p>no data</p>"
        )
        strides = {series_of[(c, slo)]["stride_minutes"] for c in names if (c, slo) in series_of}
        bucket = "" if strides <= {1} else f" Points are buckets of {max(strides)} minutes (highest burn rate in each)."
        sketched = sorted({s for c in names for s in rows[c].get("latency_from_sketches") or []})
        note = (
            f'<p class="sketched">From latency sketches (counts exact except requests within 1% of the threshold): '
            f"{html.escape(', '.join(sketched))}</p>"
            if sketched
            else ""
        )
        sections.append(
            f'<section data-slo="{html.escape(slo)}"><h2>{html.escape(slo)}</h2>'
            f"<p>Configs {html.escape(', '.join(names))}; dotted lines: each config's burn-rate thresholds; "
            f"markers: pages (triangles) and tickets (diamonds) where they fired.{bucket}</p>{note}{body}"
            f'<ul class="alerts">{fired}</ul></section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) {{ text-align: left; }}
ul.alerts, p.sketched {{ font-size: 13px; color: #555; }}
</style>{library()}</head><body>
<h1>{html.escape(title)}</h1>
<table id="comparison"><thead><tr><th>SLO</th><th>config</th><th>target</th><th>pages</th><th>tickets</th>
<th>page minutes</th><th>ticket minutes</th><th>budget consumed</th><th>most consumed</th><th>minutes</th>
<th>latency from sketches</th></tr></thead>
<tbody>{"".join(table)}</tbody></table>
{"".join(sections)}
{draw()}
</body></html>
"""
