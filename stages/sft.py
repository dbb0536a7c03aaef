"""Stage `sft`: fine-tune the base model on one level-divided training set.

    python stages/sft.py --model gemma3-270m --level 4 --size 60 --seed 0
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 stages/sft.py --model ... \
        --level ... --size ... --seed ...
    MEMQA_ACCELERATE="--config_file configs/accelerate/fsdp.yaml --num_processes 8" dvc repro   # every sft cell
"""
from __future__ import annotations

import sys

import click

from memqa import paths
from memqa.config import load_params
from memqa.distributed import is_main_process, relaunch
from memqa.environment import with_versions
from memqa.facts import read_facts
from memqa.io import write_json
from memqa.options import SIZE, model_option, params_option
from memqa.training import fine_tune


@click.command("sft")
@model_option
@click.option("--level", type=int, required=True, help="Memory level of the training facts.")
@click.option("--size", type=SIZE, required=True, help="Training-set size (a number or 'all').")
@click.option("--seed", type=int, required=True)
@params_option
def main(model_name: str, level: int, size: str, seed: int, params_file: str) -> None:
    """Fine-tune on data/splits/<model>/train-L<level>-n<size>-s<seed>.jsonl in the paper's QA format.

    sft.method: lora (LoRA on every linear layer of the frozen base, default), qlora, or full. Output: the adapter
    (or full weights) in data/sft/<model>/<cell>/ (full with sft.keep_weights false: train_info.json there, the
    weights in data/scratch/sft/<model>/<cell>/ until evaluate has used them), loss per step in
    metrics/sft/<model>/<cell>.csv (a DVC plot) and in DVCLive's metrics/sft/<model>/<cell>-live/,
    device/dtype/steps/batch/wall time/peak memory/final loss in metrics/sft/<model>/<cell>.json.

    sft.batch_size is the global batch; under `accelerate launch` (or with $MEMQA_ACCELERATE holding launcher
    options) each of P processes takes batch_size / (P x grad_accum) per micro-batch.
    """
    conf = load_params(params_file).sft
    cell = paths.cell_name(level, size, seed)
    fix = f"rerun `dvc repro split@{model_name}` (split.levels/sizes/seeds must hold this cell)"
    facts = read_facts(paths.train_set(model_name, cell), fix, allow_empty=True)  # before any model loads
    code = relaunch(sys.argv)  # $MEMQA_ACCELERATE: this command again, under `accelerate launch`
    if code is not None:
        raise SystemExit(code)
    info = fine_tune(facts, conf, seed, paths.model_dir(model_name), paths.sft_dir(model_name, cell),
                     paths.sft_log(model_name, cell), paths.sft_live(model_name, cell),
                     paths.sft_scratch(model_name, cell))
    if not is_main_process():  # under `accelerate launch` every process trains; only the main one writes
        return
    write_json(paths.sft_metrics(model_name, cell), with_versions(info))
    if info.get("skipped"):
        click.echo(f"sft {model_name} {cell}: empty training set, skipped")
    else:
        click.echo(f"sft {model_name} {cell}: {info['steps']} steps in {info['wall_s']} s "
                   f"on {info['device']}, final loss {info['final_loss']}")


if __name__ == "__main__":
    main()
