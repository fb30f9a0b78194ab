"""The feature statistics page, opened in headless Chromium: the numbers, charts and skew findings on it."""

import html.parser
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import skew
from pipelines.reports import stats_report
from tests.test_slo_report import Charts, assert_one_library, colours, dump_dom


class Page(html.parser.HTMLParser):
    """Per feature section: the stats table cells {(stat, split): text} and the anomaly items; the
    summary rows' classes and the sections' order."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.anomalies, self.summary, self.sections = {}, {}, {}, []
        self._feature = self._stat = self._split = None
        self._text = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._feature = attrs["data-feature"]
            self.sections.append(self._feature)
        elif tag == "tr" and "data-feature" in attrs:
            self.summary[attrs["data-feature"]] = attrs.get("class", "")
        elif tag == "tr" and "data-stat" in attrs:
            self._stat = attrs["data-stat"]
        elif tag == "td" and self._stat and "data-split" in attrs:
            self._split, self._text = attrs["data-split"], ""
        elif tag == "li" and "data-measure" in attrs:
            self.anomalies.setdefault(self._feature, []).append(attrs["data-measure"])

    def handle_endtag(self, tag):
        if tag == "td" and self._split is not None:
            self.cells[(self._feature, self._stat, self._split)] = self._text
            self._split = self._text = None
        elif tag == "tr":
            self._stat = None

    def handle_data(self, data):
        if self._text is not None:
            self._text += data


def test_page_shows_every_split_its_charts_and_the_skew_findings(tmp_path):
    options = PipelineOptions(["--runner", "FnApiRunner", "--output_dir", str(tmp_path / "skew")])
    settings = skew.validate(options)
    with beam.Pipeline(options=options) as pipeline:
        skew.build(pipeline, options, settings)
    statistics_path = skew.SAMPLES / "training" / "statistics.json"
    output = stats_report.main(
        [
            "--statistics",
            str(statistics_path),
            "--skew_dir",
            str(tmp_path / "skew"),
            "--output",
            str(tmp_path / "report.html"),
        ]
    )
    text = dump_dom(output, screenshot=tmp_path / "page.png")
    page, charts = Page(text), Charts(text, "data-feature")

    statistics = json.loads(statistics_path.read_text())
    statistics["serving"] = json.loads((tmp_path / "skew" / "serving_statistics.json").read_text())
    anomalies = json.loads((tmp_path / "skew" / "anomalies.json").read_text())
    for split in ("train", "eval", "serving"):
        for name, feature in statistics[split]["features"].items():
            assert page.cells[(name, "count", split)] == str(feature["count"])
            assert page.cells[(name, "missing", split)] == f"{feature['missing'] / feature['count']:.1%}"
            (bars,) = [t for t in charts.specs[name]["data"] if t["name"] == split]
            if feature["type"] == "numeric":
                assert page.cells[(name, "mean", split)] == f"{feature['mean']:.6g}"
                bins = feature["histogram"]
                assert [c[2] for c in bars["customdata"]] == [b["count"] for b in bins]
                present = sum(b["count"] for b in bins)  # every present value falls in one bin
                assert present == feature["count"] - feature["missing"]
                assert bars["y"] == pytest.approx([b["count"] / present for b in bins])
                lows = [x - w / 2 for x, w in zip(bars["x"], bars["width"], strict=True)]
                highs = [x + w / 2 for x, w in zip(bars["x"], bars["width"], strict=True)]
                assert lows == pytest.approx([b["low"] for b in bins]) and highs == pytest.approx(
                    [b["high"] for b in bins]
                )
            else:
                top = feature["top_values"][:8]
                assert bars["x"] == [t["value"] for t in top] and bars["customdata"] == [t["count"] for t in top]
                present = feature["count"] - feature["missing"]
                assert bars["y"] == pytest.approx([t["count"] / present for t in top])
    for name in charts.specs:  # drawn, one bar per bin or value
        assert charts.drawn[name]
        assert charts.traces[name] == [len(t["x"]) for t in charts.specs[name]["data"]]
    flagged = {f["feature"]: [a["measure"] for a in f["anomalies"]] for f in anomalies["features"] if f["anomalies"]}
    assert page.anomalies == flagged and "country" in flagged
    assert {name for name, css in page.summary.items() if css == "anomaly"} == set(flagged)
    assert page.sections == sorted(flagged) + sorted(set(charts.specs) - set(flagged))  # skewed features first
    assert_one_library(output)
    assert colours(tmp_path / "page.png") > 200
