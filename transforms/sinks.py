"""Pieces every sink shares: re-windowing for output, JSONL files, BigQuery tables, the dead-letter sink."""
import json
import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from transforms.deadletter import DEAD_LETTER_BQ_SCHEMA, make_dead_letter


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
            | "Write" >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".jsonl", triggering_frequency=self._triggering_frequency
            )
        )


class WriteJsonToPubSub(beam.PTransform):
    """One Pub/Sub message per dict, its JSON as the body."""

    def __init__(self, topic):
        super().__init__()
        self._topic = topic

    def expand(self, records):
        return (records
                | "ToMessage" >> beam.Map(lambda r: to_json_line(r).encode("utf-8"))
                | "Publish" >> beam.io.WriteToPubSub(self._topic))


class WriteBigQueryRows(beam.PTransform):
    """WriteToBigQuery into a day-partitioned (and optionally clustered) table created if missing.
    Returns the dead letters of rows BigQuery rejected (streaming inserts report them; other methods fail
    the bundle instead), as a one-element tuple, or an empty tuple."""

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
        )
        if self._method != "STREAMING_INSERTS":
            return ()
        pipeline, step = self._pipeline, self._step
        return (result.failed_rows_with_errors | "RejectedToDeadLetters" >> beam.Map(
            lambda failed: make_dead_letter(pipeline, step, failed[1], f"BigQuery rejected the row: {failed[2]}")),)


def _log_rejected_dead_letter(dead_letter):
    Metrics.counter(dead_letter["pipeline"], "dead_letters_rejected_by_bigquery").inc()
    logging.error("BigQuery rejected a dead letter; its content: %s", to_json_line(dead_letter))


class CountDeadLetters(beam.DoFn):
    """Counts dead letters per pipeline and reason (Beam metrics `<pipeline>:dead_letters_<reason>`)."""

    def process(self, dead_letter):
        Metrics.counter(dead_letter["pipeline"], "dead_letters").inc()
        Metrics.counter(dead_letter["pipeline"], f"dead_letters_{dead_letter['reason']}").inc()
        yield dead_letter


class WriteDeadLetters(beam.PTransform):
    """Writes dead letters to every sink configured: BigQuery table, Pub/Sub topic, local JSONL prefix."""

    def __init__(self, bigquery_table=None, pubsub_topic=None, local_prefix=None, streaming=False,
                 bq_write_method="STREAMING_INSERTS"):
        super().__init__()
        self._table = bigquery_table
        self._topic = pubsub_topic
        self._local_prefix = local_prefix
        self._streaming = streaming
        self._bq_write_method = bq_write_method

    def expand(self, dead_letters):
        counted = (dead_letters
                   | "Count" >> beam.ParDo(CountDeadLetters())
                   | "ReleaseToSinks" >> ReleaseToSinks())
        if self._table:
            for rejected in counted | "ToBigQuery" >> WriteBigQueryRows(
                    self._table, DEAD_LETTER_BQ_SCHEMA, self._bq_write_method, "failed_at"):
                rejected | "LogRejected" >> beam.Map(_log_rejected_dead_letter)  # nowhere left to send them
        if self._topic:
            counted | "ToPubsub" >> WriteJsonToPubSub(self._topic)
        if self._local_prefix:
            counted | "ToFiles" >> WriteJsonLines(self._local_prefix, streaming=self._streaming)
        return counted
