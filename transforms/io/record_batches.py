"""Inputs as Arrow tables, for the columnar pipelines: a batch of rows per element instead of a record.

Parquet is read by Beam's `ReadFromParquetBatched` (a table per row group, split by Beam across workers);
each table counts its rows into `<pipeline>:records_in`. Other inputs arrive one record at a time
(sources.ReadRecords) and are batched after their per-record step."""

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.io.sources import detect_format


def batched_format(source, file_format=None):
    """The format of the input when it can be read as Arrow tables ("parquet"), else None."""
    if not source.input_files:
        return None
    fmt = file_format or detect_format(source.input_files)
    return fmt if fmt == "parquet" else None


def _count_rows(table, counter):
    counter.inc(table.num_rows)
    return table


class ReadRecordBatches(beam.PTransform):
    """Arrow tables from the files of `pattern` in `fmt` (see batched_format), counted as records read."""

    def __init__(self, pattern, fmt, pipeline_name):
        super().__init__()
        self._pattern, self._format, self._pipeline = pattern, fmt, pipeline_name

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadParquetBatched" >> beam.io.ReadFromParquetBatched(self._pattern)
            | "CountRecordsIn" >> beam.Map(_count_rows, Metrics.counter(self._pipeline, "records_in"))
        )
