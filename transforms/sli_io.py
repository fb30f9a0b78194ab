"""The SLI pipeline's source (a composite, so tests can swap it for Create/TestStream) and the row keys
of its Bigtable rows."""
import datetime

import apache_beam as beam

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
