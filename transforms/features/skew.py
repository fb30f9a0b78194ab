"""Training/serving skew and drift: serving data compared with the training statistics artifact of the
feature pipeline, per feature, without TFDV.

- numeric features: serving values are counted in the training histogram's bins, by the same rule and
  edges as the training values (plus one bin below the training min and one above the max);
  Jensen-Shannon divergence (base 2, in [0, 1]) and the population stability index (PSI) compare the two
  bin distributions; the out-of-range rate is the share of serving values outside [training min,
  training max];
- categorical features: the L-infinity distance (largest difference in a value's frequency) and PSI
  over the training top values, the serving top values, and one "other" bucket for the rest; new
  categories are serving values the training split never had (known exactly when the training split
  had at most as many distinct values as its artifact lists);
- every feature: the change in missing rate.

An anomaly is a measure above the feature's threshold (`skew:` in the feature spec, else the defaults).
"""

import datetime
import json
import math

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from transforms.core.records import record_dict
from transforms.features.cleanse import serving_raw_values
from transforms.features.statistics import bin_counts
from transforms.io.deadletter import GuardedDoFn, payload_and_attributes

DEFAULT_THRESHOLDS = {"js_divergence": 0.1, "linf": 0.1, "psi": 0.25, "out_of_range": 0.01, "missing_change": 0.05}
_SMOOTHING = 1e-4  # added to empty bins in PSI so a bin missing on one side does not make it infinite


def training_edges(histogram):
    """The edges of a training histogram as the statistics binned with them (bins from the artifact's
    edges, never recomputed, so float rounding cannot move a value across an edge)."""
    return [b["low"] for b in histogram] + [histogram[-1]["high"]] if histogram else []


def _normalized(counts):
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0 for _ in counts]


def js_divergence(p, q):
    """Jensen-Shannon divergence, base 2: 0 for equal distributions, 1 for disjoint ones."""

    def kl(a, m):
        return sum(x * math.log2(x / y) for x, y in zip(a, m, strict=True) if x > 0)

    m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    return max(0.0, (kl(p, m) + kl(q, m)) / 2)


def psi(p, q):
    """Population stability index of q (serving) against p (training), empty bins smoothed."""
    smoothed = ((max(x, _SMOOTHING), max(y, _SMOOTHING)) for x, y in zip(p, q, strict=True))
    return sum((b - a) * math.log(b / a) for a, b in smoothed)


def _missing_rate(feature):
    return feature["missing"] / feature["count"] if feature["count"] else 0.0


def numeric_skew(train, serving, serving_bins):
    """train/serving: the feature's statistics; serving_bins: {training bin index: count}."""
    histogram = train["histogram"]
    if not histogram or not serving["count"] - serving["missing"]:
        return {}
    indexes = range(-1, len(histogram) + 1)
    p = _normalized([0] + [b["count"] for b in histogram] + [0])
    q = _normalized([serving_bins.get(i, 0) for i in indexes])
    outside = serving_bins.get(-1, 0) + serving_bins.get(len(histogram), 0)
    return {
        "js_divergence": js_divergence(p, q),
        "psi": psi(p, q),
        "out_of_range": outside / sum(serving_bins.values()) if serving_bins else 0.0,
    }


def categorical_skew(train, serving):
    present_train = train["count"] - train["missing"]
    present_serving = serving["count"] - serving["missing"]
    if not present_train or not present_serving:
        return {}
    train_counts = {t["value"]: t["count"] for t in train["top_values"]}
    serving_counts = {t["value"]: t["count"] for t in serving["top_values"]}
    values = sorted(set(train_counts) | set(serving_counts))
    p = [train_counts.get(v, 0) / present_train for v in values]
    q = [serving_counts.get(v, 0) / present_serving for v in values]
    p.append(max(0.0, 1 - sum(p)))  # the values neither side lists
    q.append(max(0.0, 1 - sum(q)))
    complete = train.get("distinct", 0) <= len(train_counts)  # the artifact lists every training value
    result = {"linf": max(abs(a - b) for a, b in zip(p, q, strict=True)), "psi": psi(p, q)}
    if complete:
        result["new_categories"] = sorted(set(serving_counts) - set(train_counts))
    return result


def feature_skew(name, train, serving, serving_bins, thresholds, text=False):
    """Measures and anomalies of one feature. Free text only gets its missing rate compared (whole texts
    rarely repeat, so their frequencies say nothing)."""
    if text:
        measures = {}
    else:
        measures = (
            numeric_skew(train, serving, serving_bins)
            if train["type"] == "numeric"
            else categorical_skew(train, serving)
        )
    measures["missing_change"] = _missing_rate(serving) - _missing_rate(train)
    anomalies = []
    for measure, limit in thresholds.items():
        value = measures.get(measure)
        if value is not None and abs(value) > limit:
            anomalies.append({"measure": measure, "value": value, "threshold": limit})
    if measures.get("new_categories"):
        anomalies.append({"measure": "new_categories", "value": len(measures["new_categories"]), "threshold": 0})
    return {"feature": name, "type": "text" if text else train["type"], "measures": measures, "anomalies": anomalies}


def skew_report(training, serving, serving_bins, thresholds_by_feature, text_features=()):
    """training/serving: statistics artifacts of one split each (the serving one without the label);
    serving_bins: {(feature, bin): count}."""
    features = []
    for name, served in sorted(serving["features"].items()):
        bins = {b: c for (f, b), c in serving_bins.items() if f == name}
        features.append(
            feature_skew(
                name, training["features"][name], served, bins, thresholds_by_feature[name], name in text_features
            )
        )
    return {
        "training_rows": training["rows"],
        "serving_rows": serving["rows"],
        "features": features,
        "anomalies": sum(len(f["anomalies"]) for f in features),
    }


def _bins_of_batch(table, edges):
    """A table of raw values -> {(feature, training bin): count}."""
    return {
        (name, index): count
        for name, feature_edges in edges.items()
        if feature_edges
        for index, count in bin_counts(table.column(name).to_numpy(zero_copy_only=False), feature_edges).items()
    }


def _add_bins(parts):
    total = {}
    for part in parts:
        for key, count in part.items():
            total[key] = total.get(key, 0) + count
    return total


class CountInTrainingBins(beam.PTransform):
    """Tables of raw values (see statistics.raw_table) -> one {(feature, training bin): count} dict per
    window with values (none for a window without any: read it with `AsSingleton(..., default_value={})`)."""

    def __init__(self, histograms):
        super().__init__()
        self._edges = {name: training_edges(histogram) for name, histogram in histograms.items()}

    def expand(self, batches):
        return (
            batches
            | "BinCounts" >> beam.Map(_bins_of_batch, self._edges)
            | "AddBins" >> beam.CombineGlobally(_add_bins).without_defaults()
        )


ANOMALY_BQ_SCHEMA = {
    "fields": [
        {"name": "checked_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "window_start", "type": "TIMESTAMP", "mode": "NULLABLE"},  # streaming; NULL in batch
        {"name": "window_end", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "training_dir", "type": "STRING", "mode": "REQUIRED"},
        {"name": "feature", "type": "STRING", "mode": "REQUIRED"},
        {"name": "type", "type": "STRING", "mode": "REQUIRED"},
        {"name": "measures", "type": "JSON", "mode": "NULLABLE"},
        {
            "name": "anomalies",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "measure", "type": "STRING", "mode": "REQUIRED"},
                {"name": "value", "type": "FLOAT", "mode": "REQUIRED"},
                {"name": "threshold", "type": "FLOAT", "mode": "REQUIRED"},
            ],
        },
    ]
}


class ServingValues(GuardedDoFn):
    """Record (dict, JSON text, or PubsubMessage with a JSON body) -> {feature: value or None}; invalid JSON
    or a wrong type is a dead letter (with the message attributes)."""

    STEP = "ServingValues"

    def __init__(self, spec, pipeline_name):
        super().__init__(pipeline_name)
        self._spec = spec
        self._rows = Metrics.counter(pipeline_name, "serving_rows")

    def handle(self, record):
        values = serving_raw_values(record_dict(payload_and_attributes(record)[0]), self._spec)
        self._rows.inc()
        yield values


def _iso(timestamp):
    return timestamp.to_utc_datetime(has_tz=True).isoformat()


def anomaly_rows(report, training_dir, win=beam.DoFn.WindowParam):
    """One row per feature of a report, with its window (NULL in the global window of a batch run)."""
    checked_at = datetime.datetime.now(datetime.UTC).isoformat()
    interval = isinstance(win, window.IntervalWindow)
    for f in report["features"]:
        yield {
            "checked_at": checked_at,
            "window_start": _iso(win.start) if interval else None,
            "window_end": _iso(win.end) if interval else None,
            "training_dir": training_dir,
            "feature": f["feature"],
            "type": f["type"],
            "measures": json.dumps(f["measures"]),
            "anomalies": f["anomalies"],
        }
