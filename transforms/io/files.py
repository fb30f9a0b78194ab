"""Small file readers (local or gs://) for configs, reports and tests, and the event-file names of TensorBoard."""

import json
import socket
import time
import uuid

from apache_beam.io.filesystems import FileSystems


def event_file_name():
    return f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def read_text(path):
    """A whole text file, local or gs://."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def read_jsonl(pattern, limit=None):
    """The JSON lines of the files matching `pattern` (local or gs://; .gz read transparently), in file
    name order: all of them, or the first `limit`."""
    rows = []
    for match in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(match.path) as f:
            for line in f:
                if len(rows) == limit:
                    return rows
                if line.strip():
                    rows.append(json.loads(line))
    return rows
