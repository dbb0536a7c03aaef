"""Stage `evaluate`: greedy closed-book QA accuracy per test memory level, in-domain and out-of-domain.

    python stages/evaluate.py --model gemma3-270m --level 4 --size 60 --seed 0     # a fine-tuned cell
    python stages/evaluate.py --model gemma3-270m --base                           # the 0-data baseline
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 stages/evaluate.py --model ... --base
    MEMQA_ACCELERATE="--config_file configs/accelerate/ddp.yaml --num_processes 4" dvc repro   # every evaluate
    dvc exp run -S evaluate.engine=vllm        # greedy answers through vLLM (docs/probe.md, "Engines")

vLLM spawns its engine core, which imports this script again: it works only under the `__main__` guard below.
"""
from __future__ import annotations

import sys

import click

from memqa import paths
from memqa.accuracy import DOMAINS
from memqa.config import load_params
from memqa.distributed import is_main_process, relaunch
from memqa.environment import with_versions
from memqa.errors import MemqaError
from memqa.evaluation import drop_scratch_weights, evaluate_cell
from memqa.facts import read_facts
from memqa.io import json_text, jsonl_text, write_all
from memqa.matching import with_synonyms
from memqa.options import SIZE, model_option, params_option


@click.command("evaluate")
@model_option
@click.option("--base", is_flag=True, help="Evaluate the untrained base model (the 0-data baseline).")
@click.option("--level", type=int)
@click.option("--size", type=SIZE, help="Training-set size (a number or 'all').")
@click.option("--seed", type=int)
@params_option
def main(model_name: str, base: bool, level: int | None, size: str | None, seed: int | None,
         params_file: str) -> None:
    """Greedy QA (evaluate.max_new_tokens) on the in-domain and out-of-domain test sets, judged by
    evaluate.matcher; accuracy per test level, headline (mean of the level accuracies) and micro.

    Output: predictions in data/eval/<model>/<cell>.jsonl, metrics in metrics/eval/<model>/<cell>.json.

    Under `accelerate launch` (or with $MEMQA_ACCELERATE holding launcher options) each of P processes decodes
    every P-th batch on its own device; the main process gathers the predictions (the one-process ones) and
    alone writes.
    """
    if base == (level is not None):
        raise MemqaError("give either --base or --level/--size/--seed")
    if not base and (size is None or seed is None):
        raise MemqaError("--level needs --size and --seed too")
    params = load_params(params_file)
    cell = "base" if base else paths.cell_name(level, size, seed)
    fix = f"rerun `dvc repro split@{model_name}`"
    facts = with_synonyms([f for domain in DOMAINS  # checked before any model loads
                           for f in read_facts(paths.test_set(model_name, domain), fix, allow_empty=True)],
                          params.matching)
    code = relaunch(sys.argv)  # $MEMQA_ACCELERATE: this command again, under `accelerate launch`
    if code is not None:
        raise SystemExit(code)
    predictions, metrics = evaluate_cell(facts, None if base else paths.sft_dir(model_name, cell),
                                         paths.model_dir(model_name), params.evaluate, params.sft,
                                         params.probe.n_levels, params.report.min_level_facts)
    if not is_main_process():  # every process predicted its share; only the main one writes
        return
    write_all({paths.predictions(model_name, cell): jsonl_text(predictions),
               paths.eval_metrics(model_name, cell): json_text(with_versions(metrics))})
    dropped = drop_scratch_weights(None if base else paths.sft_dir(model_name, cell))
    if dropped:
        click.echo(f"evaluate {model_name} {cell}: deleted the evaluated full weights {dropped} (sft.keep_weights)")
    if metrics.get("skipped"):
        click.echo(f"evaluate {model_name} {cell}: skipped ({metrics['reason']})")
    else:
        click.echo(f"evaluate {model_name} {cell}: headline id {metrics['id']['headline']} "
                   f"ood {metrics['ood']['headline']}")


if __name__ == "__main__":
    main()
