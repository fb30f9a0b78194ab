"""Sinks every pipeline shares: `WriteRecords` (BigQuery, Bigtable, Pub/Sub, JSONL files) and the
dead-letter sink built on it."""

import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from transforms.io.deadletter import (
    DEAD_LETTER_BQ_SCHEMA,
    DEFAULT_MAX_PAYLOAD_BYTES,
    RecordError,
    cap_payload,
    make_dead_letter,
)


class ReleaseToSinks(beam.PTransform):
    """Moves finished results (rows that carry their own window columns, dead letters) into the global
    window, timestamped with processing time. Sinks group before writing; without this, late panes of
    an event-time window (or records whose publish time is behind the watermark) would be dropped there
    as late data."""

    def expand(self, pcoll):
        return (
            pcoll
            | "StampProcessingTime" >> beam.Map(lambda x: window.TimestampedValue(x, time.time()))
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        )


def to_json_line(row):
    """A dict as one line of JSON, keys sorted: orjson (about 1 us a row, against 5-20 for json; NaN written
    as null), json for the integers over 64 bits that orjson refuses."""
    try:
        return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()
    except TypeError:
        return json.dumps(row, sort_keys=True, default=str)


class WriteJsonLines(beam.PTransform):
    """Writes dicts as JSONL shards `<prefix>-SSSSS-of-NNNNN.jsonl`; in streaming, one set of files per
    `streaming_flush_seconds` (WriteToText needs a triggering frequency, and windows other than the global
    one, on unbounded input; the input comes through `ReleaseToSinks`, so these are processing-time)."""

    def __init__(self, file_path_prefix, streaming=False, streaming_flush_seconds=60):
        super().__init__()
        self._prefix = file_path_prefix
        self._triggering_frequency = streaming_flush_seconds if streaming else None

    def expand(self, rows):
        if self._triggering_frequency:
            rows = rows | "FlushWindows" >> beam.WindowInto(window.FixedWindows(self._triggering_frequency))
        return (
            rows
            | "ToJson" >> beam.Map(to_json_line)
            | "Write"
            >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".jsonl", triggering_frequency=self._triggering_frequency
            )
        )


class WriteJsonToPubSub(beam.PTransform):
    """One Pub/Sub message per dict, its JSON as the body."""

    def __init__(self, topic):
        super().__init__()
        self._topic = topic

    def expand(self, records):
        return (
            records
            | "ToMessage" >> beam.Map(lambda r: to_json_line(r).encode("utf-8"))
            | "Publish" >> beam.io.WriteToPubSub(self._topic)
        )


class WriteBigQueryRows(beam.PTransform):
    """WriteToBigQuery into a day-partitioned (and optionally clustered) table created if missing.
    Returns the dead letters of rows BigQuery rejected, as a one-element tuple: streaming inserts and the
    Storage Write API report them per row. File loads cannot (a load job fails as a whole), so that method
    returns an empty tuple. Streaming inserts retry a row only on a transient error: Beam's default retries
    every error, a rejected row included, up to 10,000 times with waits of up to 25 minutes, so one bad row
    would hold its bundle for days instead of becoming a dead letter."""

    def __init__(self, table, schema, method, partition_field, clustering_fields=None, pipeline_name="", step=""):
        super().__init__()
        self._table, self._schema, self._method = table, schema, method
        self._bq_parameters = {"timePartitioning": {"type": "DAY", "field": partition_field}}
        if clustering_fields:
            self._bq_parameters["clustering"] = {"fields": list(clustering_fields)}
        self._pipeline, self._step = pipeline_name, step

    def expand(self, rows):
        result = rows | "Write" >> beam.io.WriteToBigQuery(
            self._table,
            schema=self._schema,
            method=self._method,
            create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
            additional_bq_parameters=self._bq_parameters,
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
        )
        if self._method == "FILE_LOADS":
            return ()
        return (
            result.failed_rows_with_errors
            | "RejectedToDeadLetters" >> beam.Map(_rejected_row, self._pipeline, self._step),
        )


def _rejected_row(failed, pipeline_name, step):
    """WriteToBigQuery's failed row (destination, row, errors) -> dead letter."""
    _, row, errors = failed
    return make_dead_letter(
        pipeline_name, step, row, RecordError("rejected_by_sink", f"BigQuery rejected the row: {errors}")
    )


def ensure_bigtable_table(target):
    """Creates the target's table and column family (garbage collection: the target's max versions per
    cell and max age) if they are missing."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import bigtable
    from google.cloud.bigtable import column_family

    t = target
    client = bigtable.Client(project=t.project, admin=True)
    table = client.instance(t.instance).table(t.table)
    rules = [column_family.MaxVersionsGCRule(t.max_versions)] if t.max_versions else []
    if t.max_age_hours:
        rules.append(column_family.MaxAgeGCRule(datetime.timedelta(hours=t.max_age_hours)))
    gc_rule = rules[0] if len(rules) == 1 else column_family.GCRuleUnion(rules)
    try:
        if not table.exists():
            table.create(column_families={t.column_family: gc_rule})
    except AlreadyExists:
        pass  # another worker created it first
    client.close()


class ToBigtableRows(beam.DoFn):
    """Row dict -> DirectRow under `target.row_key(row)`, every non-null field (or each of `target.cells(row)`)
    a UTF-8 cell in the target's column family (lists as JSON), cell timestamp from `target.time_field`: a
    newer pane or evaluation replaces the cell. Creates the table and column family on first use
    if they are missing (ensure_bigtable_table)."""

    def __init__(self, target):
        self._target = target

    def setup(self):
        ensure_bigtable_table(self._target)

    def process(self, row):
        from google.cloud.bigtable.row import DirectRow

        t = self._target
        direct_row = DirectRow(row_key=t.row_key(row).encode("utf-8"))
        cell_time = datetime.datetime.fromisoformat(row[t.time_field])
        for name, value in (t.cells(row) if t.cells else row).items():
            if value is not None:
                text = to_json_line(value) if isinstance(value, (list, dict)) else str(value)
                direct_row.set_cell(t.column_family, name.encode(), text.encode("utf-8"), cell_time)
        yield direct_row


class WriteBigtableRows(beam.PTransform):
    """Rows to Bigtable through ToBigtableRows (pure-Python WriteToBigTable)."""

    def __init__(self, target):
        super().__init__()
        self._target = target

    def expand(self, rows):
        from apache_beam.io.gcp.bigtableio import WriteToBigTable  # here: its import costs a job without Bigtable 0.6 s

        t = self._target
        return (
            rows
            | "ToDirectRows" >> beam.ParDo(ToBigtableRows(t))
            | "Write" >> WriteToBigTable(project_id=t.project, instance_id=t.instance, table_id=t.table)
        )


class BigQueryTarget(NamedTuple):
    table: str  # PROJECT:DATASET.TABLE
    schema: dict
    partition_field: str  # day partitions
    clustering_fields: list | None = None


class BigtableTarget(NamedTuple):
    project: str
    instance: str
    table: str
    column_family: str
    row_key: Callable  # row dict -> str
    time_field: str  # the row field holding the cell timestamp
    max_age_hours: float | None = None  # garbage-collect cells older than this (set when creating the table)
    max_versions: int | None = 1  # versions kept per cell; None: every version until max_age_hours
    cells: Callable | None = None  # row dict -> {column: value}; default: every field of the row


class WriteRecords(beam.PTransform):
    """Writes dicts to every destination given: BigQuery, Bigtable, a Pub/Sub topic (JSON), local JSONL.
    Returns a tuple with the dead letters of rows BigQuery rejected (empty when nothing can reject)."""

    def __init__(
        self,
        pipeline_name,
        bigquery=None,
        bq_write_method="STREAMING_INSERTS",
        bigtable=None,
        pubsub_topic=None,
        local_prefix=None,
        streaming=False,
    ):
        super().__init__()
        self._pipeline, self._bigquery, self._method = pipeline_name, bigquery, bq_write_method
        self._bigtable, self._topic = bigtable, pubsub_topic
        self._local_prefix, self._streaming = local_prefix, streaming

    def expand(self, records):
        if self._streaming:  # in batch there is no late data, and the sinks rewindow themselves
            records = records | "ReleaseToSinks" >> ReleaseToSinks()
        dead_letters = ()
        if self._bigquery:
            b = self._bigquery
            dead_letters = records | "ToBigQuery" >> WriteBigQueryRows(
                b.table,
                b.schema,
                self._method,
                b.partition_field,
                b.clustering_fields,
                self._pipeline,
                f"{self.label}/ToBigQuery",
            )
        if self._bigtable:
            records | "ToBigtable" >> WriteBigtableRows(self._bigtable)
        if self._topic:
            records | "ToPubsub" >> WriteJsonToPubSub(self._topic)
        if self._local_prefix:
            records | "ToFiles" >> WriteJsonLines(self._local_prefix, streaming=self._streaming)
        return dead_letters


def _log_rejected_dead_letter(dead_letter):
    """Only the dead letter's identity is logged: its payload may be large, and what BigQuery rejected is
    usually in the payload."""
    Metrics.counter(dead_letter["pipeline"], "dead_letters_rejected_by_bigquery").inc()
    logging.error(
        "BigQuery rejected a dead letter of %s step %s (reason %s, payload of %s bytes, SHA-256 %s)",
        dead_letter["pipeline"],
        dead_letter["step"],
        dead_letter["reason"],
        dead_letter.get("payload_size"),
        dead_letter.get("payload_sha256"),
    )


class CountDeadLetters(beam.DoFn):
    """Counts dead letters per pipeline and reason (Beam metrics `<pipeline>:dead_letters_<reason>`) and
    cuts their payloads to `max_payload_bytes`."""

    def __init__(self, max_payload_bytes):
        self._max_payload_bytes = max_payload_bytes

    def process(self, dead_letter):
        Metrics.counter(dead_letter["pipeline"], "dead_letters").inc()
        Metrics.counter(dead_letter["pipeline"], f"dead_letters_{dead_letter['reason']}").inc()
        yield cap_payload(dead_letter, self._max_payload_bytes)


class WriteDeadLetters(beam.PTransform):
    """Counts dead letters and cuts their payloads, then writes them to every sink configured: BigQuery
    table, Pub/Sub topic, local JSONL prefix. Dead letters BigQuery rejects are logged and counted: nowhere
    is left to send them."""

    def __init__(
        self,
        pipeline_name,
        bigquery_table=None,
        pubsub_topic=None,
        local_prefix=None,
        streaming=False,
        bq_write_method="STREAMING_INSERTS",
        max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES,
    ):
        super().__init__()
        self._max_payload_bytes = max_payload_bytes
        self._write = WriteRecords(
            pipeline_name,
            bigquery=BigQueryTarget(bigquery_table, DEAD_LETTER_BQ_SCHEMA, "failed_at") if bigquery_table else None,
            bq_write_method=bq_write_method,
            pubsub_topic=pubsub_topic,
            local_prefix=local_prefix,
            streaming=streaming,
        )

    def expand(self, dead_letters):
        counted = dead_letters | "Count" >> beam.ParDo(CountDeadLetters(self._max_payload_bytes))
        for rejected in counted | "Write" >> self._write:
            rejected | "LogRejected" >> beam.Map(_log_rejected_dead_letter)
        return counted


def to_json_lines(rows):
    """A list of dicts -> their JSONL text, one string."""
    return "\n".join(map(to_json_line, rows))


def _jsonl_text(batch):
    """A list of dicts, or its JSONL text already -> [the text], or [] for an empty one."""
    if not batch:
        return []
    return [batch if isinstance(batch, str) else to_json_lines(batch)]


class WriteJsonLineBatches(beam.PTransform):
    """WriteJsonLines for lists of dicts: each list is written as one text element (its lines joined), so
    a batch costs one Beam element, not one per row; a batch already encoded (the text `to_json_lines`
    gives, as window features' backfill writes it) is written as it is. Empty ones write nothing."""

    def __init__(self, file_path_prefix, streaming=False, streaming_flush_seconds=60):
        super().__init__()
        self._prefix = file_path_prefix
        self._triggering_frequency = streaming_flush_seconds if streaming else None

    def expand(self, batches):
        if self._triggering_frequency:
            batches = (
                batches
                | "ReleaseToSinks" >> ReleaseToSinks()
                | "FlushWindows" >> beam.WindowInto(window.FixedWindows(self._triggering_frequency))
            )
        return (
            batches
            | "ToJson" >> beam.FlatMap(_jsonl_text)
            | "Write"
            >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".jsonl", triggering_frequency=self._triggering_frequency
            )
        )
