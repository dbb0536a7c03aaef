"""Check memqa's GPU path and measure what `memqa plan` prices, in one command (<= 8 minutes on one H200).

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json   # GPU machine: torch, transformers, peft, accelerate
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/smoke.json --cpu-smoke   # here: tiny shapes on the CPU

Needs no make, DVC, vLLM, bitsandbytes or EntityQuestions: memqa is imported from this checkout, models are random
Llamas built here with a word-level tokenizer of their vocabulary. memqa's training imports click and pydantic:
without them the SFT checks are skipped, saying so, unless --wheels names a folder of their wheels (~3 MB).
Each check runs in its own try/except and writes its error, or `skipped` and why (a missing package, the time
budget), into the JSON, rewritten after every check:
- versions: Python, torch, CUDA, NCCL, transformers, accelerate, peft, bitsandbytes, vLLM, the GPU;
- engine: on the device, the sampler's noise equals its CPU reference bit for bit; greedy rows batched = alone, and
  = HF generate; sampled rows independent of the batch (shares of identical rows, fp32 and bf16);
- sft_one_gpu / sft_fsdp: full fine-tuning through memqa.training.fine_tune on one GPU (twice: reruns identical?)
  and under configs/accelerate/fsdp.yaml with 1 process (accelerate launch): loss curve, saved dtype, reload,
  RoPE inv_freq dtype while training;
- throughput: a random Llama-3-8B shape (GQA, 128k vocabulary, bf16): the probe (10 samples x 32 tokens) through
  memqa's engine with and without early stop, against HF generate; evaluation (greedy 16 tokens) likewise;
- sft_step: an SFT step of 8 QA pairs on Llama-3-8B's shape cut to 8 layers: seconds and peak bytes/parameter, with
  the fused AdamW memqa uses and torch's foreach default; load_save: save and load rates of that model;
- vllm_throughput: the probe through vLLM, if it imports; qlora: QLoRA through fine_tune, if bitsandbytes imports.
`throughput_yaml` then holds the measured figures in memqa/resources/throughput.yaml's layout. --cpu-smoke runs
the same code on tiny shapes on the CPU: a test that the script runs, whose numbers are NOT figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts (sft.deterministic needs it)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from gpu_check_measure import (  # noqa: E402
    load_save_check,
    qlora_check,
    sft_step_check,
    throughput_check,
    throughput_yaml,
    vllm_check,
)
from gpu_check_parts import SHAPES, engine_check, sft_check  # noqa: E402

CHECKS = {  # name: (seconds it takes on one H200, budgeted before it starts)
    "versions": 1, "engine": 25, "sft_one_gpu": 40, "sft_fsdp": 60, "throughput": 110, "sft_step": 70,
    "load_save": 50, "vllm_throughput": 90, "qlora": 30}
NEEDS = {"click", "pydantic"}  # memqa.errors and memqa.config, which memqa's training (and distributed) import
NEEDED_BY = ("sft_one_gpu", "sft_fsdp", "sft_step", "qlora")


def missing(name: str) -> list[str]:
    import importlib.util

    return sorted(m for m in NEEDS if name in NEEDED_BY and importlib.util.find_spec(m) is None)


def bring_wheels(folder: Path | None) -> dict | None:
    """Without click or pydantic, install them from a folder of wheels (no registry: pip download --only-binary
    :all: --python-version 3.X -d DIR click pydantic, ~3 MB) into a temporary folder put on sys.path."""
    import importlib
    import subprocess
    import tempfile

    if folder is None or not missing("sft_one_gpu"):
        return None
    target = tempfile.mkdtemp(prefix="gpu_check-wheels-")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(folder),
                           "--target", target, *sorted(NEEDS)], capture_output=True, text=True)
    if done.returncode == 0:  # here, and in the FSDP launch's processes
        sys.path.insert(0, target)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")]))
        importlib.invalidate_caches()
    return {"from": str(folder), "ok": done.returncode == 0, "error": done.stderr[-1500:] or None}


def versions() -> dict:
    found = {}
    for dist in ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "vllm", "tokenizers", "safetensors",
                 "pydantic", "click"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    found |= {"python": sys.version.split()[0], "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found |= {"gpu": props.name, "gpu_memory_bytes": props.total_memory, "gpus": torch.cuda.device_count(),
                  "capability": list(torch.cuda.get_device_capability(0)),
                  "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    return found


def fsdp_worker(work: Path, smoke: bool) -> None:
    """Under `accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1`: sft_check."""
    result = sft_check(work, SHAPES["tiny" if smoke else "small"], reruns=1)
    (work / "fsdp.json").write_text(json.dumps(result))


def sft_fsdp(work: Path, smoke: bool, deadline: float, reference: dict | None) -> dict:
    import subprocess

    from memqa.distributed import free_port

    if not torch.cuda.is_available():
        return {"skipped": "accelerate runs FSDP on GPUs only (no CUDA here)"}
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1", "--main_process_port",
               str(free_port()), str(Path(__file__).resolve()), "--fsdp-worker", str(work)]
    command += ["--cpu-smoke"] if smoke else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(30, deadline - time.time()))
    if done.returncode:
        return {"ok": False, "error": (done.stdout[-2000:] + done.stderr[-4000:])}
    result = json.loads((work / "fsdp.json").read_text())
    if reference and "loss" in reference and "loss" in result:
        result["max_loss_difference_to_one_gpu"] = max(abs(a - b) for a, b in zip(result["loss"], reference["loss"],
                                                                                  strict=True))
    return result


def run_checks(args: argparse.Namespace) -> dict:
    import tempfile

    started, deadline = time.time(), time.time() + args.budget_s
    wheels = bring_wheels(args.wheels)
    report = {"smoke": args.cpu_smoke, "wheels": wheels, "figures": not args.cpu_smoke and torch.cuda.is_available(),
              "note": ("--cpu-smoke: tiny shapes on the CPU, a test that the script runs; its numbers are not "
                       "figures") if args.cpu_smoke else "measured on this machine", "checks": {}}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    steps = {
        "versions": versions,
        "engine": lambda: engine_check(device, args.cpu_smoke),
        "sft_one_gpu": lambda: sft_check(work / "one", SHAPES["tiny" if args.cpu_smoke else "small"], reruns=2),
        "sft_fsdp": lambda: sft_fsdp(work / "fsdp", args.cpu_smoke, deadline, report["checks"].get("sft_one_gpu")),
        "throughput": lambda: throughput_check(device, args.cpu_smoke),
        "sft_step": lambda: sft_step_check(device, args.cpu_smoke, work / "step"),
        "load_save": lambda: load_save_check(work / "saved", device, args.cpu_smoke),
        "vllm_throughput": lambda: vllm_check(work / "saved", args.cpu_smoke),
        "qlora": lambda: qlora_check(work / "qlora", args.cpu_smoke),
    }
    only = set(args.only.split(",")) if args.only else set(steps)
    for name, step in steps.items():
        if name not in only:
            continue
        began = time.time()
        report["checks"][name] = run_one(name, step, deadline, args.cpu_smoke)
        report["checks"][name]["wall_s"] = round(time.time() - began, 1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        report["throughput_yaml"] = throughput_yaml(report["checks"], report["figures"])
        report["wall_s"] = round(time.time() - started, 1)
        write(args.out, report)
        print(f"{name}: {summary(report['checks'][name])}", flush=True)
    return report


def run_one(name: str, step, deadline: float, smoke: bool) -> dict:
    """One check's result: skipped (a package missing, the time budget), its error, or what it returns."""
    if missing(name):
        return {"skipped": f"memqa's training imports {', '.join(missing(name))}, not installed here: pip install "
                           "click pydantic, or bring their wheels (--wheels DIR)"}
    if not smoke and time.time() + CHECKS[name] > deadline:
        return {"skipped": f"time budget: {CHECKS[name]} s needed, {deadline - time.time():.0f} s left of --budget-s"}
    try:
        return step()
    except Exception as err:  # noqa: BLE001 (every check reports its own failure and the others go on)
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}


def summary(result: dict) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "error" in result:
        return f"FAILED ({result['error'].splitlines()[0][:200]})"
    keys = [k for k in result if k not in ("traceback",)][:8]
    return ", ".join(f"{k}={json.dumps(result[k])[:60]}" for k in keys)


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".partial")
    part.write_text(json.dumps(report, indent=2, default=str) + "\n")
    part.replace(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    parser.add_argument("--budget-s", type=float, default=470, help="stop starting checks after this (default 470)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: not figures")
    parser.add_argument("--only", help="comma-separated checks: " + ",".join(CHECKS))
    parser.add_argument("--wheels", type=Path, help="a folder of click and pydantic wheels, if they are missing")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fsdp_worker:
        fsdp_worker(args.fsdp_worker, args.cpu_smoke)
    else:
        run_checks(args)
