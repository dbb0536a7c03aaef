"""Stage `probe`: memory score R and level of every fact, for one base model.

    memqa probe --model gemma3-270m
    dvc repro probe@gemma3-270m
    dvc exp run -S probe.method=sample -S probe.samples=10      # the paper's sampling protocol

Shards go to data/cache/probe/<model>/<fingerprint>/; a killed run resumes from the shards it finished.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click

from stages.models import load_model
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
from stages.probing import GROUPS, METHODS, fingerprint, memory_level, probe_group, probe_sharded
from stages.templates import TEMPLATES_FILE


def add_levels(rows: list[dict], conf: dict) -> None:
    resolution = 1.0 / (int(conf["templates"]) * int(conf["samples"]))
    for row in rows:
        row["level"] = memory_level(row["score"], conf["level_bounds"], resolution)


def level_counts(rows: list[dict], n_levels: int) -> dict[str, list[int]]:
    counts = {g: [0] * n_levels for g in GROUPS}
    for row in rows:
        counts[row["group"]][row["level"]] += 1
    return counts


def crosscheck(model, tokenizer, facts: list[dict], main_rows: list[dict], conf: dict, shard_dir: Path) -> dict:
    """Run the other method on an evenly spaced subset: Spearman of the scores, Cohen's kappa of the levels."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    n = int(conf["crosscheck_facts"])
    step = max(1, len(facts) // n)
    subset = facts[::step][:n]
    other = METHODS[1 - METHODS.index(conf["method"])]
    other_rows = probe_sharded(model, tokenizer, subset, conf, shard_dir, method=other, desc=f"crosscheck {other}")
    add_levels(other_rows, conf)
    main_by_id = {r["fact_id"]: r for r in main_rows}
    pairs = [(main_by_id[r["fact_id"]], r) for r in other_rows]
    rho = spearmanr([a["score"] for a, _ in pairs], [b["score"] for _, b in pairs]).statistic
    kappa = cohen_kappa_score([a["level"] for a, _ in pairs], [b["level"] for _, b in pairs])
    agree = sum(a["level"] == b["level"] for a, b in pairs) / len(pairs)
    clean = lambda x: None if x != x else round(float(x), 4)  # noqa: E731  NaN (constant input) -> null
    return {"facts": len(pairs), "other_method": other, "spearman": clean(rho), "cohen_kappa": clean(kappa),
            "level_agreement": round(agree, 4)}


def run_probe(model_name: str, conf: dict, facts_path: Path, model_dir: Path, out_path: Path,
              metrics_path: Path, cache_root: Path) -> dict:
    if conf["method"] not in METHODS:
        raise MemqaError(f"unknown probe.method '{conf['method']}': use one of {', '.join(METHODS)}")
    facts = [f for f in read_jsonl(facts_path) if probe_group(f)]
    if not facts:
        raise MemqaError(f"{facts_path} holds no train or test facts: check download.per_relation")
    model, tokenizer = load_model(model_dir, conf.get("dtype", "bfloat16"))
    shard_dir = cache_root / model_name / fingerprint(conf, model_dir, facts_path, TEMPLATES_FILE)
    started = time.time()
    rows = probe_sharded(model, tokenizer, facts, conf, shard_dir / conf["method"], desc=f"probe {model_name}")
    wall = time.time() - started
    add_levels(rows, conf)
    metrics = {
        "method": conf["method"],
        "facts": len(rows),
        "wall_s": round(wall, 1),
        "level_counts": level_counts(rows, len(conf["level_bounds"]) + 2),
        "mean_score": {g: round(sum(r["score"] for r in rows if r["group"] == g) /
                                max(1, sum(r["group"] == g for r in rows)), 4) for g in GROUPS},
        "relations_probed": dict(sorted(Counter(r["relation"] for r in rows).items())),
    }
    if int(conf.get("crosscheck_facts") or 0) > 0:
        metrics["crosscheck"] = crosscheck(model, tokenizer, facts, rows, conf, shard_dir)
    write_jsonl(out_path, rows)
    write_json(metrics_path, metrics)
    return metrics


@click.command("probe")
@model_option
@params_option
@click.option("--facts", "facts_path", default="data/facts.jsonl", show_default=True, type=click.Path(path_type=Path))
@click.option("--cache", "cache_root", default="data/cache/probe", show_default=True, type=click.Path(path_type=Path))
def main(model_name: str, params_file: str, facts_path: Path, cache_root: Path) -> None:
    """Score every train (in-domain) and test fact: R = share of template completions holding the answer.

    probe.method `sample` is the paper's protocol (probe.samples completions per template at
    probe.temperature, judged by probe.matcher); `likelihood` estimates the same R without sampling noise
    from one teacher-forced pass per template. Levels 0-4 follow probe.level_bounds; level 0 is R below
    1 / (templates x samples). Output: data/probe/<model>/scores.jsonl, metrics/<model>/probe.json.
    """
    params = load_params(params_file)
    conf = section(params, "probe")
    if model_name not in section(params, "models"):
        raise MemqaError(f"model '{model_name}' is not under 'models' in {params_file}")
    metrics = run_probe(model_name, conf, facts_path, Path("data/models") / model_name,
                        Path("data/probe") / model_name / "scores.jsonl", Path("metrics") / model_name / "probe.json",
                        cache_root)
    click.echo(f"probe {model_name}: {metrics['facts']} facts in {metrics['wall_s']} s; "
               f"train levels {metrics['level_counts']['train']}")
