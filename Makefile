# The two commands a new machine needs: `make demo` and `make test` (each installs what it needs first).
PY := .venv/bin/python

.PHONY: bootstrap demo test lint format services loop bench tensorboard

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap  ## run the SLI pipeline on its bundled sample, locally
	$(PY) -m pipelines.sli

test: bootstrap  ## the whole suite in two pytest-xdist workers, emulators included (started once, stopped at the end)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: bootstrap  ## ruff: the linter and the formatter's check (settings in pyproject.toml)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: bootstrap  ## ruff: fix what can be fixed, then format
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

TENSORBOARD_DIR ?= output/tensorboard
tensorboard: bootstrap  ## TensorBoard on the runs under TENSORBOARD_DIR (the manuals' --tensorboard_dir; gs:// works)
	.venv/bin/tensorboard --logdir $(TENSORBOARD_DIR) --load_fast=false --samples_per_plugin scalars=50000

services: bootstrap  ## start the local emulators for manual runs; prints the env to export
	$(PY) -m tests.harness

loop: bootstrap  ## the serving loop on the emulators: features, scoring with a canary, SLOs, rollback (docs/serving_loop.md)
	$(PY) -m scripts.serving_loop --workdir output/serving_loop

bench: bootstrap
	$(PY) -m bench.sli
	$(PY) -m bench.sli_latency
	$(PY) -m bench.slo_state
	$(PY) -m bench.images
	$(PY) -m bench.score
	$(PY) -m bench.score_latency
	$(PY) -m bench.features
	$(PY) -m bench.window_features
	$(PY) -m bench.udf
	$(PY) -m bench.pipeline_health
