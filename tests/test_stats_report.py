"""The feature statistics page, opened in headless Chromium: the numbers, charts and skew findings on it."""

import html.parser
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import skew
from pipelines.reports import stats_report
from tests.test_slo_report import dump_dom


class Page(html.parser.HTMLParser):
    """Per feature section: the stats table cells {(stat, split): text}, chart bars per split and kind,
    the anomaly items; the summary rows' classes."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.bars, self.anomalies, self.summary = {}, {}, {}, {}
        self._feature = self._stat = self._split = self._chart = None
        self._text = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._feature = attrs["data-feature"]
        elif tag == "tr" and "data-feature" in attrs:
            self.summary[attrs["data-feature"]] = attrs.get("class", "")
        elif tag == "tr" and "data-stat" in attrs:
            self._stat = attrs["data-stat"]
        elif tag == "td" and self._stat and "data-split" in attrs:
            self._split, self._text = attrs["data-split"], ""
        elif tag == "svg" and "data-split" in attrs:
            self._chart = (self._feature, attrs["class"], attrs["data-split"])
            self.bars[self._chart] = []
        elif tag == "rect" and self._chart:
            self.bars[self._chart].append(int(attrs["data-count"]))
        elif tag == "li" and "data-measure" in attrs:
            self.anomalies.setdefault(self._feature, []).append(attrs["data-measure"])

    def handle_endtag(self, tag):
        if tag == "td" and self._split is not None:
            self.cells[(self._feature, self._stat, self._split)] = self._text
            self._split = self._text = None
        elif tag == "tr":
            self._stat = None
        elif tag == "svg":
            self._chart = None

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
    page = Page(dump_dom(output))

    statistics = json.loads(statistics_path.read_text())
    statistics["serving"] = json.loads((tmp_path / "skew" / "serving_statistics.json").read_text())
    anomalies = json.loads((tmp_path / "skew" / "anomalies.json").read_text())
    for split in ("train", "eval", "serving"):
        for name, feature in statistics[split]["features"].items():
            assert page.cells[(name, "count", split)] == str(feature["count"])
            assert page.cells[(name, "missing", split)] == f"{feature['missing'] / feature['count']:.1%}"
            if feature["type"] == "numeric":
                assert page.cells[(name, "mean", split)] == f"{feature['mean']:.6g}"
                assert page.bars[(name, "histogram", split)] == [b["count"] for b in feature["histogram"]]
            else:
                assert page.bars[(name, "top-values", split)] == [t["count"] for t in feature["top_values"][:8]]
    flagged = {f["feature"]: [a["measure"] for a in f["anomalies"]] for f in anomalies["features"] if f["anomalies"]}
    assert page.anomalies == flagged and "country" in flagged
    assert {name for name, css in page.summary.items() if css == "anomaly"} == set(flagged)
