"""`memqa plan`'s text: memqa.plan's numbers (counts, work, disk, device-hours) as the lines it prints."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memqa.plan import PER_MODEL_STAGES, SINGLE_STAGES

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


def _model_lines(name: str, entry: dict[str, Any], cost: dict[str, Any], cells: int, sft: Sft, kind: str,
                 device: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """One model's device-hours and disk on one device kind, and whether its training state fits."""
    h, d = cost["hours"], cost["disk"]
    kept = "none kept" if sft.method == "full" and not sft.keep_weights else f"{cells} kept: {_bytes(d['cells_kept'])}"
    lines = [f"  {name} ({_num(entry['parameters'])} parameters, from {entry['parameters_from']}): "
             f"{h['total']:,.1f} device-hours (probe {h['probe']:,.1f}, sft {h['sft']:,.1f}, "
             f"evaluate {h['evaluate']:,.1f}, loading {h['loading']:,.1f})",
             f"    disk {_bytes(d['peak'])} at peak: materialised {_bytes(d['materialised'])}, "
             f"{'full weights' if sft.method == 'full' else 'adapter'} {_bytes(d['per_cell'])} per cell ({kept}"
             + (f"; one at a time in data/scratch: {_bytes(d['scratch_peak'])}" if d["scratch_peak"] else "") + ")"
             + (f", Hugging Face download cache {_bytes(d['hub_cache'])}" if d["hub_cache"] else "")
             + f"; the DVC cache's copies add {_bytes(d['dvc_cache_copy'])} (none with reflinks)"]
    if cost["devices_for_training"] > 1:
        per_param = table["workload"]["training_state_bytes_per_param"]
        state = f"full fine-tuning state ({per_param} bytes/parameter, {_bytes(entry['parameters'] * per_param)})"
        lines.append(f"    {state} does not fit one {kind}: FSDP over >= {cost['devices_for_training']} GPUs "
                     "(configs/accelerate/fsdp.yaml)" if device["cuda"] else
                     f"    {state} does not fit this machine's {_bytes(device['memory_bytes'])} of memory")
    return lines


def _device_lines(kind: str, result: dict[str, Any], params: Params, table: dict[str, Any], devices: int) -> list[str]:
    """Every model's cost on one device kind, their total, and the ideal wall-clock over `devices`."""
    device, n_models = table["devices"][kind], len(result["models"])
    lines = [f"{kind} [{device['status']}]: {device['summary']} (memqa/resources/throughput.yaml)"]
    all_hours = all_disk = 0.0
    known = True
    for name, entry in result["models"].items():
        cost = entry["devices"][kind]
        if cost is None:
            lines.append(f"  {name}: parameters {entry['parameters_from']}")
            known = False
            continue
        all_hours += cost["hours"]["total"]
        all_disk += cost["disk"]["peak"]
        lines += _model_lines(name, entry, cost, result["stages"]["sft"] // n_models, params.sft, kind, device, table)
    if known and n_models > 1:
        lines.append(f"  all {n_models} models: {all_hours:,.1f} device-hours, disk {_bytes(all_disk)}")
    if known and devices > 1:
        lines.append(f"  on {devices} devices: ~{all_hours / devices:,.1f} h wall-clock at best, with the work "
                     "split into experiments run side by side (one `dvc exp run --temp` per device, docs/paper-scale.md"
                     "); one `dvc repro` runs its stages one after another")
    return lines


def render(result: dict[str, Any], params: Params, table: dict[str, Any], devices: int = 1) -> str:
    """The plan as `memqa plan` prints it: the grid and its work, then each device kind's hours and disk."""
    lines = _grid_lines(result, params, table)
    for kind in result["kinds"]:
        lines += _device_lines(kind, result, params, table, devices)
    return "\n".join(lines)
