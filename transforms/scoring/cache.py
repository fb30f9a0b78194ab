"""The Bigtable serving cache of predictions: row keys, the lookup before scoring, the rows written after."""

import json
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from google.cloud.bigtable.row_set import RowSet

from transforms.io.sinks import ensure_bigtable_table
from transforms.scoring.model import ScoringBatch, model_version, prediction_rows

CACHE_COLUMN_FAMILY = "p"


def request_row_key(request_id):
    return f"req#{request_id}"


def content_row_key(version, content_key):
    return f"content#{version}#{content_key}"


def lookup_prediction(table, request_id):
    """The prediction row cached for a request id (as written to BigQuery), or None. For callers:

    table = bigtable.Client(project=P).instance("serving").table("predictions")
    lookup_prediction(table, "req-42")["top_k"]
    """
    row = table.read_row(request_row_key(request_id).encode())
    if row is None:
        return None
    cells = {q.decode(): c[0].value.decode("utf-8") for q, c in row.cells[CACHE_COLUMN_FAMILY].items()}
    cells.pop("cache_key", None)
    return {
        **cells,
        "top_k": json.loads(cells["top_k"]),
        "latency_ms": float(cells["latency_ms"]),
        "cache_hit": cells["cache_hit"] == "True",
        "instance_index": int(cells["instance_index"]) if "instance_index" in cells else None,
    }


class LookupCache(beam.DoFn):
    """Before scoring: a request whose content (model input) was already scored by this model version is
    answered from the Bigtable cache (main output: lists of rows, counted as `cache_hits`); the others go
    on to the model (`misses`), a ScoringBatch at a time, with one Bigtable read per batch. The version is
    the watched model's newest when --model_watch_pattern is set."""

    MISSES = "misses"

    def __init__(self, target, version, pipeline_name):
        self._target, self._version, self._pipeline = target, version, pipeline_name  # the cache's BigtableTarget

    def setup(self):
        from google.cloud import bigtable

        ensure_bigtable_table(self._target)  # the first lookups come before the first write
        self._client = bigtable.Client(project=self._target.project)
        self._bt = self._client.instance(self._target.instance).table(self._target.table)
        self._hits = Metrics.counter(self._pipeline, "cache_hits")

    def process(self, batch, model_updates=None):
        """A ScoringBatch -> the list of its cached rows (one Bigtable read for the batch) and a
        ScoringBatch of the rest, tagged MISSES."""
        version = model_version(model_updates[-1].model_id) if model_updates else self._version
        keys = [content_row_key(version, request.content_key).encode() for request in batch.requests]
        row_set = RowSet()
        for key in set(keys):
            row_set.add_row_key(key)
        cached = {
            row.row_key: {q.decode(): c[0].value.decode() for q, c in row.cells[CACHE_COLUMN_FAMILY].items()}
            for row in self._bt.read_rows(row_set=row_set)
        }
        hits = [i for i, key in enumerate(keys) if key in cached]
        if hits:
            self._hits.inc(len(hits))
            rows = prediction_rows([batch.requests[i] for i in hits], {}, version, scored_at=time.time())
            yield [
                {**row, "outputs": cells["outputs"], "top_k": json.loads(cells["top_k"]), "cache_hit": True}
                for row, cells in zip(rows, (cached[keys[i]] for i in hits), strict=True)
            ]
        if len(hits) == len(keys):
            return
        misses = [i for i, key in enumerate(keys) if key not in cached]
        yield beam.pvalue.TaggedOutput(
            self.MISSES,
            ScoringBatch(
                [batch.requests[i] for i in misses], {name: value[misses] for name, value in batch.examples.items()}
            ),
        )

    def teardown(self):
        self._client.close()


def cache_rows(row):
    """The Bigtable rows of one prediction: by request id, and (when scored, not served from the cache)
    by model version + content hash."""
    yield {**row, "cache_key": request_row_key(row["request_id"])}
    if not row["cache_hit"]:
        yield {**row, "cache_key": content_row_key(row["model_version"], row["content_key"])}


def cache_key(row):
    return row["cache_key"]
