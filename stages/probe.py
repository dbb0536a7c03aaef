"""Stage `probe`: memory score R and level of every fact, for one base model.

    python stages/probe.py --model gemma3-270m
    dvc repro probe@gemma3-270m
    dvc exp run -S probe.method=sample -S probe.samples=10      # the paper's sampling protocol
    dvc exp run -S probe.method=sample -S probe.engine=vllm     # the same through vLLM (docs/probe.md, "Engines")
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 stages/probe.py --model M
    MEMQA_ACCELERATE="--config_file configs/accelerate/ddp.yaml --num_processes 8" dvc repro   # every probe

Shards go to data/cache/probe/<model>/<fingerprint>/; a killed run resumes from the shards it finished.
vLLM spawns its engine core, which imports this script again: it works only under the `__main__` guard below.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from memqa import paths
from memqa.config import load_params
from memqa.distributed import is_main_process, relaunch
from memqa.environment import with_versions
from memqa.facts import read_facts
from memqa.io import json_text, jsonl_text, write_all
from memqa.matching import with_synonyms
from memqa.options import model_option, params_option
from memqa.probe import run_probe


@click.command("probe")
@model_option
@params_option
@click.option("--facts", "facts_path", default=str(paths.FACTS), show_default=True, type=click.Path(path_type=Path))
@click.option("--cache", "cache_root", default=str(paths.PROBE_CACHE), show_default=True,
              type=click.Path(path_type=Path))
def main(model_name: str, params_file: str, facts_path: Path, cache_root: Path) -> None:
    """Score every train (in-domain) and test fact: R = share of template completions holding the answer.

    probe.method `sample` is the paper's protocol (probe.samples completions per template at
    probe.temperature, judged by probe.matcher); `likelihood` is a cheaper lower bound of it: the
    probability that a sample starts with the answer, from one teacher-forced pass per template. Levels
    follow probe.level_bounds; level 0 is R below 1 / (templates x samples).
    Output: data/probe/<model>/scores.jsonl, metrics/<model>/probe.json.

    Under `accelerate launch` (or with $MEMQA_ACCELERATE holding launcher options) process r of P scores shards
    r, r + P, ... on its own device; the main process then reads every shard and alone writes the outputs,
    the same as one process writes.
    """
    params = load_params(params_file)
    params.model(model_name)  # a model not under `models` is one line, before anything loads
    facts = with_synonyms(read_facts(facts_path), params.matching)  # checked before any model loads
    code = relaunch(sys.argv)  # $MEMQA_ACCELERATE: this command again, under `accelerate launch`
    if code is not None:
        raise SystemExit(code)
    rows, metrics = run_probe(model_name, params.probe, facts, paths.model_dir(model_name), cache_root,
                              paths.TEMPLATES_FILE, facts_path)
    if not is_main_process():  # every process scored its shards; only the main one writes
        return
    write_all({paths.scores(model_name): jsonl_text(rows),
               paths.probe_metrics(model_name): json_text(with_versions(metrics))})
    click.echo(f"probe {model_name}: {metrics['facts']} facts in {metrics['wall_s']} s; "
               f"train levels {list(metrics['level_counts']['train'].values())}")


if __name__ == "__main__":
    main()
