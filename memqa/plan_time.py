"""`memqa plan`'s time model: what one model's run costs on G devices of a kind, priced as the run does it.

The run is one `dvc exp run` whose stages each launch over the G GPUs (`$MEMQA_ACCELERATE`, docs/paper-scale.md):
the probe and evaluation data parallel (memqa's engine, one model copy per GPU) or through vLLM (its tensor and
data parallel sizes); sft on one GPU, or sharded (FSDP, full fine-tuning) / data parallel (adapters) over G at the
global batch sft.batch_size. Each launch starts its processes and loads the model on every one of them; sft saves
the trained weights (under FSDP gathered onto the main process first). Every optimizer step pays its compute split
over G, the AdamW step (sharded under FSDP) and, over several GPUs, the step's collectives: with the paper's 8 QA
pairs per step these, not the FLOPs, bound full fine-tuning. Figures: memqa/resources/throughput.yaml.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memqa.config import ModelSpec, Params, Sft

GB = 1e9


def dtype_bytes(name: str) -> int:
    """Bytes per value of a params dtype name: its bit width (bfloat16, float16: 2; float32: 4) over 8."""
    return int(re.search(r"\d+$", name).group()) // 8


def full_weights_bytes(sft: Sft, device: dict[str, Any]) -> int:
    """Bytes per parameter of saved full fine-tuning weights: the compute dtype (auto: bf16 on CUDA, fp32 on CPU)."""
    if sft.compute_dtype == "auto":
        return 2 if device["cuda"] else 4
    return dtype_bytes(sft.compute_dtype)


def adapter_params(n_params: float, sft: Sft, table: dict[str, Any]) -> float:
    return n_params * table["workload"]["adapter_params_fraction_r16"] * sft.lora_r / 16


def rates(device: dict[str, Any]) -> dict[str, float]:
    """Effective FLOP/s per kind of work: decode (memqa's engine), decode_vllm (when the kind has one), prefill,
    train; a `<kind>_flop_per_s` number (measured) replaces peak x mfu for that kind."""
    found = {kind: device["peak_bf16_flop_per_s"] * mfu for kind, mfu in device.get("mfu", {}).items()}
    return found | {kind: device[f"{kind}_flop_per_s"] for kind in ("decode", "decode_vllm", "prefill", "train")
                    if f"{kind}_flop_per_s" in device}


def usable(device: dict[str, Any], table: dict[str, Any]) -> float:
    return device["memory_bytes"] * table["workload"]["device_memory_usable"]


def launch_s(n_params: float, bytes_per_param: float, processes: int, device: dict[str, Any]) -> float:
    """Start a stage and load its model on each of `processes` processes (beyond load_concurrency they share)."""
    load = n_params * bytes_per_param / device["load_bytes_per_s"]
    return device["stage_startup_s"] + load * math.ceil(processes / device["load_concurrency"])


def inference(engine: str, parallel: tuple[int, int], n: float, weight_bytes: float, tokens: tuple[float, float],
              gpus: int, device: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """One stage of generation (decode, prefill tokens) on `gpus` GPUs: (seconds of work, seconds per launch, or
    why it cannot run). engine hf: one model per GPU, data parallel; vllm: tensor x data parallel replicas."""
    rate, (decode, prefill) = rates(device), tokens
    if engine == "vllm":
        used = parallel[0] * parallel[1]
        why = ("no vLLM rate for this kind" if "decode_vllm" not in rate else
               f"vLLM's tensor x data parallel size is {used} GPUs" if used > gpus else
               f"{weight_bytes * n / parallel[0] / GB:,.0f} GB of weights per GPU do not fit"
               if weight_bytes * n / parallel[0] > usable(device, table) else None)
        if why:
            return {"why": why}
        work = (2 * n * decode / rate["decode_vllm"] + 2 * n * prefill / rate["prefill"]) / used
        return {"work_s": work, "launch_s": launch_s(n / parallel[0], weight_bytes, used, device)
                + device["vllm_startup_s"]}
    if weight_bytes * n > usable(device, table):
        return {"why": f"{weight_bytes * n / GB:,.0f} GB of weights do not fit one device: set engine vllm with "
                       "tensor_parallel_size"}
    work = (2 * n * decode / rate["decode"] + 2 * n * prefill / rate["prefill"]) / gpus
    return {"work_s": work, "launch_s": launch_s(n, weight_bytes, gpus, device)}


def sft_memory_why(n: float, sft: Sft, base_bytes: int, gpus: int, device: dict[str, Any],
                   table: dict[str, Any]) -> str | None:
    """Why sft cannot run on `gpus` GPUs of this kind (memory, a global batch that does not split); None if it can."""
    w, room = table["workload"], usable(device, table)
    if gpus > 1 and sft.batch_size % (gpus * sft.grad_accum):
        return f"sft.batch_size {sft.batch_size} does not split over {gpus} GPUs x sft.grad_accum {sft.grad_accum}"
    if sft.method != "full":
        need, what = n * (0.5 if sft.method == "qlora" else base_bytes), "the frozen base"
    elif gpus == 1:
        need, what = n * w["training_state_bytes_per_param"], f"{w['training_state_bytes_per_param']} B/parameter"
    else:
        need = max(n * w["fsdp_load_bytes_per_param"], n * w["fsdp_sharded_bytes_per_param"] / gpus)
        what = f"FSDP: the fp32 model each process loads, or {w['fsdp_sharded_bytes_per_param']} B/parameter / {gpus}"
    if need > room:
        return f"{what} = {need / GB:,.0f} GB > {room / GB:,.0f} GB usable per device"
    return None


def sft_cost(n: float, params: Params, work: dict[str, Any], base_bytes: int, gpus: int, device: dict[str, Any],
             table: dict[str, Any]) -> dict[str, Any]:
    """One optimizer step's seconds by part, and one sft launch's (start, load, save); or why it cannot run."""
    sft, w, rate = params.sft, table["workload"], rates(device)
    why = sft_memory_why(n, sft, base_bytes, gpus, device, table)
    if why:
        return {"why": why}
    full, sharded = sft.method == "full", sft.method == "full" and gpus > 1
    trained = n if full else adapter_params(n, sft, table)
    tokens = work["sft"]["tokens"] / max(1, work["sft"]["steps"])
    collective = (n * w["fsdp_step_bytes_per_param"] if sharded else trained * 4 * 2) * (gpus - 1) / gpus
    step = {"compute": (6 if full else 4) * n * tokens / (gpus * rate["train"]),
            "optimizer": trained * w["optimizer_bytes_per_param"] / (gpus if sharded else 1)
            / device["memory_bytes_per_s"],
            "collectives": collective / device["collective_bytes_per_s"] if gpus > 1 else 0.0}
    saved = n * full_weights_bytes(sft, device) if full else trained * 4
    save = saved / device["save_bytes_per_s"] + (n * 4 / device["gather_bytes_per_s"] if sharded else 0.0)
    return {"step_s": step, "launch_s": launch_s(n, 4 if full else base_bytes, gpus, device) + save}


def run_cost(params: Params, work: dict[str, Any], n: float, spec: ModelSpec, gpus: int, device: dict[str, Any],
             table: dict[str, Any]) -> dict[str, Any]:
    """One model's run on `gpus` devices: wall-clock hours by part and device-hours, or why it cannot run."""
    probe, evaluate, sft = params.probe, params.evaluate, params.sft
    base_bytes = dtype_bytes(spec.dtype)
    eval_bytes = full_weights_bytes(sft, device) if sft.method == "full" else base_bytes
    tokens = (work["probe"]["decode_tokens"], work["probe"]["prefill_tokens"])
    probing = inference(probe.engine, (probe.tensor_parallel_size, probe.data_parallel_size), n,
                        dtype_bytes(probe.dtype), tokens, gpus, device, table)
    tokens = (work["evaluate"]["decode_tokens"], work["evaluate"]["prefill_tokens"])
    evaluating = inference(evaluate.engine, (evaluate.tensor_parallel_size, evaluate.data_parallel_size), n,
                           eval_bytes, tokens, gpus, device, table)
    training = sft_cost(n, params, work, base_bytes, gpus, device, table)
    for stage, cost in (("probe", probing), ("sft", training), ("evaluate", evaluating)):
        if "why" in cost:
            return {"gpus": gpus, "why": f"{stage}: {cost['why']}"}
    cells, steps = work["cells"], work["sft"]["steps"]
    step_s = sum(training["step_s"].values())
    launches = (launch_s(n, 2 * base_bytes, 1, device)  # materialize: read and write once
                + cells * training["launch_s"] + (cells + 1) * evaluating["launch_s"])
    wall = {"probe": (probing["work_s"] + probing["launch_s"]) / 3600, "sft": steps * step_s / 3600,
            "launches": launches / 3600, "evaluate": evaluating["work_s"] / 3600}
    total = sum(wall.values())
    return {"gpus": gpus, "wall_hours": {**wall, "total": total}, "device_hours": total * gpus,
            "step_s": training["step_s"], "sft_launch_s": training["launch_s"],
            "evaluate_launch_s": evaluating["launch_s"], "engines": (probe.engine, evaluate.engine)}


def figure_labels(device: dict[str, Any]) -> dict[str, list[str]]:
    """The kind's numbers by where they come from: measured, datasheet, ASSUMED (every other number)."""
    numbers = [key for key, value in device.items() if isinstance(value, int | float) and not isinstance(value, bool)]
    numbers += [f"mfu.{key}" for key in device.get("mfu", {})]
    measured, datasheet = set(device.get("measured", [])), set(device.get("datasheet", []))
    return {"measured": [k for k in numbers if k in measured], "datasheet": [k for k in numbers if k in datasheet],
            "ASSUMED": [k for k in numbers if k not in measured | datasheet]}
