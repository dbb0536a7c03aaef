"""Stage `split`: level-divided training sets (level x size x seed) and level-labelled test sets.

    python stages/split.py --model gemma3-270m
"""
from __future__ import annotations

from pathlib import Path

import click

from memqa import paths
from memqa.config import load_params
from memqa.environment import with_versions
from memqa.facts import read_facts
from memqa.io import json_text, jsonl_text, read_jsonl, write_all
from memqa.options import model_option, params_option
from memqa.splits import build_splits


@click.command("split")
@model_option
@params_option
@click.option("--facts", "facts_path", default=str(paths.FACTS), show_default=True, type=click.Path(path_type=Path))
def main(model_name: str, params_file: str, facts_path: Path) -> None:
    """Build one training set per (level, size, seed) from split.levels/sizes/seeds, balanced over the 10
    in-domain relations, plus the in-domain and out-of-domain test sets labelled with this model's levels.

    A level pool smaller than the size is used as it is (split.short_pool: use) or skipped (skip); either
    way the shortfall is in metrics/<model>/split.json. Output: data/splits/<model>/.
    """
    params = load_params(params_file)
    scores_path = paths.scores(model_name)
    facts = read_facts(facts_path)
    scores = read_jsonl(scores_path, f"rerun `dvc repro probe@{model_name}`")
    train_sets, tests, metrics = build_splits(params.split, facts, scores, params.probe.n_levels, str(scores_path))
    outputs = {paths.train_set(model_name, cell): jsonl_text(rows) for cell, rows in train_sets.items()}
    outputs |= {paths.test_set(model_name, domain): jsonl_text(rows) for domain, rows in tests.items()}
    write_all({**outputs, paths.split_metrics(model_name): json_text(with_versions(metrics))})  # all or none
    click.echo(f"split {model_name}: train levels {metrics['level_counts']['train']}, "
               f"{metrics['cells_short']} short cells, {metrics['cells_skipped']} skipped")


if __name__ == "__main__":
    main()
