"""Flex Template metadata cannot drift from the options; the image definition and launchers hold together."""

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.launch import parse_pipeline_options
from templates import launch_local
from templates.generate import render
from templates.specs import PARAMETERS, PIPELINES, option_actions

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_committed_metadata_is_generated_from_the_options(pipeline):
    committed = (ROOT / "templates" / pipeline / "metadata.json").read_text()
    assert committed == render(pipeline), "run: python -m templates.generate"


def test_every_option_has_a_parameter_and_every_parameter_an_option():
    options = {dest for spec in PIPELINES.values() for dest, _, _ in option_actions(spec["option_classes"])}
    assert options == set(PARAMETERS)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_each_sample_value_passes_the_regexes_and_the_parser(pipeline):
    spec = PIPELINES[pipeline]
    params = json.loads(render(pipeline))["parameters"]
    for param in params:
        name = param["name"]
        sample = PARAMETERS[name][2]
        for regex in param["regexes"]:
            assert re.match(regex, sample), (name, regex)
        options = parse_pipeline_options([f"--{name}={sample}"], "", spec["module"].OPTION_CLASSES)
        parsed = [
            getattr(options.view_as(cls), name) for cls in spec["option_classes"] if hasattr(options.view_as(cls), name)
        ][0]
        assert str(parsed) == sample, name
        assert param["helpText"] and param["label"]


@pytest.mark.parametrize(
    "name, value",
    [
        ("input_subscription", "projects/p/topics/t"),
        ("input_topic", "my-topic"),
        ("output_table", "just_a_table"),
        ("input_files", "/local/path.json"),
        ("window_seconds", "0"),
        ("bq_write_method", "FAST"),
        ("udf_path", "gs://bucket/udf.rb"),
        ("image_size", "224x"),
        ("splits", "train:0.7"),
        ("resize_method", "squash"),
    ],
)
def test_regexes_reject_wrong_values(name, value):
    assert not all(re.match(r, value) for r in PARAMETERS[name][1])


def test_dockerfile_references_existing_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)", dockerfile).group(1)
    assert (ROOT / entry).exists()
    assert "apache/beam_python3.11_sdk:2.77.0" in dockerfile
    assert "apache-beam[gcp,dataframe]==2.77.0" in (ROOT / "requirements.txt").read_text()


def _help(command):
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def help_outputs():
    """`--help` of each template's entry point and each pipeline module, in fresh processes, a few at a time
    (each is mostly its imports)."""
    commands = [
        (pipeline, command)
        for pipeline in sorted(PIPELINES)
        for command in (
            [sys.executable, f"templates/{pipeline}/main.py", "--help"],
            [sys.executable, "-m", f"pipelines.{pipeline}", "--help"],
        )
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        outputs = list(pool.map(_help, [command for _, command in commands]))
    return [(pipeline, command, out) for (pipeline, command), out in zip(commands, outputs, strict=True)]


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_entry_points_list_every_template_parameter(pipeline, help_outputs):
    names = [p["name"] for p in json.loads(render(pipeline))["parameters"]]
    runs = [(command, out) for name, command, out in help_outputs if name == pipeline]
    assert len(runs) == 2
    for command, out in runs:
        assert out.returncode == 0, out.stderr[-2000:]
        for name in names:
            assert f"--{name}" in out.stdout, (command, name)


def test_local_launch_runs_the_pipeline_with_template_parameters(tmp_path, capsys):
    params = tmp_path / "params.json"
    logs = tmp_path / "logs.jsonl"
    logs.write_text(
        '{"time": "2026-11-22T10:00:01Z", "method": "POST", "uri": "/login", "status": 500, '
        '"request_time": 0.01, "service": "profile-web"}\n{broken\n'
    )
    params.write_text(json.dumps({"input_files": str(logs), "output_dir": str(tmp_path / "out")}))
    launch_local.main(
        ["sli", "--parameters_file", str(params), "--parameters", "bq_write_method=FILE_LOADS", "--local_paths"]
    )
    assert "records in: 2  events: 1  dead letters: 1" in capsys.readouterr().out
    rows = [
        json.loads(line) for f in (tmp_path / "out").glob("sli_rows-*.jsonl") for line in f.read_text().splitlines()
    ]
    [avail] = [r for r in rows if r["sli_id"] == "profile-web/login/availability"]
    assert (avail["window_start"], avail["total"], avail["bad"]) == ("2026-11-22T10:00:00+00:00", 1, 1)


def test_local_launch_of_the_image_template(tmp_path, capsys):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "not-an-image.jpg").write_bytes(b"text")
    launch_local.main(
        [
            "image_ingest",
            "--parameters",
            f"input_dir={tmp_path},output_dir={tmp_path / 'out'},image_size=64x48",
            "--local_paths",
        ]
    )
    assert (
        "inputs: 1  accepted: 0  duplicates: 0  over the cap: 0  rejected (dead letters): 1" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sli", "--parameters", "nope=1"], "parameter 'nope' is not a parameter of the sli template"),
        (["sli", "--parameters", "output_dir=/tmp/x"], "parameter 'output_dir': '/tmp/x' does not match"),
        (["sli", "--parameters", "window_seconds"], "'window_seconds' is not NAME=VALUE"),
    ],
)
def test_local_launch_rejects_what_dataflow_would(argv, words):
    with pytest.raises(SystemExit) as err:
        launch_local.main(argv)
    assert words in str(err.value)
