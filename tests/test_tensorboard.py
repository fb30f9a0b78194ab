"""TensorBoard event files of two SLI runs and a feature-statistics run: read back with TensorFlow's summary
iterator, then served by TensorBoard itself (its HTTP data API, and the scalars dashboard in headless
Chromium), and checked against the pipelines' own rows and statistics."""

import collections
import datetime
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import PIL.Image
import pytest

from pipelines import feature_stats, sli
from tests.harness import _wait, free_port
from tests.oracle import sample_truth
from tests.test_feature_pipeline import run_pipeline
from tests.test_sli_pipeline import read_rows, subset_file  # noqa: F401 - the module fixture
from tests.test_slo_report import _chromium

SLI_RUNS = ("first", "second")
# TensorBoard's default run colours (its palette's first four): the chart lines of the runs shown
RUN_COLOURS = [(0xFF, 0x70, 0x43), (0x00, 0x77, 0xBB), (0xCC, 0x33, 0x11), (0x33, 0xBB, 0xEE)]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tb")


@pytest.fixture(scope="module")
def sli_runs(subset_file, logdir, tmp_path_factory):  # noqa: F811
    """Two SLI runs side by side in `<logdir>/sli`, on the first 5,001 sample lines and the 5,000 after them
    (so their charts differ): per run its rows (unmatched ones left out, as the writer does) and the time
    span in which it ran."""
    out = tmp_path_factory.mktemp("sli_out")
    later = out / "later.jsonl"
    later.write_text("\n".join(sample_truth()[0][5001:10001]) + "\n")
    runs = {}
    for run, input_file in zip(SLI_RUNS, (subset_file[0], later), strict=True):
        start = time.time()
        sli.run(
            [
                "--input_files",
                str(input_file),
                "--output_dir",
                str(out / run),
                "--tensorboard_dir",
                str(logdir / "sli"),
                "--tensorboard_run",
                run,
            ]
        )
        rows = [r for r in read_rows(out / run) if r["sli_kind"] != "unmatched"]
        runs[run] = rows, (start, time.time())
    return runs


@pytest.fixture(scope="module")
def feature_run(logdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("features_out")
    run_pipeline(
        feature_stats.SAMPLE_SPEC, out, "--tensorboard_dir", str(logdir / "features"), "--tensorboard_run", "churn-v1"
    )
    return json.loads((out / "statistics.json").read_text())


def expected_points(rows):
    """tag -> sorted (step, value) from SLI rows, as the manual defines them: the SLI's value at the
    window end (epoch seconds), and the latencies of each journey's first SLI (availability here)."""
    points = collections.defaultdict(list)
    for row in rows:
        end = int(datetime.datetime.fromisoformat(row["window_end"]).timestamp())
        value = {"error_rate": row["error_rate"], "throughput": row["throughput_rps"]}.get(
            row["sli_kind"], row["good_fraction"]
        )
        points[row["sli_id"]].append((end, value))
        if row["sli_name"] == "availability":
            journey = f"{row['service']}/{row['journey']}"
            points[f"{journey}/latency_p50_ms"].append((end, row["latency_p50_ms"]))
            points[f"{journey}/latency_p99_ms"].append((end, row["latency_p99_ms"]))
    return {tag: sorted(p) for tag, p in points.items()}


def assert_same_points(actual, expected):
    """(step, value) lists equal, values to float32 precision (the event files hold float32)."""
    assert [s for s, _ in actual] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in actual], [v for _, v in expected], rtol=1e-6)


def read_events(run_dir):
    """tag -> [(step, wall time, value as numpy array)], and the plugin names seen, from a run's event files."""
    import tensorflow as tf

    points, plugins = collections.defaultdict(list), set()
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                points[value.tag].append((event.step, event.wall_time, tf.make_ndarray(value.tensor)))
    return points, plugins


def test_summaries_match_the_rows(sli_runs, logdir):
    assert sorted(p.name for p in (logdir / "sli").iterdir()) == list(SLI_RUNS)
    for run, (rows, (start, end)) in sli_runs.items():
        points, plugins = read_events(logdir / "sli" / run)
        assert plugins == {"scalars"}
        expected = expected_points(rows)
        assert sorted(points) == sorted(expected)  # nothing else
        for tag, series in points.items():
            assert_same_points(sorted((step, float(v)) for step, _, v in series), expected[tag])  # nothing twice
            assert all(start <= wall <= end for _, wall, _ in series)  # wall time: when the run wrote it


def test_a_bundle_is_written_in_step_order(tmp_path):
    """Windows out of order and a late pane in one bundle: written by step (TensorBoard's default loader
    would drop points above a step that goes back), the late pane after the pane it completes."""
    from pipelines.sli import SAMPLE_CONFIG
    from transforms.sli.config import load_sli_config
    from transforms.sli.tensorboard import WriteSliSummaries

    writer = WriteSliSummaries(load_sli_config(SAMPLE_CONFIG), str(tmp_path))
    writer.setup()
    writer.start_bundle()
    for minute, good_fraction in [(3, 0.3), (1, 0.1), (3, 0.35), (2, 0.2)]:
        writer.process(
            {
                "sli_kind": "latency",
                "sli_id": "profile-web/login/latency_500ms",  # not the journey's first SLI: no latency points
                "window_end": f"2026-11-22T00:0{minute}:00+00:00",
                "good_fraction": good_fraction,
                "error_rate": 1 - good_fraction,
                "throughput_rps": 1.0,
            }
        )
    writer.finish_bundle()
    writer.teardown()
    points, _ = read_events(tmp_path)
    day = 1795305600  # 2026-11-22T00:00:00Z in epoch seconds
    assert list(points) == ["profile-web/login/latency_500ms"]
    assert [(step, float(v)) for step, _, v in points["profile-web/login/latency_500ms"]] == [
        (day + 60, pytest.approx(0.1)),
        (day + 120, pytest.approx(0.2)),
        (day + 180, pytest.approx(0.3)),
        (day + 180, pytest.approx(0.35)),
    ]


def test_run_name_needs_a_directory():
    with pytest.raises(SystemExit, match="--tensorboard_run needs --tensorboard_dir"):
        sli.run(["--tensorboard_run", "x"])


def test_feature_statistics_summaries(feature_run, logdir):
    for split in ("train", "eval"):
        points, plugins = read_events(logdir / "features" / "churn-v1" / split)
        assert plugins == {"scalars", "histograms"}
        assert all(step == 0 for series in points.values() for step, _, _ in series)
        for name, f in feature_run[split]["features"].items():
            assert points[f"{name}/count"][0][2] == f["count"]
            assert points[f"{name}/missing_rate"][0][2] == pytest.approx(f["missing"] / f["count"])
            if f["type"] == "numeric":
                assert points[f"{name}/mean"][0][2] == pytest.approx(f["mean"], rel=1e-6)
                # the statistics' own bins, exactly (float64), not re-binned
                np.testing.assert_array_equal(
                    points[f"{name}/histogram"][0][2], [[b["low"], b["high"], b["count"]] for b in f["histogram"]]
                )
            else:
                assert points[f"{name}/distinct"][0][2] == f["distinct"]


@pytest.fixture(scope="module")
def tensorboard(sli_runs, feature_run, logdir):
    """TensorBoard on all three runs, as `make tensorboard` starts it; its base URL. Ready once it serves
    every SLI run's points of one tag (the loader reads runs in the background)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--load_fast=false",
            "--samples_per_plugin",
            "scalars=50000",
        ]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    probe = "profile-web/login/availability"
    try:
        _wait(
            lambda: (
                all(
                    len(get(url, "scalars/scalars", run=f"sli/{run}", tag=probe))
                    == len(expected_points(sli_runs[run][0])[probe])
                    for run in SLI_RUNS
                )
                and all(get(url, "histograms/tags").get(f"features/churn-v1/{split}") for split in ("train", "eval"))
            ),
            "TensorBoard",
        )
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def get(url, path, **params):
    with urllib.request.urlopen(f"{url}/data/plugin/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return json.load(r)


def test_tensorboard_serves_the_sli_runs(tensorboard, sli_runs):
    with urllib.request.urlopen(f"{tensorboard}/data/runs", timeout=30) as r:
        assert sorted(json.load(r)) == [
            "features/churn-v1/eval",
            "features/churn-v1/train",
            *(f"sli/{run}" for run in SLI_RUNS),
        ]
    tags = get(tensorboard, "scalars/tags")
    for run, (rows, (start, end)) in sli_runs.items():
        expected = expected_points(rows)
        assert sorted(tags[f"sli/{run}"]) == sorted(expected)
        for tag in expected:
            served = get(tensorboard, "scalars/scalars", run=f"sli/{run}", tag=tag)  # [wall time, step, value]
            assert_same_points(sorted((step, value) for _, step, value in served), expected[tag])
            assert all(start <= wall <= end for wall, _, _ in served)


def test_tensorboard_serves_the_feature_statistics(tensorboard, feature_run):
    for split in ("train", "eval"):
        run = f"features/churn-v1/{split}"
        for name, f in feature_run[split]["features"].items():
            [[_, step, count]] = get(tensorboard, "scalars/scalars", run=run, tag=f"{name}/count")
            assert (step, count) == (0, f["count"])
            if f["type"] == "numeric":
                [[_, step, bins]] = get(tensorboard, "histograms/histograms", run=run, tag=f"{name}/histogram")
                assert step == 0
                np.testing.assert_allclose(bins, [[b["low"], b["high"], b["count"]] for b in f["histogram"]])


def test_scalars_dashboard_draws_both_runs(tensorboard, tmp_path):
    png = tmp_path / "scalars.png"
    _chromium(
        "--window-size=1280,900",
        "--virtual-time-budget=20000",
        f"--screenshot={png}",
        f"{tensorboard}/#scalars&tagFilter=availability",
    )
    with PIL.Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # a rendered page, not a blank one
    charts = pixels[180:, 340:]  # right of the run selector, whose checkboxes have the run colours too
    drawn = [np.sum(np.abs(charts - colour).sum(axis=2) < 30) for colour in RUN_COLOURS]
    assert sum(n > 100 for n in drawn) >= 2, drawn  # the lines of two runs
