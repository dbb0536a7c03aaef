"""`memqa plan`'s text: memqa.plan's numbers (counts, work, disk, runs on 1, 4, 8 devices) as the lines it prints."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from memqa.plan import PER_MODEL_STAGES, SINGLE_STAGES
from memqa.plan_time import figure_labels

if TYPE_CHECKING:
    from memqa.config import Params, Sft


# --- text --------------------------------------------------------------------------------------------------------

def _num(value: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def _bytes(value: float) -> str:
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{int(value)} B"


def _grid_lines(result: dict[str, Any], params: Params, table: dict[str, Any]) -> list[str]:
    """What the grid holds and the work it does, summed over models."""
    stages, work, totals = result["stages"], result["work"], result["totals"]
    probe, split, sft = params.probe, params.split, params.sft
    facts = work["facts"]
    n_models = len(result["models"])
    lines = [
        f"grid: {n_models} model(s) x {len(split.levels)} levels x {len(split.sizes)} sizes x "
        f"{len(split.seeds)} seeds = {stages['sft']} cells; sft.method {sft.method}"
        + (f", keep_weights {str(sft.keep_weights).lower()}" if sft.method == "full" else ""),
        f"DVC stage instances: {stages['total']} (" + ", ".join(
            f"{name} {stages[name]}" for name in (*SINGLE_STAGES[:1], *PER_MODEL_STAGES[:3], "sft", "evaluate",
                                                  PER_MODEL_STAGES[3], *SINGLE_STAGES[1:])) + ")",
        f"facts per model: {facts['train_id']:,} in-domain train (the SFT pool), test {facts['test_id']:,} id + "
        f"{facts['test_ood']:,} ood; {work['probed_facts']:,} probed",
    ]
    if probe.method == "sample":
        lines.append(f"probe completions: {totals['probe_completions']:,} (facts x {probe.templates} templates x "
                     f"{probe.samples if probe.temperature > 0 else 1} samples, per model x {n_models})")
    elif probe.method != "likelihood":
        lines.append(f"probe decoded paths ({probe.method}): {totals['probe_completions']:,} (facts x "
                     f"{probe.templates} templates x paths per template, per model x {n_models})")
    else:
        lines.append(f"probe likelihood prompts: {totals['likelihood_prompts']:,} (facts x {probe.templates} "
                     f"templates, per model x {n_models})")
    tokens_qa = table["workload"]["tokens_per_qa_pair"]
    return lines + [
        f"generated tokens, upper bound: {_num(totals['generated_tokens_upper_bound'])} "
        f"(probe {probe.max_new_tokens if probe.method != 'likelihood' else 0}, evaluation "
        f"{params.evaluate.max_new_tokens} new tokens each)",
        f"SFT: {_num(totals['sft_facts'])} facts, {_num(totals['sft_tokens'])} tokens (x {sft.epochs} epochs x "
        f"~{tokens_qa} tokens per QA pair), {totals['sft_steps']:,} optimizer steps of {sft.batch_size}",
        f"evaluation generations: {totals['evaluation_generations']:,} ((cells + base) x test facts)",
        "",
    ]


def _figures_line(device: dict[str, Any]) -> str:
    """Which of the kind's numbers are measured, datasheet figures or ASSUMED (with the ASSUMED values)."""
    labels = figure_labels(device)

    def value(key: str) -> str:
        return _num(device["mfu"][key[4:]] if key.startswith("mfu.") else device[key])

    assumed = ", ".join(f"{key} {value(key)}" for key in labels["ASSUMED"])
    return (f"  figures: measured: {', '.join(labels['measured']) or 'none'}; datasheet: "
            f"{', '.join(labels['datasheet']) or 'none'}; ASSUMED: {assumed or 'none'}")


def _run_line(run: dict[str, Any], cells: int, steps: int, device: dict[str, Any], devices: int) -> str:
    """One run on run['gpus'] devices: wall-clock and device-hours by part, or why it cannot run."""
    unit = ("GPU" if device["cuda"] else "device") + ("s" if run["gpus"] > 1 else "")
    head = f"    {run['gpus']} {unit}{' (--devices)' if run['gpus'] == devices else ''}: "
    if "why" in run:
        return head + f"cannot run: {run['why']}"
    wall, step = run["wall_hours"], run["step_s"]
    return (head + f"{wall['total']:,.1f} h wall-clock, {run['device_hours']:,.1f} device-hours: probe "
            f"{wall['probe']:,.1f} h (engine {run['engines'][0]}), sft {wall['sft']:,.1f} h ({steps:,} steps x "
            f"{sum(step.values()):.3g} s: compute {step['compute']:.2g}, AdamW {step['optimizer']:.2g}, collectives "
            f"{step['collectives']:.2g}), launches {wall['launches']:,.1f} h ({cells} sft x "
            f"{run['sft_launch_s']:,.0f} s start/load/save, {cells + 1} evaluate x {run['evaluate_launch_s']:,.0f} s"
            f"), evaluate {wall['evaluate']:,.1f} h (engine {run['engines'][1]})")


def _model_lines(name: str, entry: dict[str, Any], cost: dict[str, Any], work: dict[str, Any], sft: Sft,
                 device: dict[str, Any], devices: int) -> list[str]:
    """One model on one device kind: its disk, then its run on each device count."""
    d, cells = cost["disk"], work["cells"]
    kept = "none kept" if sft.method == "full" and not sft.keep_weights else f"{cells} kept: {_bytes(d['cells_kept'])}"
    lines = [f"  {name} ({_num(entry['parameters'])} parameters, from {entry['parameters_from']}):",
             f"    disk {_bytes(d['peak'])} at peak: materialised {_bytes(d['materialised'])}, "
             f"{'full weights' if sft.method == 'full' else 'adapter'} {_bytes(d['per_cell'])} per cell ({kept}"
             + (f"; one at a time in data/scratch: {_bytes(d['scratch_peak'])}" if d["scratch_peak"] else "") + ")"
             + (f", Hugging Face download cache {_bytes(d['hub_cache'])}" if d["hub_cache"] else "")
             + f"; the DVC cache's copies add {_bytes(d['dvc_cache_copy'])} (none with reflinks)"]
    return lines + [_run_line(run, cells, work["sft"]["steps"], device, devices) for run in cost["runs"].values()]


def _device_lines(kind: str, result: dict[str, Any], params: Params, table: dict[str, Any]) -> list[str]:
    """Every model's cost on one device kind, and all models' together on each device count."""
    device, devices = table["devices"][kind], result["devices"]
    lines = [f"{kind} [{device['status']}]: {device['summary']} (memqa/resources/throughput.yaml)",
             _figures_line(device)]
    totals: dict[int, list[float]] = {}
    for name, entry in result["models"].items():
        cost = entry["devices"][kind]
        if cost is None:
            lines.append(f"  {name}: parameters {entry['parameters_from']}")
            continue
        lines += _model_lines(name, entry, cost, result["work"], params.sft, device, devices)
        for gpus, run in cost["runs"].items():
            totals.setdefault(gpus, []).append(math.nan if "why" in run else run["wall_hours"]["total"])
    if len(result["models"]) > 1:
        lines += [f"  all {len(result['models'])} models, one run after another, on {gpus}: "
                  + (f"{sum(hours):,.1f} h wall-clock, {sum(hours) * gpus:,.1f} device-hours"
                     if not any(map(math.isnan, hours)) and len(hours) == len(result["models"]) else "cannot run")
                  for gpus, hours in totals.items()]
    return lines


def render(result: dict[str, Any], params: Params, table: dict[str, Any]) -> str:
    """The plan as `memqa plan` prints it: the grid and its work, then each device kind's figures, disk and runs."""
    lines = _grid_lines(result, params, table)
    for kind in result["kinds"]:
        lines += _device_lines(kind, result, params, table)
    return "\n".join(lines)
