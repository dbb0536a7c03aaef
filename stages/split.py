"""Stage `split`: level-divided training sets (level x size x seed) and level-labelled test sets.

    memqa split --model gemma3-270m
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import click

from stages.data import relation_ids
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

SHORT_POOL = ("use", "skip")


def balanced_sample(pool: list[dict], n: int | None, seed: int) -> list[dict]:
    """n facts spread evenly over relations (n/R each); where a relation runs short the others fill in.

    n None takes the whole pool. Deterministic for a seed; order shuffled so SFT batches mix relations.
    """
    rng = random.Random(seed)
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for fact in pool:
        by_relation[fact["relation"]].append(fact)
    for rows in by_relation.values():
        rng.shuffle(rows)
    chosen: list[dict] = []
    target = len(pool) if n is None else min(n, len(pool))
    relations = sorted(by_relation, key=lambda r: (relation_ids().index(r) if r in relation_ids() else 99, r))
    depth = 0
    while len(chosen) < target:  # round-robin: one fact per relation per round
        for relation in relations:
            if depth < len(by_relation[relation]) and len(chosen) < target:
                chosen.append(by_relation[relation][depth])
        depth += 1
    rng.shuffle(chosen)
    return chosen


def size_label(size) -> str:
    return "all" if size in (None, "all") else str(int(size))


def cell_name(level: int, size, seed: int) -> str:
    """The grid cell's name, shared by split, sft, evaluate and summarize: L<level>-n<size>-s<seed>."""
    return f"L{level}-n{size_label(size)}-s{seed}"


def train_set_path(root: Path, level: int, size, seed: int) -> Path:
    return root / f"train-{cell_name(level, size, seed)}.jsonl"


def run_split(conf: dict, facts_path: Path, scores_path: Path, out_dir: Path, metrics_path: Path) -> dict:
    if conf.get("short_pool", "use") not in SHORT_POOL:
        raise MemqaError(f"split.short_pool must be one of {', '.join(SHORT_POOL)}, not {conf['short_pool']!r}")
    facts = {f["fact_id"]: f for f in read_jsonl(facts_path)}
    scores = read_jsonl(scores_path)
    missing = [s["fact_id"] for s in scores if s["fact_id"] not in facts]
    if missing:
        raise MemqaError(f"{scores_path} scores facts absent from {facts_path} (e.g. {missing[0]}): rerun probe")
    rows = [{**facts[s["fact_id"]], "group": s["group"], "score": s["score"], "level": s["level"]} for s in scores]
    n_levels = 1 + max([r["level"] for r in rows] + [4])
    groups = {g: [r for r in rows if r["group"] == g] for g in ("train", "test_id", "test_ood")}
    cells = []
    for level in conf["levels"]:
        pool = [r for r in groups["train"] if r["level"] == level]
        for size in conf["sizes"]:
            for seed in conf["seeds"]:
                wanted = None if size_label(size) == "all" else int(size)
                short = wanted is not None and len(pool) < wanted
                skipped = (short and conf.get("short_pool", "use") == "skip") or not pool
                chosen = [] if skipped else balanced_sample(pool, wanted, int(seed))
                write_jsonl(train_set_path(out_dir, level, size, seed), chosen)
                per_relation = defaultdict(int)
                for r in chosen:
                    per_relation[r["relation"]] += 1
                cells.append({"level": level, "size": size_label(size), "seed": seed, "pool": len(pool),
                              "requested": wanted if wanted is not None else len(pool), "actual": len(chosen),
                              "shortfall": max(0, (wanted or 0) - len(chosen)), "skipped": skipped,
                              "per_relation": dict(per_relation)})
    for name in ("test_id", "test_ood"):
        write_jsonl(out_dir / f"{name}.jsonl", groups[name])
    relations = sorted({r["relation"] for r in rows}, key=lambda r: (len(r), r))
    metrics = {
        "level_counts": {g: [sum(r["level"] == lv for r in rs) for lv in range(n_levels)] for g, rs in groups.items()},
        "mean_score_by_relation": {
            rel: round(sum(r["score"] for r in rows if r["relation"] == rel) /
                       sum(r["relation"] == rel for r in rows), 4) for rel in relations},
        "cells_short": sum(c["shortfall"] > 0 for c in cells),
        "cells_skipped": sum(c["skipped"] for c in cells),
        "cells": cells,
    }
    write_json(metrics_path, metrics)
    return metrics


@click.command("split")
@model_option
@params_option
@click.option("--facts", "facts_path", default="data/facts.jsonl", show_default=True, type=click.Path(path_type=Path))
def main(model_name: str, params_file: str, facts_path: Path) -> None:
    """Build one training set per (level, size, seed) from split.levels/sizes/seeds, balanced over the 10
    in-domain relations, plus the in-domain and out-of-domain test sets labelled with this model's levels.

    A level pool smaller than the size is used as it is (split.short_pool: use) or skipped (skip); either
    way the shortfall is in metrics/<model>/split.json. Output: data/splits/<model>/.
    """
    conf = section(load_params(params_file), "split")
    metrics = run_split(conf, facts_path, Path("data/probe") / model_name / "scores.jsonl",
                        Path("data/splits") / model_name, Path("metrics") / model_name / "split.json")
    click.echo(f"split {model_name}: train levels {metrics['level_counts']['train']}, "
               f"{metrics['cells_short']} short cells, {metrics['cells_skipped']} skipped")
