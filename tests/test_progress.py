"""Progress lines on local batch runs: printed by the counting DoFn, and only added where they belong."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import add_progress
from transforms.io.progress import CountProgress


def test_progress_lines_count_records_and_dead_letters(capsys):
    read, dead = CountProgress("demo-a", "read", interval_seconds=0), CountProgress("demo-a", "dead letters", 0)
    read.setup()
    dead.setup()
    for element in range(3):
        read.process(element)
    dead.process({"reason": "x"})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("[demo-a]")
    assert "records read 3 (" in lines[-1] and lines[-1].endswith("dead letters 1")


@pytest.mark.parametrize(
    "flags, added",
    [
        (["--runner", "FnApiRunner"], True),
        (["--runner", "FnApiRunner", "--progress", "off"], False),
        (["--runner", "BundleBasedDirectRunner", "--streaming"], False),
        (["--runner", "DataflowRunner"], False),
    ],
)
def test_progress_only_on_local_batch_runs(flags, added):
    pipeline = beam.Pipeline()
    records = pipeline | "Records" >> beam.Create([1])
    add_progress(PipelineOptions(flags), "demo-b", records, records)
    labels = {t.full_label for t in pipeline.transforms_stack[0].parts}
    assert ("ProgressRead" in labels) == added and ("ProgressDeadLetters" in labels) == added
