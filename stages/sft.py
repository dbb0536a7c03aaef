"""Stage `sft`: fine-tune the base model on one level-divided training set.

    memqa sft --model gemma3-270m --level 4 --size 60 --seed 0
    accelerate launch --num_processes 4 -m stages.cli sft --model ... --level ... --size ... --seed ...
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from stages.params import load_params, model_option, params_option, read_jsonl, section, write_json
from stages.split import cell_name, train_set_path


def run_sft(model_name: str, level: int, size, seed: int, conf: dict, model_dir: Path, splits_root: Path,
            out_root: Path, metrics_root: Path) -> dict:
    from stages.training import load_trainable, train

    cell = cell_name(level, size, seed)
    facts = read_jsonl(train_set_path(splits_root / model_name, level, size, seed))
    out_dir, log_path = out_root / model_name / cell, metrics_root / "sft" / model_name / f"{cell}.csv"
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if not facts:  # an empty level pool (recorded by split): nothing to train, evaluate reports it
        info = {"method": conf["method"], "facts": 0, "skipped": True}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("step,loss,lr\n")
    else:
        model, tokenizer = load_trainable(model_dir, conf["method"], conf)
        info = train(model, tokenizer, facts, conf, conf["method"], seed, log_path)
        trained = info.pop("model")
        trained.save_pretrained(staging)
        if conf["method"] == "full":
            tokenizer.save_pretrained(staging)
        info["skipped"] = False
    write_json(staging / "train_info.json", info)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    write_json(metrics_root / "sft" / model_name / f"{cell}.json", info)
    return info


@click.command("sft")
@model_option
@click.option("--level", type=int, required=True, help="Memory level of the training facts (0-4).")
@click.option("--size", required=True, help="Training-set size (a number or 'all').")
@click.option("--seed", type=int, required=True)
@params_option
def main(model_name: str, level: int, size: str, seed: int, params_file: str) -> None:
    """Fine-tune on data/splits/<model>/train-L<level>-n<size>-s<seed>.jsonl in the paper's QA format.

    sft.method: qlora (NF4 base + LoRA on all linear layers, default), lora, or full. Output: the adapter
    (or full weights) in data/sft/<model>/<cell>/, loss per step in metrics/sft/<model>/<cell>.csv (a DVC
    plot), device/dtype/steps/wall time/peak memory/final loss in metrics/sft/<model>/<cell>.json.
    """
    conf = section(load_params(params_file), "sft")
    info = run_sft(model_name, level, size, seed, conf, Path("data/models") / model_name, Path("data/splits"),
                   Path("data/sft"), Path("metrics"))
    if info.get("skipped"):
        click.echo(f"sft {model_name} {cell_name(level, size, seed)}: empty training set, skipped")
    else:
        click.echo(f"sft {model_name} {cell_name(level, size, seed)}: {info['steps']} steps in {info['wall_s']} s "
                   f"on {info['device']}, final loss {info['final_loss']}")
