"""Shared fixtures: the real EntityQuestions copy beside the checkout, and a tiny model built in-process; and
CUDA hidden from every test but the `gpu` ones, so that `make test` on a GPU machine is the CPU suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: float summation order, hence every trained tiny model, is then the same on any x86 CPU run.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
EQ_COPY = Path(os.environ.get("MEMQA_EQ_SOURCE") or REPO.parent / "shared" / "data" / "entityquestions")


def cuda_for_tests(markexpr: str) -> bool:
    """Whether a pytest run keeps CUDA visible: only one that selects the gpu tests (`pytest -m gpu`)."""
    return "gpu" in markexpr and "not gpu" not in markexpr


def pytest_configure(config: pytest.Config) -> None:
    """Hide CUDA before any test touches it (models would go to the GPU in bf16, and the 2-process tests would
    put both ranks on cuda:0); the subprocesses the tests start inherit it. `pytest -m gpu` keeps CUDA."""
    if not cuda_for_tests(config.getoption("markexpr") or ""):
        if torch.cuda.is_initialized():
            raise pytest.UsageError("CUDA started before tests/conftest.py could hide it")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def eq_dir() -> Path:
    if not (EQ_COPY / "train" / "P17.train.json").is_file():
        pytest.skip(f"no EntityQuestions copy at {EQ_COPY}; set MEMQA_EQ_SOURCE")
    return EQ_COPY
