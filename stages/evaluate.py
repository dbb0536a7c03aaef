"""Stage `evaluate`: greedy closed-book QA accuracy per test memory level, in-domain and out-of-domain.

    memqa evaluate --model gemma3-270m --level 4 --size 60 --seed 0     # a fine-tuned cell
    memqa evaluate --model gemma3-270m --base                           # the untrained 0-data baseline
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from stages.generation import generate
from stages.matching import get_matcher
from stages.params import (
    MemqaError,
    load_params,
    model_option,
    params_option,
    read_jsonl,
    section,
    write_json,
    write_jsonl,
)
from stages.split import cell_name
from stages.templates import qa_prompt

N_LEVELS = 5


def predict(model, tokenizer, facts: list[dict], conf: dict) -> list[dict]:
    matcher = get_matcher(conf["matcher"])
    outputs = generate(model, tokenizer, [qa_prompt(f["question"]) for f in facts],
                       max_new_tokens=int(conf["max_new_tokens"]), batch_size=int(conf["batch_size"]))
    return [{"fact_id": f["fact_id"], "domain": f["domain"], "relation": f["relation"], "level": f["level"],
             "question": f["question"], "gold": f["answers"], "output": out[0],
             "correct": matcher(out[0], f["answers"])} for f, out in zip(facts, outputs, strict=True)]


def accuracy_metrics(predictions: list[dict]) -> dict:
    """Per domain: accuracy per test level, headline = unweighted mean over the levels that have facts
    (the paper's mean of 5 when all are present), and micro accuracy."""
    metrics = {}
    for domain in ("id", "ood"):
        rows = [p for p in predictions if p["domain"] == domain]
        n = [sum(p["level"] == lv for p in rows) for lv in range(N_LEVELS)]
        acc = [round(100 * sum(p["correct"] for p in rows if p["level"] == lv) / n[lv], 2) if n[lv] else None
               for lv in range(N_LEVELS)]
        present = [a for a in acc if a is not None]
        metrics[domain] = {
            "headline": round(sum(present) / len(present), 2) if present else None,
            "micro": round(100 * sum(p["correct"] for p in rows) / len(rows), 2) if rows else None,
            **{f"L{lv}": acc[lv] for lv in range(N_LEVELS)},
            "n": n,
            "levels_missing": [lv for lv in range(N_LEVELS) if not n[lv]],
        }
    return metrics


def run_evaluate(model_name: str, cell: str | None, params: dict, model_dir: Path, splits_root: Path,
                 sft_root: Path, out_root: Path, metrics_root: Path) -> dict:
    from stages.training import load_for_eval

    conf, sft_conf = section(params, "evaluate"), section(params, "sft")
    name = cell or "base"
    facts = [f for part in ("test_id", "test_ood") for f in read_jsonl(splits_root / model_name / f"{part}.jsonl")]
    trained_dir = None if cell is None else sft_root / model_name / cell
    if trained_dir is not None and not trained_dir.is_dir():
        raise MemqaError(f"no trained model at {trained_dir}: run `dvc repro sft` first")
    info = train_info(trained_dir)
    if info.get("skipped"):
        metrics = {"skipped": True, "reason": "empty training set (see the split metrics)"}
        write_jsonl(out_root / model_name / f"{name}.jsonl", [])
    else:
        model, tokenizer = load_for_eval(model_dir, trained_dir,
                                         info.get("method", sft_conf["method"]), sft_conf)
        predictions = predict(model, tokenizer, facts, conf)
        write_jsonl(out_root / model_name / f"{name}.jsonl", predictions)
        metrics = {"skipped": False, "train_facts": info.get("facts", 0), **accuracy_metrics(predictions)}
    write_json(metrics_root / "eval" / model_name / f"{name}.json", metrics)
    return metrics


def train_info(trained_dir: Path | None) -> dict:
    return {} if trained_dir is None else json.loads((trained_dir / "train_info.json").read_text())


@click.command("evaluate")
@model_option
@click.option("--base", is_flag=True, help="Evaluate the untrained base model (the 0-data baseline).")
@click.option("--level", type=int)
@click.option("--size")
@click.option("--seed", type=int)
@params_option
def main(model_name: str, base: bool, level: int | None, size: str | None, seed: int | None,
         params_file: str) -> None:
    """Greedy QA (evaluate.max_new_tokens) on the in-domain and out-of-domain test sets, judged by
    evaluate.matcher; accuracy per test level, headline (mean of the level accuracies) and micro.

    Output: predictions in data/eval/<model>/<cell>.jsonl, metrics in metrics/eval/<model>/<cell>.json.
    """
    if base == (level is not None):
        raise MemqaError("give either --base or --level/--size/--seed")
    if not base and (size is None or seed is None):
        raise MemqaError("--level needs --size and --seed too")
    cell = None if base else cell_name(level, size, seed)
    metrics = run_evaluate(model_name, cell, load_params(params_file), Path("data/models") / model_name,
                           Path("data/splits"), Path("data/sft"), Path("data/eval"), Path("metrics"))
    if metrics.get("skipped"):
        click.echo(f"evaluate {model_name} {cell}: skipped ({metrics['reason']})")
    else:
        click.echo(f"evaluate {model_name} {cell or 'base'}: headline id {metrics['id']['headline']} "
                   f"ood {metrics['ood']['headline']}")
