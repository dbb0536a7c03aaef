"""Closed-book QA evaluation: greedy answers of a cell's model to the test questions, judged per fact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from memqa.accuracy import accuracy_metrics
from memqa.engine import generate
from memqa.errors import MemqaError
from memqa.matching import get_matcher
from memqa.paths import dvc_stage
from memqa.prompts import qa_prompt


def predict(model, tokenizer, facts: list[dict], conf: dict) -> list[dict]:
    matcher = get_matcher(conf["matcher"])
    outputs = generate(model, tokenizer, [qa_prompt(f["question"]) for f in facts],
                       max_new_tokens=int(conf["max_new_tokens"]), batch_size=int(conf["batch_size"]))
    return [{"fact_id": f["fact_id"], "domain": f["domain"], "relation": f["relation"], "level": f["level"],
             "question": f["question"], "gold": f["answers"], "output": out[0],
             "correct": matcher(out[0], f["answers"])} for f, out in zip(facts, outputs, strict=True)]


def train_info(trained_dir: Path | None) -> dict:
    return {} if trained_dir is None else json.loads((trained_dir / "train_info.json").read_text())


def trained_weights(trained_dir: Path | None, info: dict) -> Path | None:
    """Where a cell's trained weights are: its sft folder, or, for full fine-tuning with sft.keep_weights false,
    the scratch folder train_info.json names (deleted once the cell is evaluated)."""
    weights = info.get("weights", {})
    if trained_dir is None or weights.get("kept", True):
        return trained_dir
    if not (Path(weights["dir"]) / "config.json").is_file():
        stage = dvc_stage("sft", trained_dir.parent.name, trained_dir.name)
        raise MemqaError(f"the full weights of {trained_dir} were deleted after their evaluation "
                         f"(sft.keep_weights: false): retrain them with `dvc repro --force --downstream {stage}`, "
                         "or set sft.keep_weights: true")
    return Path(weights["dir"])


def drop_scratch_weights(trained_dir: Path | None) -> Path | None:
    """Delete a cell's full weights kept only until its evaluation (sft.keep_weights false); the folder or None.
    Call it after the predictions and metrics are written."""
    weights = train_info(trained_dir).get("weights", {})
    if trained_dir is None or weights.get("kept", True):
        return None
    shutil.rmtree(weights["dir"], ignore_errors=True)
    return Path(weights["dir"])


def evaluate_cell(facts: list[dict], trained_dir: Path | None, model_dir: Path, conf: dict, sft_conf: dict,
                  n_levels: int, min_level_facts: int = 1) -> tuple[list[dict], dict]:
    """(predictions, metrics) of one cell's model (trained_dir None: the untrained base) on the test facts."""
    from memqa.models import load_for_eval, precision

    if trained_dir is not None and not trained_dir.is_dir():
        raise MemqaError(f"no trained model at {trained_dir}: run `dvc repro sft` first")
    info = train_info(trained_dir)
    if info.get("skipped"):
        return [], {"skipped": True, "reason": "empty training set (see the split metrics)"}
    method = info.get("method", sft_conf["method"])
    model, tokenizer = load_for_eval(model_dir, trained_weights(trained_dir, info), method, sft_conf)
    predictions = predict(model, tokenizer, facts, conf)
    return predictions, {"skipped": False, "train_facts": info.get("facts", 0),
                         "precision": precision(sft_conf, method, training=False),
                         **accuracy_metrics(predictions, n_levels, min_level_facts)}
