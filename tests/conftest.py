"""Shared fixtures: the real EntityQuestions copy beside the checkout, and a tiny model built in-process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: float summation order, hence every trained tiny model, is then the same on any x86 CPU run.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
EQ_COPY = Path(os.environ.get("MEMQA_EQ_SOURCE") or REPO.parent / "shared" / "data" / "entityquestions")


@pytest.fixture(scope="session")
def eq_dir() -> Path:
    if not (EQ_COPY / "train" / "P17.train.json").is_file():
        pytest.skip(f"no EntityQuestions copy at {EQ_COPY}; set MEMQA_EQ_SOURCE")
    return EQ_COPY
