"""Pieces every sink shares: re-windowing for output, and newline-delimited JSON files."""
import json
import time

import apache_beam as beam
from apache_beam.transforms import window


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
