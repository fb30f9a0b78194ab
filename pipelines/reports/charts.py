"""Charts for the report pages: Plotly figures whose specs sit in the page as JSON, drawn by one inlined
copy of plotly.js, so a page needs no network when it is opened."""

import html
import json

import plotly.offline

_DRAW = """<script>
for (const spec of document.querySelectorAll("script.chart-spec")) {
  const figure = JSON.parse(spec.textContent);
  Plotly.newPlot(spec.previousElementSibling, figure.data, figure.layout, {displaylogo: false, responsive: true});
}
</script>"""


def chart(figure, label):
    """A <div> the page's script draws `figure` (a plotly.js figure: {"data": traces, "layout": ...}) into,
    its spec beside it as JSON (class chart-spec)."""
    spec = json.dumps(figure, allow_nan=False).replace("</", "<\\/")
    return (
        f'<div class="chart" role="img" aria-label="{html.escape(label)}"></div>'
        f'<script type="application/json" class="chart-spec">{spec}</script>'
    )


def library():
    """plotly.js, once per page (in <head>)."""
    return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'


def draw():
    """The script that draws every chart (at the end of <body>)."""
    return _DRAW
