"""Closed-book QA evaluation: greedy answers of a cell's model to the test questions, judged per fact."""
from __future__ import annotations

import json
from pathlib import Path

from memqa.accuracy import accuracy_metrics
from memqa.engine import generate
from memqa.errors import MemqaError
from memqa.matching import get_matcher
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


def evaluate_cell(facts: list[dict], trained_dir: Path | None, model_dir: Path, conf: dict, sft_conf: dict,
                  n_levels: int) -> tuple[list[dict], dict]:
    """(predictions, metrics) of one cell's model (trained_dir None: the untrained base) on the test facts."""
    from memqa.models import load_for_eval, precision

    if trained_dir is not None and not trained_dir.is_dir():
        raise MemqaError(f"no trained model at {trained_dir}: run `dvc repro sft` first")
    info = train_info(trained_dir)
    if info.get("skipped"):
        return [], {"skipped": True, "reason": "empty training set (see the split metrics)"}
    method = info.get("method", sft_conf["method"])
    model, tokenizer = load_for_eval(model_dir, trained_dir, method, sft_conf)
    predictions = predict(model, tokenizer, facts, conf)
    return predictions, {"skipped": False, "train_facts": info.get("facts", 0),
                         "precision": precision(sft_conf, method, training=False),
                         **accuracy_metrics(predictions, n_levels)}
