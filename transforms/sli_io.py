"""Sources and sinks of the SLI pipeline, as composites so tests can swap them for Create/TestStream."""
import datetime

import apache_beam as beam
from apache_beam.io.gcp.bigtableio import WriteToBigTable

from transforms.sinks import ReleaseToSinks, WriteBigQueryRows, WriteJsonLines, WriteJsonToPubSub, to_json_line
from transforms.sli import SLI_ROW_BQ_SCHEMA
from transforms.slo import SLO_STATUS_BQ_SCHEMA

BIGTABLE_COLUMN_FAMILY = "sli"


class ReadLogRecords(beam.PTransform):
    """Raw log records from exactly one source: Pub/Sub subscription or topic (PubsubMessage with
    attributes), newline-delimited JSON files (str lines; .gz read transparently; local or gs:// globs),
    or a BigQuery table holding a Cloud Logging export (dict rows)."""

    def __init__(self, subscription=None, topic=None, file_pattern=None, table=None):
        super().__init__()
        given = [x for x in (subscription, topic, file_pattern, table) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of --input_subscription, --input_topic, --input_files, --input_table")
        self._subscription, self._topic, self._files, self._table = subscription, topic, file_pattern, table

    def expand(self, pbegin):
        if self._subscription or self._topic:
            return pbegin | "ReadPubsub" >> beam.io.ReadFromPubSub(
                subscription=self._subscription, topic=self._topic, with_attributes=True)
        if self._files:
            return pbegin | "ReadFiles" >> beam.io.ReadFromText(self._files)
        return pbegin | "ReadBigQuery" >> beam.io.ReadFromBigQuery(
            table=self._table, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ)


def bigtable_row_key(row):
    """`<sli_id>#<window_start as YYYY-MM-DDTHH:MM:SSZ>`: one SLI's windows are contiguous and in time
    order, so a prefix scan returns its series and a key range returns a time range."""
    start = datetime.datetime.fromisoformat(row["window_start"]).astimezone(datetime.timezone.utc)
    return f"{row['sli_id']}#{start:%Y-%m-%dT%H:%M:%SZ}"


def slo_status_row_key(row):
    """`~slo#<slo name>`: one row per SLO holding its latest status ('~' sorts after every service name,
    which starts with a letter or digit, so SLO rows never interleave with SLI series)."""
    return f"~slo#{row['slo']}"


class ToBigtableRows(beam.DoFn):
    """Row dict -> DirectRow under `row_key(row)`, every non-null field a UTF-8 cell in family `sli`
    (lists as JSON), cell timestamp from `time_field`: a newer pane or evaluation replaces the cell (the
    family keeps one version). Creates the table and column family on first use if they are missing."""

    def __init__(self, project, instance, table, row_key=bigtable_row_key, time_field="emitted_at"):
        self._project, self._instance, self._table = project, instance, table
        self._row_key, self._time_field = row_key, time_field

    def setup(self):
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import bigtable
        from google.cloud.bigtable import column_family

        client = bigtable.Client(project=self._project, admin=True)
        table = client.instance(self._instance).table(self._table)
        try:
            if not table.exists():
                table.create(column_families={BIGTABLE_COLUMN_FAMILY: column_family.MaxVersionsGCRule(1)})
        except AlreadyExists:
            pass  # another worker created it first
        client.close()

    def process(self, row):
        from google.cloud.bigtable.row import DirectRow

        direct_row = DirectRow(row_key=self._row_key(row).encode("utf-8"))
        cell_time = datetime.datetime.fromisoformat(row[self._time_field])
        for name, value in row.items():
            if value is not None:
                text = to_json_line(value) if isinstance(value, (list, dict)) else str(value)
                direct_row.set_cell(BIGTABLE_COLUMN_FAMILY, name.encode(), text.encode("utf-8"), cell_time)
        yield direct_row


class WriteBigtableRows(beam.PTransform):
    """Rows to Bigtable through ToBigtableRows; `bigtable` is (project, instance, table)."""

    def __init__(self, bigtable, row_key=bigtable_row_key, time_field="emitted_at"):
        super().__init__()
        self._bigtable, self._row_key, self._time_field = bigtable, row_key, time_field

    def expand(self, rows):
        project, instance, table = self._bigtable
        return (rows
                | "ToDirectRows" >> beam.ParDo(ToBigtableRows(project, instance, table, self._row_key,
                                                              self._time_field))
                | "Write" >> WriteToBigTable(project_id=project, instance_id=instance, table_id=table))


class WriteSliRows(beam.PTransform):
    """Writes SLI rows to each sink configured; returns a tuple of dead-letter PCollections (rows BigQuery
    rejected), empty when no sink can reject rows.

    BigQuery: day-partitioned on window_start, clustered by sli_id, created if missing."""

    def __init__(self, bigquery_table=None, bq_write_method="STREAMING_INSERTS", bigtable=None,
                 local_prefix=None, streaming=False, pipeline_name="sli"):
        super().__init__()
        self._table = bigquery_table
        self._method = bq_write_method
        self._bigtable = bigtable  # (project, instance, table) or None
        self._local_prefix = local_prefix
        self._streaming = streaming
        self._pipeline = pipeline_name

    def expand(self, rows):
        rows = rows | "ReleaseToSinks" >> ReleaseToSinks()
        dead_letters = ()
        if self._table:
            dead_letters += rows | "ToBigQuery" >> WriteBigQueryRows(
                self._table, SLI_ROW_BQ_SCHEMA, self._method, "window_start", ["sli_id"],
                self._pipeline, "WriteSliRows/ToBigQuery")
        if self._bigtable:
            rows | "ToBigtable" >> WriteBigtableRows(self._bigtable)
        if self._local_prefix:
            rows | "ToFiles" >> WriteJsonLines(self._local_prefix, streaming=self._streaming)
        return dead_letters


class WriteSloOutputs(beam.PTransform):
    """SLO status rows (BigQuery, day-partitioned on evaluated_at, clustered by slo; Bigtable latest status;
    local JSONL) or alert transitions (Pub/Sub JSON; local JSONL). Returns dead letters for rows BigQuery
    rejected."""

    def __init__(self, bigquery_table=None, bq_write_method="STREAMING_INSERTS", pubsub_topic=None,
                 bigtable=None, local_prefix=None, streaming=False, pipeline_name="sli"):
        super().__init__()
        self._table, self._method, self._topic = bigquery_table, bq_write_method, pubsub_topic
        self._bigtable = bigtable  # (project, instance, table): latest status per SLO
        self._local_prefix, self._streaming, self._pipeline = local_prefix, streaming, pipeline_name

    def expand(self, records):
        records = records | "ReleaseToSinks" >> ReleaseToSinks()
        dead_letters = ()
        if self._table:
            dead_letters += records | "ToBigQuery" >> WriteBigQueryRows(
                self._table, SLO_STATUS_BQ_SCHEMA, self._method, "evaluated_at", ["slo"],
                self._pipeline, "WriteSloStatus/ToBigQuery")
        if self._topic:
            records | "ToPubsub" >> WriteJsonToPubSub(self._topic)
        if self._bigtable:
            records | "ToBigtable" >> WriteBigtableRows(self._bigtable, slo_status_row_key, "evaluated_at")
        if self._local_prefix:
            records | "ToFiles" >> WriteJsonLines(self._local_prefix, streaming=self._streaming)
        return dead_letters
