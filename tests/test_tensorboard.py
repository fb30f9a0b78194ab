"""TensorBoard event files written by the SLI pipeline, read back with TensorFlow's summary iterator and
checked against the pipeline's own rows."""

import datetime
import json

import pytest

from pipelines import sli
from tests.test_sli_pipeline import read_rows, subset_file  # noqa: F401 - the module fixture


def read_events(run_dir):
    import tensorflow as tf

    points = []
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                points.append((value.tag, event.step, event.wall_time, value.simple_value))
    return files, points


def test_summaries_match_the_rows(subset_file, tmp_path):  # noqa: F811
    out, logdir = tmp_path / "out", tmp_path / "tb"
    for run in ("first", "second"):  # two runs side by side, as TensorBoard compares them
        sli.run(
            [
                "--input_files",
                str(subset_file[0]),
                "--output_dir",
                str(out / run),
                "--tensorboard_dir",
                str(logdir),
                "--tensorboard_run",
                run,
            ]
        )
    assert sorted(p.name for p in logdir.iterdir()) == ["first", "second"]
    files, points = read_events(logdir / "first")
    assert files
    rows = [r for r in read_rows(out / "first") if r["sli_kind"] != "unmatched"]
    by_tag_step = {(tag, step): (wall, value) for tag, step, wall, value in points}
    first_sli = {"availability"}  # the sample journeys' first SLI
    expected = 0
    for row in rows:
        end = int(datetime.datetime.fromisoformat(row["window_end"]).timestamp())
        value = {"error_rate": row["error_rate"], "throughput": row["throughput_rps"]}.get(
            row["sli_kind"], row["good_fraction"]
        )
        wall, got = by_tag_step[(row["sli_id"], end)]
        assert wall == end and got == pytest.approx(value, rel=1e-6)  # float32 in the event file
        expected += 1
        if row["sli_name"] in first_sli:
            journey = f"{row['service']}/{row['journey']}"
            assert by_tag_step[(f"{journey}/latency_p50_ms", end)][1] == pytest.approx(row["latency_p50_ms"], rel=1e-6)
            assert by_tag_step[(f"{journey}/latency_p99_ms", end)][1] == pytest.approx(row["latency_p99_ms"], rel=1e-6)
            expected += 2
    assert len(points) == expected  # nothing else, nothing twice


def test_run_name_needs_a_directory():
    with pytest.raises(SystemExit, match="--tensorboard_run needs --tensorboard_dir"):
        sli.run(["--tensorboard_run", "x"])


def test_feature_statistics_summaries(tmp_path):
    import numpy as np
    import tensorflow as tf

    from pipelines import feature_stats
    from tests.test_feature_pipeline import run_pipeline

    run_pipeline(
        feature_stats.SAMPLE_SPEC,
        tmp_path / "out",
        "--tensorboard_dir",
        str(tmp_path / "tb"),
        "--tensorboard_run",
        "churn-v1",
    )
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())
    for split in ("train", "eval"):
        scalars, histograms = {}, {}
        for path in (tmp_path / "tb" / "churn-v1" / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        histograms[value.tag] = tf.make_ndarray(value.tensor)
                        assert value.metadata.plugin_data.plugin_name == "histograms"
                    else:
                        scalars[value.tag] = value.simple_value
        for name, f in stats[split]["features"].items():
            assert scalars[f"{name}/count"] == f["count"]
            assert scalars[f"{name}/missing_rate"] == pytest.approx(f["missing"] / f["count"])
            if f["type"] == "numeric":
                assert scalars[f"{name}/mean"] == pytest.approx(f["mean"], rel=1e-6)
                np.testing.assert_allclose(
                    histograms[f"{name}/histogram"], [[b["low"], b["high"], b["count"]] for b in f["histogram"]]
                )
            else:
                assert scalars[f"{name}/distinct"] == f["distinct"]
