"""`memqa plan`: what a params configuration costs before it runs: DVC stage instances, probe completions,
generated tokens, SFT tokens, evaluation generations, disk, and device-hours per device kind.

Counts follow the pipeline's rules (dvc.yaml's fan-out, the probe and split definitions); times come from the
throughput table memqa/resources/throughput.yaml (measured on this project's CPU; an ESTIMATE for the H100).
Nothing is loaded or run: `memqa plan --preset presets/paper.args --model-params 8.03e9 --device h100`.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import click
import yaml

from memqa import paths
from memqa.config import PARAMS_FILE, Download, ModelSpec, Params, Sft, load_params
from memqa.errors import MemqaError
from memqa.overrides import preset_overrides

PER_MODEL_STAGES = ("materialize", "probe", "split", "evaluate-base")
SINGLE_STAGES = ("download", "summarize", "plot", "report")


# --- counts ------------------------------------------------------------------------------------------------------

def relation_counts() -> dict[str, int]:
    domains = [r["domain"] for r in yaml.safe_load(paths.RELATIONS_FILE.read_text()).values()]
    return {"id": domains.count("id"), "ood": domains.count("ood")}


def fact_counts(download: Download) -> dict[str, int]:
    """Facts per pool the pipeline uses: in-domain train (the SFT pool), in-domain and out-of-domain test.

    per_relation null means the whole pool (the paper's 75,944 / 9,555 / 11,613 with paper_pools); a number
    keeps that many per relation (an upper bound: a relation may hold fewer)."""
    pools = yaml.safe_load(paths.PUBLISHED_FILE.read_text())["protocol"]["pool_sizes"]
    relations, per = relation_counts(), download.per_relation

    def pick(keep: int | None, pool: int, n_relations: int) -> int:
        return pool if keep is None else min(keep * n_relations, pool)

    return {"train_id": pick(per.train, pools["train"], relations["id"]),
            "test_id": pick(per.test, pools["test_id"], relations["id"]),
            "test_ood": pick(per.test, pools["test_ood"], relations["ood"])}


def stage_counts(params: Params) -> dict[str, int]:
    """DVC stage instances dvc.yaml expands to: per model, per grid cell (model x level x size x seed), once."""
    models, split = len(params.models), params.split
    cells = models * len(split.levels) * len(split.sizes) * len(split.seeds)
    counts = {name: 1 for name in SINGLE_STAGES} | {name: models for name in PER_MODEL_STAGES}
    counts |= {"sft": cells, "evaluate": cells}
    return {"total": sum(counts.values()), **counts}


def cell_facts(size: int | str, facts: dict[str, int], n_levels: int) -> float:
    """Training facts of one cell: its size (at most the pool; a smaller level pool gives fewer), or for 'all'
    the level's pool, estimated as the in-domain train pool split evenly over the levels."""
    return facts["train_id"] / n_levels if size == "all" else min(int(size), facts["train_id"])


def workload(params: Params, table: dict[str, Any]) -> dict[str, Any]:
    """Work per model (every model does the same work; its size sets the cost)."""
    work_conf = table["workload"]
    facts = fact_counts(params.download)
    probe, split, sft, evaluate = params.probe, params.split, params.sft, params.evaluate
    probed = facts["train_id"] + facts["test_id"] + facts["test_ood"]
    samples = probe.samples if probe.temperature > 0 else 1
    prompt_tokens = work_conf["tokens_per_probe_prompt"]
    answer_tokens = work_conf["tokens_per_answer"]

    def probe_work(method: str, n_facts: int) -> dict[str, float]:
        prompts = n_facts * probe.templates
        if method != "likelihood":  # decoded paths per prompt; the traced estimators' teacher-forcing is left out
            paths = {"greedy_containment": 1, "rao_blackwell": min(samples, probe.rb_samples)}.get(method,
                                                                                                          samples)
            return {"completions": prompts * paths, "decode_tokens": prompts * paths * probe.max_new_tokens,
                    "prefill_tokens": prompts * prompt_tokens, "likelihood_prompts": 0}
        return {"completions": 0, "decode_tokens": 0, "likelihood_prompts": prompts,
                "prefill_tokens": prompts * (prompt_tokens + answer_tokens)}

    probing = probe_work(probe.method, probed)
    if probe.crosscheck_facts:
        other = probe_work("likelihood" if probe.method == "sample" else "sample",
                           min(probe.crosscheck_facts, probed))
        probing = {key: probing[key] + other[key] for key in probing}

    cells = len(split.levels) * len(split.sizes) * len(split.seeds)
    per_cell = [cell_facts(size, facts, probe.n_levels) for _ in split.seeds for _ in split.levels
                for size in split.sizes]
    epochs, batch = sft.epochs, sft.batch_size
    sft_facts = sum(per_cell)
    test_facts = facts["test_id"] + facts["test_ood"]
    generations = (cells + 1) * test_facts  # every cell and the untrained base
    return {
        "facts": facts, "probed_facts": probed, "cells": cells, "probe": probing,
        "sft": {"facts": sft_facts, "tokens": sft_facts * epochs * work_conf["tokens_per_qa_pair"],
                "steps": sum(math.ceil(n / batch) for n in per_cell) * epochs},
        "evaluate": {"generations": generations, "decode_tokens": generations * evaluate.max_new_tokens,
                     "prefill_tokens": generations * work_conf["tokens_per_eval_prompt"]},
        "generated_tokens_upper_bound": probing["decode_tokens"] + generations * evaluate.max_new_tokens,
    }


# --- disk and time -----------------------------------------------------------------------------------------------

def full_weights_bytes(sft: Sft, device: dict[str, Any]) -> int:
    """Bytes per parameter of saved full fine-tuning weights: the compute dtype (auto: bf16 on CUDA, fp32 on CPU)."""
    name = sft.compute_dtype
    if name == "auto":
        return 2 if device["cuda"] else 4
    return dtype_bytes(name)


def adapter_params(n_params: float, sft: Sft, table: dict[str, Any]) -> float:
    return n_params * table["workload"]["adapter_params_fraction_r16"] * sft.lora_r / 16


def dtype_bytes(name: str) -> int:
    """Bytes per value of a params dtype name: its bit width (bfloat16, float16: 2; float32: 4) over 8."""
    return int(re.search(r"\d+$", name).group()) // 8


def is_hub(source: str) -> bool:
    return not source.startswith("package:") and not Path(source).expanduser().exists() and "/" in source


def disk(params: Params, n_params: float, spec: ModelSpec, cells: int, device: dict[str, Any],
         table: dict[str, Any]) -> dict[str, float]:
    """Bytes one model needs: its materialised weights, the trained weights or adapters of its cells, and the
    Hugging Face download cache for a Hub model. `peak` counts full weights of one cell at a time when they
    are dropped after evaluation (sft.keep_weights false); `dvc_cache_copy` is what cache.type copy adds."""
    sft = params.sft
    materialised = n_params * dtype_bytes(spec.dtype)
    if sft.method == "full":
        per_cell = n_params * full_weights_bytes(sft, device)
        kept = per_cell * cells if sft.keep_weights else 0.0
        scratch = 0.0 if sft.keep_weights else per_cell
    else:
        per_cell = adapter_params(n_params, sft, table) * 4  # peft keeps adapters in fp32
        kept, scratch = per_cell * cells, 0.0
    hub = n_params * 2 if is_hub(spec.source) else 0.0
    return {"materialised": materialised, "per_cell": per_cell, "cells_kept": kept, "scratch_peak": scratch,
            "hub_cache": hub, "peak": materialised + kept + scratch + hub,
            "dvc_cache_copy": materialised + kept}


def rates(device: dict[str, Any]) -> dict[str, float]:
    if "peak_bf16_flop_per_s" in device:
        return {kind: device["peak_bf16_flop_per_s"] * mfu for kind, mfu in device["mfu"].items()}
    return {"decode": device["decode_flop_per_s"], "prefill": device["prefill_flop_per_s"],
            "train": device["train_flop_per_s"]}


def hours(params: Params, work: dict[str, Any], n_params: float, spec: ModelSpec,
          device: dict[str, Any], table: dict[str, Any]) -> dict[str, float]:
    """Device-hours of one model's stages on one device of this kind, by part."""
    rate, sft = rates(device), params.sft
    full = sft.method == "full"
    probe_s = (2 * n_params * work["probe"]["decode_tokens"] / rate["decode"]
               + 2 * n_params * work["probe"]["prefill_tokens"] / rate["prefill"])
    sft_s = (6 if full else 4) * n_params * work["sft"]["tokens"] / rate["train"]
    if full:  # the fp32 AdamW step, memory-bound, once per optimizer step
        sft_s += work["sft"]["steps"] * n_params * table["workload"]["optimizer_bytes_per_param"] / \
            device["memory_bytes_per_s"]
    eval_s = (2 * n_params * work["evaluate"]["decode_tokens"] / rate["decode"]
              + 2 * n_params * work["evaluate"]["prefill_tokens"] / rate["prefill"])
    base_bytes = n_params * dtype_bytes(spec.dtype)
    trained_bytes = n_params * full_weights_bytes(sft, device) if full else base_bytes
    cells = work["cells"]
    moved = (2 * base_bytes            # materialize: read and write
             + 2 * base_bytes          # probe, evaluate-base
             + cells * base_bytes      # sft loads the base
             + cells * (trained_bytes if full else 0)   # sft saves full weights
             + cells * trained_bytes)  # evaluate loads them (adapters: the base)
    instances = len(PER_MODEL_STAGES) + 2 * cells
    overhead_s = moved / device["load_bytes_per_s"] + instances * device["stage_startup_s"]
    parts = {"probe": probe_s / 3600, "sft": sft_s / 3600, "evaluate": eval_s / 3600, "loading": overhead_s / 3600}
    return {**parts, "total": sum(parts.values())}


def devices_for_training(n_params: float, params: Params, device: dict[str, Any],
                         table: dict[str, Any]) -> int:
    """Devices whose memory holds full fine-tuning's training state (FSDP shards it); 1 for adapters."""
    if params.sft.method != "full":
        return 1
    state = n_params * table["workload"]["training_state_bytes_per_param"]
    return max(1, math.ceil(state / (0.85 * device["memory_bytes"])))


def model_sizes(params: Params, model_params: float | None) -> dict[str, tuple[float | None, str]]:
    """Parameters per model: --model-params, else metrics/<model>/model.json (written by materialize)."""
    sizes = {}
    for name in params.models:
        if model_params is not None:
            sizes[name] = (float(model_params), "--model-params")
        elif paths.model_info(name).is_file():
            info = json.loads(paths.model_info(name).read_text())
            sizes[name] = (float(info["parameters"]), str(paths.model_info(name)))
        else:
            sizes[name] = (None, "unknown: pass --model-params")
    return sizes


def load_table(path: Path = paths.THROUGHPUT_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def plan(params: Params, sizes: dict[str, tuple[float | None, str]], table: dict[str, Any],
         device_kinds: list[str] | None = None) -> dict[str, Any]:
    """Everything `memqa plan` prints, as numbers: counts, work, and per model disk and hours per device kind."""
    kinds = device_kinds or list(table["devices"])
    for kind in kinds:
        if kind not in table["devices"]:
            raise MemqaError(f"unknown device kind '{kind}': use one of {', '.join(table['devices'])}")
    work = workload(params, table)
    models = {}
    for name, (n_params, source) in sizes.items():
        spec = params.models[name]
        entry: dict[str, Any] = {"parameters": n_params, "parameters_from": source, "devices": {}}
        for kind in kinds:
            device = table["devices"][kind]
            entry["devices"][kind] = None if n_params is None else {
                "hours": hours(params, work, n_params, spec, device, table),
                "disk": disk(params, n_params, spec, work["cells"], device, table),
                "devices_for_training": devices_for_training(n_params, params, device, table),
            }
        models[name] = entry
    n_models = len(sizes)
    totals = {"probe_completions": n_models * work["probe"]["completions"],
              "likelihood_prompts": n_models * work["probe"]["likelihood_prompts"],
              "generated_tokens_upper_bound": n_models * work["generated_tokens_upper_bound"],
              "sft_facts": n_models * work["sft"]["facts"], "sft_tokens": n_models * work["sft"]["tokens"],
              "sft_steps": n_models * work["sft"]["steps"],
              "evaluation_generations": n_models * work["evaluate"]["generations"]}
    return {"stages": stage_counts(params), "work": work, "totals": totals, "models": models, "kinds": kinds}


@click.command("plan")
@click.option("--params", "params_file", default=PARAMS_FILE, show_default=True, help="The params file.")
@click.option("--preset", type=click.Path(exists=True, dir_okay=False),
              help="A file of `-S key=value` overrides (presets/paper.args), applied in memory.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="One more override; repeatable.")
@click.option("--model-params", type=float, help="Parameters of every model (e.g. 8.03e9); default: "
                                                 "metrics/<model>/model.json.")
@click.option("--device", "device_kinds", multiple=True,
              help="Device kind(s) of memqa/resources/throughput.yaml; default: all.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Devices working in parallel, for an ideal wall-clock time.")
def command(params_file: str, preset: str | None, sets: tuple[str, ...], model_params: float | None,
            device_kinds: tuple[str, ...], devices: int) -> None:
    """Print what the configuration costs before running it: DVC stage instances, probe completions,
    generated tokens, SFT tokens, evaluation generations, disk, and device-hours per device kind.

    Not a DVC stage: it reads params (and a preset) and the throughput table, and runs nothing.
    """
    from memqa.plan_text import render

    params = load_params(params_file, preset, sets)
    overrides = len(preset_overrides(preset) if preset else []) + len(sets)
    table = load_table()
    result = plan(params, model_sizes(params, model_params), table, list(device_kinds) or None)
    source = params_file + (f" + {preset}" if preset else "") + (f" + {len(sets)} --set" if sets else "")
    click.echo(f"memqa plan: {source} ({overrides} overrides)")
    click.echo(render(result, params, table, devices))
