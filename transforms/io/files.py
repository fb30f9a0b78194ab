"""Small file readers (local or gs://) for configs, reports and tests, the metadata of TensorBoard summaries, and
the splitter of multi-line JSON log files into records."""

import json
import re

import orjson
from apache_beam.io.filesystems import FileSystems


def summary_metadata(plugin_name, data_class):
    """What tells TensorBoard which dashboard draws a `tf.summary.write` tensor (plugin `scalars` or `histograms`).
    `tf.summary.scalar`/`histogram` would add it themselves, but they live in the tensorboard package, which
    workers do not install; `tf.summary.write` is TensorFlow's own."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name), data_class=data_class
    )


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
                    rows.append(_json_line(line))
    return rows


def _json_line(line):
    """orjson's decode, json's where orjson would not give json's values: a line that may hold an integer
    outside 64 bits (19 digits or more; orjson reads one as a float) or a NaN (which orjson refuses), as
    sinks.to_json_line writes them with json."""
    if not _LONG_DIGITS.search(line):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return json.loads(line)


_LONG_DIGITS = re.compile(rb"\d{19}")


def is_json_lines(head):
    """Whether a file whose first bytes are `head` (byte-order mark removed) is JSONL: its first line is a whole
    JSON object, or it starts with something other than `{` or `[` (then each line is one bad record). Else it
    is read with JsonValueSplitter."""
    text = head.lstrip()
    if not text.startswith((b"{", b"[")):
        return True
    try:
        return isinstance(orjson.loads(text.split(b"\n", 1)[0]), dict)
    except orjson.JSONDecodeError:
        return False


_IN_VALUE = re.compile(rb'[][{}",\n]')
_IN_STRING = re.compile(rb'["\\\n]')
_BETWEEN = re.compile(rb"[^ \t\r]")
_OPEN, _CLOSE = b"{[", b"}]"


class JsonValueSplitter:
    """Splits a file of JSON values into records (bytes, each decoded later by the parse step), without decoding
    them or holding more than one record: concatenated values (logback's pretty-printed objects), or arrays
    whose elements are the records (log4j2 `JsonLayout` with complete=true, a footer `]` optional), one per
    line or spread over many. A line starting with `{` or `[` in its first column starts a new value, so a
    value cut short by a crash is one bad record, not the rest of the file; text outside any value is one
    bad record per line. A record over `max_bytes` arrives cut to max_bytes + 1 bytes (the parse step
    dead-letters it as too_large). Feed it chunks in order, then `close()`."""

    def __init__(self, max_bytes):
        self._max = max_bytes
        self._parts = None  # the record being read, None between records
        self._size = self._depth = 0
        self._kind = None  # "value" (an object at the top), "element" (of an array) or "line" (anything else)
        self._in_array = self._in_string = self._skip = False
        self._col0 = True  # the next byte starts a line

    def feed(self, chunk):
        records, i, n, start = [], 0, len(chunk), 0
        if self._skip:  # the byte escaped by the previous chunk's last backslash
            i, self._skip = 1, False
        while i < n:
            if self._parts is None:
                i = self._between(chunk, i)
                start = i
                continue
            if self._col0:
                self._col0 = False
                if chunk[i] in _OPEN:  # a new value: the unfinished one is a record of its own
                    records.append(self._end(chunk, start, i))
                    self._col0 = True
                    continue
            if self._kind == "line":
                end = chunk.find(b"\n", i)
                if end < 0:
                    break
                records.append(self._end(chunk, start, end))
                i = end
                continue
            if self._in_string:
                m = _IN_STRING.search(chunk, i)
                if m is None:
                    break
                i = m.start()
                if chunk[i] == 0x5C:  # backslash
                    i += 2
                    self._skip = i > n
                    continue
                self._in_string = False
                i += chunk[i] == 0x22  # a closing quote; a newline ends a broken string and is read below
                continue
            m = _IN_VALUE.search(chunk, i)
            if m is None:
                break
            i, c = m.start(), chunk[m.start()]
            if c == 0x22:
                self._in_string = True
            elif c in _OPEN:
                self._depth += 1
            elif c == 0x0A:
                self._col0 = True
            elif self._depth == 0 and self._kind == "element" and c in b",]":
                records.append(self._end(chunk, start, i))
                self._in_array = c == 0x2C
            elif c in _CLOSE and self._depth > 0:
                self._depth -= 1
                if self._depth == 0 and self._kind == "value":
                    records.append(self._end(chunk, start, i + 1))
            i += 1
        if self._parts is not None:
            self._take(chunk, start, n)
        return records

    def close(self):
        """The last record, if the file ended inside one."""
        return [] if self._parts is None else [self._end(b"", 0, 0)]

    def _between(self, chunk, i):
        """Skips to the next record and opens it; returns where it starts (or len(chunk))."""
        m = _BETWEEN.search(chunk, i)
        if m is None:
            self._col0 = False
            return len(chunk)
        at_col0, self._col0 = self._col0 and m.start() == i, False
        i, c = m.start(), chunk[m.start()]
        if c == 0x0A:
            self._col0 = True
        elif c == 0x5B and (not self._in_array or at_col0):  # an array at the top, or a new one (a restart)
            self._in_array = True
        elif self._in_array and c == 0x2C:
            pass
        elif self._in_array and c == 0x5D:
            self._in_array = False
        else:
            self._parts, self._size, self._depth, self._in_string = [], 0, 0, False
            self._kind = "element" if self._in_array else "value" if c == 0x7B else "line"
            return i
        return i + 1

    def _take(self, chunk, start, end):
        if self._size <= self._max:
            self._parts.append(chunk[start : min(end, start + self._max + 1 - self._size)])
        self._size += end - start

    def _end(self, chunk, start, end):
        self._take(chunk, start, end)
        record, self._parts = b"".join(self._parts), None
        return record if self._size > self._max else record.rstrip(b" \t\r\n")
