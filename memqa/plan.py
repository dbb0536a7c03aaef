"""`memqa plan`: what a params configuration costs before it runs: DVC stage instances, probe completions,
generated tokens, SFT tokens, evaluation generations, disk, and the run's wall-clock and device-hours on 1, 4
and 8 devices of each kind.

Counts follow the pipeline's rules (dvc.yaml's fan-out, the probe and split definitions); times are
memqa.plan_time's model of the run, priced from memqa/resources/throughput.yaml (measured on this project's CPU;
an ESTIMATE for the GPUs, each figure labelled). Nothing is loaded or run:
`memqa plan --preset presets/paper-llama3-8b.args --devices 8`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import yaml

from memqa import paths
from memqa.config import PARAMS_FILE, Download, ModelSpec, Params, load_params
from memqa.errors import MemqaError
from memqa.overrides import preset_overrides
from memqa.plan_time import adapter_params, dtype_bytes, full_weights_bytes, rates, run_cost  # noqa: F401 (rates)

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
            horizon = (probe.rb_max_new_tokens or probe.max_new_tokens) if method == "rao_blackwell" else \
                probe.max_new_tokens
            return {"completions": prompts * paths, "decode_tokens": prompts * paths * horizon,
                    "prefill_tokens": prompts * prompt_tokens, "likelihood_prompts": 0}
        return {"completions": 0, "decode_tokens": 0, "likelihood_prompts": prompts,
                "prefill_tokens": prompts * (prompt_tokens + answer_tokens)}

    probing = probe_work(probe.method, probed)
    if probe.method == "rao_blackwell" and probe.rb_screen_cut is not None:
        # the share of templates the screen sends on is known only after it ran: counted as all (an upper bound)
        screen = probe_work("likelihood", probed)
        probing = {key: probing[key] + screen[key] for key in probing}
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


# --- disk ---------------------------------------------------------------------------------------------------------

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


def model_sizes(params: Params, model_params: float | None,
                table: dict[str, Any] | None = None) -> dict[str, tuple[float | None, str]]:
    """Parameters per model: --model-params, else metrics/<model>/model.json (written by materialize), else the
    throughput table's count for the model's Hub id (the presets' models)."""
    sizes, known = {}, (table or {}).get("models", {})
    for name, spec in params.models.items():
        if model_params is not None:
            sizes[name] = (float(model_params), "--model-params")
        elif paths.model_info(name).is_file():
            info = json.loads(paths.model_info(name).read_text())
            sizes[name] = (float(info["parameters"]), str(paths.model_info(name)))
        elif spec.source in known:
            sizes[name] = (float(known[spec.source]), f"throughput.yaml models ({spec.source})")
        else:
            sizes[name] = (None, "unknown: pass --model-params")
    return sizes


def gpu_counts(device: dict[str, Any], devices: int) -> list[int]:
    """The device counts a kind is priced on: 1, 4, 8 and --devices for GPUs; 1 for a CPU machine."""
    return sorted({1, 4, 8, devices}) if device["cuda"] else [1]


def device_cost(params: Params, work: dict[str, Any], n_params: float, spec: ModelSpec, device: dict[str, Any],
                table: dict[str, Any], devices: int) -> dict[str, Any]:
    """One model on one device kind: disk, and the run on each device count; `hours`: device-hours by part of
    the fewest devices that can run it (None if none can)."""
    runs = {g: run_cost(params, work, n_params, spec, g, device, table) for g in gpu_counts(device, devices)}
    first = next((r for r in runs.values() if "why" not in r), None)
    hours = None if first is None else {**{k: v * first["gpus"] for k, v in first["wall_hours"].items()},
                                        "devices": first["gpus"]}
    return {"disk": disk(params, n_params, spec, work["cells"], device, table), "runs": runs, "hours": hours}


def load_table(path: Path = paths.THROUGHPUT_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def plan(params: Params, sizes: dict[str, tuple[float | None, str]], table: dict[str, Any],
         device_kinds: list[str] | None = None, devices: int = 1) -> dict[str, Any]:
    """Everything `memqa plan` prints, as numbers: counts, work, and per model and device kind its disk and its
    run on 1, 4, 8 and `devices` devices."""
    kinds = device_kinds or list(table["devices"])
    for kind in kinds:
        if kind not in table["devices"]:
            raise MemqaError(f"unknown device kind '{kind}': use one of {', '.join(table['devices'])}")
    work = workload(params, table)
    models = {}
    for name, (n_params, source) in sizes.items():
        entry: dict[str, Any] = {"parameters": n_params, "parameters_from": source, "devices": {}}
        for kind in kinds:
            entry["devices"][kind] = None if n_params is None else device_cost(
                params, work, n_params, params.models[name], table["devices"][kind], table, devices)
        models[name] = entry
    n_models = len(sizes)
    totals = {"probe_completions": n_models * work["probe"]["completions"],
              "likelihood_prompts": n_models * work["probe"]["likelihood_prompts"],
              "generated_tokens_upper_bound": n_models * work["generated_tokens_upper_bound"],
              "sft_facts": n_models * work["sft"]["facts"], "sft_tokens": n_models * work["sft"]["tokens"],
              "sft_steps": n_models * work["sft"]["steps"],
              "evaluation_generations": n_models * work["evaluate"]["generations"]}
    return {"stages": stage_counts(params), "work": work, "totals": totals, "models": models, "kinds": kinds,
            "devices": devices}


@click.command("plan")
@click.option("--params", "params_file", default=PARAMS_FILE, show_default=True, help="The params file.")
@click.option("--preset", type=click.Path(exists=True, dir_okay=False),
              help="A file of `-S key=value` overrides (presets/paper-llama3-8b.args), applied in memory.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="One more override; repeatable.")
@click.option("--model-params", type=float, help="Parameters of every model (e.g. 8.03e9); default: "
                                                 "metrics/<model>/model.json, else the Hub id's count.")
@click.option("--device", "device_kinds", multiple=True,
              help="Device kind(s) of memqa/resources/throughput.yaml; default: all.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs the run launches each stage over ($MEMQA_ACCELERATE), priced beside 1, 4 and 8.")
def command(params_file: str, preset: str | None, sets: tuple[str, ...], model_params: float | None,
            device_kinds: tuple[str, ...], devices: int) -> None:
    """Print what the configuration costs before running it: DVC stage instances, probe completions,
    generated tokens, SFT tokens, evaluation generations, disk, and per device kind the run's wall-clock and
    device-hours on 1, 4, 8 (and --devices) devices, each figure labelled measured, datasheet or ASSUMED.

    Not a DVC stage: it reads params (and a preset) and the throughput table, and runs nothing.
    """
    from memqa.plan_text import render

    params = load_params(params_file, preset, sets)
    overrides = len(preset_overrides(preset) if preset else []) + len(sets)
    table = load_table()
    result = plan(params, model_sizes(params, model_params, table), table, list(device_kinds) or None, devices)
    source = params_file + (f" + {preset}" if preset else "") + (f" + {len(sets)} --set" if sets else "")
    click.echo(f"memqa plan: {source} ({overrides} overrides)")
    click.echo(render(result, params, table))
