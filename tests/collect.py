"""Test observer for pipelines on local runners: elements appended to a local file as JSON lines
(closures do not work as collectors: runners pickle DoFns and run copies)."""

import json

import apache_beam as beam


class AppendJsonLines(beam.DoFn):
    def __init__(self, path):
        self._path = str(path)

    def process(self, element):
        with open(self._path, "a") as f:
            f.write(json.dumps(element, default=str, sort_keys=True) + "\n")


def read_lines(path):
    return sorted(path.read_text().splitlines()) if path.exists() else []
