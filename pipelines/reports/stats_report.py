"""Feature statistics report: a self-contained HTML page from the feature pipeline's statistics.json
(train, eval, ... side by side, each feature's histograms or top values per split overlaid in one
interactive chart) and, optionally, a skew check's serving statistics and anomalies (a serving column
and series, skewed features first and highlighted). plotly.js is inlined: the page works offline.

    python -m pipelines.reports.stats_report                       # output/feature_stats (+ output/skew if present)
    python -m pipelines.reports.stats_report --statistics gs://B/datasets/churn-v3/statistics.json \\
        --skew_dir gs://B/skew/churn-v3 --output report.html
"""

import argparse
import html
import json
import os
import sys

from apache_beam.io.filesystems import FileSystems

from pipelines.reports.charts import chart, draw, library
from transforms.io.files import read_text

_TOP_VALUES = 8  # charted per split
QUANTILE_LABELS = {"0.01": "p1", "0.25": "p25", "0.5": "p50", "0.75": "p75", "0.99": "p99"}


def _read_json(path):
    return json.loads(read_text(path))


def _number(value):
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def figure(name, kind, per_split):
    """The plotly figure of one feature: per split (serving included), its histogram bins as bars over
    their value ranges, overlaid, or its top values side by side; heights are the share of the split's
    present values, so splits of any size compare; hover shows the range or value and the count."""
    traces, numeric = [], kind == "numeric"
    for split, feature in per_split.items():
        if not feature:
            continue
        present = feature["count"] - feature["missing"]
        if numeric:
            bins = feature.get("histogram", [])
            traces.append(
                {
                    "type": "bar",
                    "name": split,
                    "x": [(b["low"] + b["high"]) / 2 for b in bins],
                    "width": [b["high"] - b["low"] for b in bins],
                    "y": [b["count"] / present if present else 0.0 for b in bins],
                    "customdata": [[b["low"], b["high"], b["count"]] for b in bins],
                    "hovertemplate": "%{customdata[0]:.6g} to %{customdata[1]:.6g}: %{customdata[2]} (%{y:.1%})",
                    "opacity": 0.55,
                }
            )
        else:
            top = feature.get("top_values", [])[:_TOP_VALUES]
            traces.append(
                {
                    "type": "bar",
                    "name": split,
                    "x": [str(t["value"]) for t in top],
                    "y": [t["count"] / present if present else 0.0 for t in top],
                    "customdata": [t["count"] for t in top],
                    "hovertemplate": "%{x}: %{customdata} (%{y:.1%})",
                }
            )
    layout = {
        "height": 260,
        "margin": {"l": 50, "r": 20, "t": 10, "b": 40},
        "barmode": "overlay" if numeric else "group",
        "bargap": 0,
        "yaxis": {"tickformat": ".0%", "title": {"text": "share of values"}},
        "xaxis": {"title": {"text": name}, "type": "linear" if numeric else "category"},
        "legend": {"orientation": "h", "y": 1.12},
    }
    return {"data": traces, "layout": layout}


def render(statistics, anomalies=None, title="Feature statistics"):
    """statistics: {split: artifact} (a serving split included if given); anomalies: a skew report."""
    splits = [s for s in statistics if isinstance(statistics[s], dict) and "features" in statistics[s]]
    findings = {f["feature"]: f for f in (anomalies or {}).get("features", [])}
    names = sorted(  # skewed features first
        {n for s in splits for n in statistics[s]["features"]},
        key=lambda n: (not findings.get(n, {}).get("anomalies"), n),
    )
    sections = []
    summary = []
    for name in names:
        per_split = {s: statistics[s]["features"].get(name) for s in splits}
        kind = next(f["type"] for f in per_split.values() if f)
        flagged = findings.get(name, {}).get("anomalies", [])
        summary.append(
            f'<tr data-feature="{html.escape(name)}" class="{"anomaly" if flagged else ""}">'
            f"<td>{html.escape(name)}</td><td>{kind}</td>"
            + "".join(f"<td>{_missing_rate(per_split[s])}</td>" for s in splits)
            + f"<td>{len(flagged)}</td></tr>"
        )
        rows = [("count", lambda f: _number(f["count"])), ("missing", lambda f: _missing_rate(f))]
        if kind == "numeric":
            rows += [(k, lambda f, k=k: _number(f.get(k))) for k in ("min", "max", "mean", "std")]
            rows += [
                (label, lambda f, q=q: _number(f.get("quantiles", {}).get(q))) for q, label in QUANTILE_LABELS.items()
            ]
        else:
            rows += [("distinct", lambda f: _number(f.get("distinct")))]
        table = "".join(
            f'<tr data-stat="{label}"><th>{label}</th>'
            + "".join(
                f'<td data-split="{html.escape(s)}">{fn(per_split[s]) if per_split[s] else "-"}</td>' for s in splits
            )
            + "</tr>"
            for label, fn in rows
        )
        charts = chart(figure(name, kind, per_split), f"{name} by split")
        finding = ""
        if name in findings:
            measures = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in sorted(findings[name]["measures"].items())
            )
            items = "".join(
                f'<li class="anomaly" data-measure="{a["measure"]}">{a["measure"]} {a["value"]:.3f} '
                f"over {a['threshold']:g}</li>"
                for a in flagged
            )
            finding = f'<p class="measures">skew: {html.escape(measures)}</p><ul>{items}</ul>'
        sections.append(
            f'<section data-feature="{html.escape(name)}" class="{"anomaly" if flagged else ""}">'
            f"<h2>{html.escape(name)} <small>{kind}</small></h2>{finding}"
            f'<table class="stats"><thead><tr><th></th>'
            + "".join(f"<th>{html.escape(s)}</th>" for s in splits)
            + f"</tr></thead><tbody>{table}</tbody></table>{charts}</section>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 9px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.anomaly td, section.anomaly h2 {{ color: #b3261e; }}
li.anomaly {{ color: #b3261e; font-weight: 600; }}
section {{ border-top: 1px solid #ddd; padding-top: 0.5em; }}
</style>{library()}</head><body>
<h1>{html.escape(title)}</h1>
<table id="features"><thead><tr><th>feature</th><th>type</th>
{"".join(f"<th>missing {html.escape(s)}</th>" for s in splits)}<th>anomalies</th></tr></thead>
<tbody>{"".join(summary)}</tbody></table>
{"".join(sections)}
{draw()}
</body></html>
"""


def _missing_rate(feature):
    if not feature:
        return "-"
    return f"{feature['missing'] / feature['count']:.1%}" if feature["count"] else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--statistics",
        type=str,
        default=os.path.join("output", "feature_stats", "statistics.json"),
        help="statistics.json of a feature pipeline run (local or gs://). "
        "Default: output/feature_stats/statistics.json.",
    )
    parser.add_argument(
        "--skew_dir",
        type=str,
        default=None,
        help="Output folder of a skew check (serving_statistics.json, anomalies.json) to add a "
        "serving column and highlight anomalies. Default: output/skew when it exists.",
    )
    parser.add_argument(
        "--output", type=str, default=None, help="HTML file to write. Default: stats_report.html beside --statistics."
    )
    args = parser.parse_args(argv)
    if not FileSystems.exists(args.statistics):
        raise SystemExit(
            f"error: --statistics {args.statistics} does not exist; run python -m pipelines.feature_stats first"
        )
    statistics = _read_json(args.statistics)
    default_skew_dir = os.path.join("output", "skew")
    skew_dir = args.skew_dir or (default_skew_dir if os.path.isdir(default_skew_dir) else None)
    anomalies = None
    if skew_dir:
        statistics = {**statistics, "serving": _read_json(FileSystems.join(skew_dir, "serving_statistics.json"))}
        anomalies = _read_json(FileSystems.join(skew_dir, "anomalies.json"))
    output = args.output or FileSystems.join(os.path.dirname(args.statistics) or ".", "stats_report.html")
    with FileSystems.create(output) as f:
        f.write(render(statistics, anomalies).encode("utf-8"))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
