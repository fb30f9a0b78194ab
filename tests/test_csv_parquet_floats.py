"""One table as CSV (floats written with repr) and as Parquet (pyarrow) reads back through ReadRecords, and
the Parquet file through ReadRecordBatches (Arrow tables), as bit-identical values, the originals, so all
give the same statistics."""

import json
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.features.statistics import SplitStats, raw_table
from transforms.io.record_batches import ReadRecordBatches
from transforms.io.sources import Input, ReadRecords


def _seventeen_digit_floats(n, seed=5):
    """Floats of many magnitudes whose shortest repr needs all 17 significant digits (the values a parser
    that is a few ulp off gets wrong)."""
    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n:
        v = float(rng.uniform(-1, 1) * 10.0 ** rng.integers(-30, 30))
        if len(re.sub(r"e.*|[-.]", "", repr(v)).strip("0")) == 17:
            values.append(v)
    return values


def test_csv_and_parquet_floats_read_back_bit_identical_with_equal_statistics(tmp_path):
    values = _seventeen_digit_floats(300)
    ids = [f"k{i:04d}" for i in range(len(values))]
    with open(tmp_path / "table.csv", "w") as f:
        f.write("id,x\n" + "".join(f"{k},{v!r}\n" for k, v in zip(ids, values, strict=True)))
    pq.write_table(pa.table({"id": ids, "x": values}), tmp_path / "table.parquet")
    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as p:
        for fmt in ("csv", "parquet"):
            (
                p
                | f"Read{fmt}" >> ReadRecords(Input(input_files=str(tmp_path / f"table.{fmt}")))
                | f"Hex{fmt}" >> beam.Map(lambda row: json.dumps([row["id"], float(row["x"]).hex()]))
                | f"Write{fmt}" >> beam.io.WriteToText(str(tmp_path / f"read-{fmt}"), shard_name_template="")
            )
        (
            p
            | "ReadBatches" >> ReadRecordBatches(str(tmp_path / "table.parquet"), "parquet", "test")
            | "Rows" >> beam.FlatMap(lambda table: table.to_pylist())
            | "HexBatches" >> beam.Map(lambda row: json.dumps([row["id"], row["x"].hex()]))
            | "WriteBatches" >> beam.io.WriteToText(str(tmp_path / "read-batches"), shard_name_template="")
        )
    expected = sorted(zip(ids, (v.hex() for v in values), strict=True))
    statistics = {}
    for fmt in ("csv", "parquet", "batches"):
        read = sorted(tuple(json.loads(line)) for line in (tmp_path / f"read-{fmt}").read_text().splitlines())
        assert read == expected, fmt
        stats = SplitStats(["x"], [])
        stats.add(raw_table([{"x": float.fromhex(x)} for _, x in read], ["x"], []))
        statistics[fmt] = stats.extract()
    assert statistics["csv"] == statistics["parquet"] == statistics["batches"]
    assert statistics["csv"]["features"]["x"]["min"] == min(values)
