"""SFT throughput of full fine-tuning as the pipeline runs it, and the paper protocol's cost at the rates measured.

    .venv/bin/python benchmarks/sft_throughput.py --random-init-shape llama-1b                 # one H100 (80 GB)
    .venv/bin/python benchmarks/sft_throughput.py --random-init-shape llama-7b                 # one H200 (141 GB)
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 \\
        benchmarks/sft_throughput.py --random-init-shape llama-7b                              # 8 GPUs, sharded
    .venv/bin/python benchmarks/sft_throughput.py --random-init-shape llama-tiny --force --steps 3   # CPU smoke test

1. Training: a random-init Llama of the shape, fp32 master weights, bf16 autocast on CUDA (accelerate
   mixed_precision bf16; fp32 on CPU), torch AdamW, cosine-free constant lr, `memqa.sft_batches.summed_loss` on
   --batch-size sequences of --seq-len random tokens per step (global, over every process), as
   memqa.training.train does it (model prepared before the optimizer, so FSDP works too). Timed apart:
   forward + backward, and the optimizer step. Reports tokens/s, model TFLOP/s (6 x parameters per token) and
   their share of --peak-tflops per GPU, and peak memory. Full fine-tuning holds 16 bytes per parameter
   (fp32 weights, gradients, AdamW m and v): llama-7b (6.7B) needs ~108 GB, more than one 80 GB H100.
2. Estimate: the decode and prefill rates of benchmarks/probe_engine.py's JSON for the same shape
   (--probe-results; default benchmarks/results/probe_engine-random-<shape>.json, when it exists) and this
   run's training and optimizer rates become a device kind "measured" of memqa/resources/throughput.yaml, and
   memqa.plan counts the paper protocol's work (presets/paper.args, --model-params) and prices it: device-hours
   by part, as `memqa plan` prints them. Rates are FLOP/s, transferred to --model-params as plan.py does
   (per-parameter efficiency assumed equal); what is not measured here (load, stage start-up) comes from
   --base-kind.

Writes benchmarks/results/sft_throughput-<model>.json (--out) and prints a summary.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from memqa import plan
from memqa.config import load_params
from memqa.overrides import preset_overrides
from memqa.plan_text import render
from memqa.sft_batches import summed_loss

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # hidden, layers, heads, intermediate, vocab: as benchmarks/probe_engine.py
    "llama-7b": (4096, 32, 32, 11008, 32000),
    "llama-1b": (2048, 16, 32, 5632, 32000),
    "llama-tiny": (256, 2, 4, 688, 32000),  # a CPU smoke test of this code path (with --force)
}
TRAINING_STATE_BYTES = 16  # fp32 weights 4 + gradients 4 + AdamW m 4 + v 4

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--random-init-shape", choices=sorted(SHAPES), default="llama-1b")
parser.add_argument("--batch-size", type=int, default=8, help="global batch (sequences per optimizer step)")
parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
parser.add_argument("--lr", type=float, default=1e-5)
parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100 SXM: 989)")
parser.add_argument("--probe-results", default=None,
                    help="probe_engine.py JSON of the same shape (decode, prefill); default: "
                         "benchmarks/results/probe_engine-random-<shape>.json if it exists")
parser.add_argument("--preset", default=str(REPO / "presets" / "paper.args"), help="the protocol to price")
parser.add_argument("--params", default=str(REPO / "params.yaml"))
parser.add_argument("--model-params", type=float, default=8.03e9, help="parameters of the model to price "
                                                                      "(Llama-3-8B: 8.03e9)")
parser.add_argument("--base-kind", default=None, help="throughput.yaml kind for what is not measured "
                                                      "(default: h100 on CUDA, cpu-2core on CPU)")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
parser.add_argument("--force", action="store_true", help="allow running without CUDA (a smoke test)")
parser.add_argument("--out", default=None, help="default: benchmarks/results/sft_throughput-<model>.json")
args = parser.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_llama(shape: str) -> torch.nn.Module:
    """fp32 master weights, on this process's device (each process holds the whole model before FSDP shards it,
    as the pipeline loads it)."""
    hidden, layers, heads, intermediate, vocab = SHAPES[shape]
    config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                      intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=4096,
                                      pad_token_id=0)
    with accelerator.device:
        model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.float32)
    return model


# ---------------------------------------------------------------------------------------------- set-up
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

cuda = torch.cuda.is_available()
if not cuda and not args.force:
    sys.exit("sft_throughput.py measures GPU tokens/s and TFLOP/s, and no CUDA device is available here: run it on a "
             "GPU machine, or pass --force to run it on CPU anyway (a smoke test)")
if args.threads:
    torch.set_num_threads(args.threads)
accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
processes = accelerator.num_processes
if args.batch_size % processes:
    sys.exit(f"--batch-size {args.batch_size} is the global batch: use a multiple of the {processes} processes")
hidden, layers, heads, intermediate, vocab = SHAPES[args.random_init_shape]
n_params = vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) + hidden \
    + vocab * hidden  # embeddings, decoder layers (attention, MLP, 2 norms), final norm, untied lm_head
sharded = accelerator.distributed_type == DistributedType.FSDP
if cuda:
    free = torch.cuda.get_device_properties(accelerator.device).total_memory
    need = n_params * (TRAINING_STATE_BYTES / processes if sharded else TRAINING_STATE_BYTES)
    if need > 0.9 * free:
        sys.exit(f"{args.random_init_shape}: full fine-tuning holds {TRAINING_STATE_BYTES} bytes/parameter "
                 f"({need / 1e9:.0f} GB per GPU), more than this GPU's {free / 1e9:.0f} GB: use llama-1b, a larger GPU "
                 "(H200), or FSDP over several (accelerate launch --config_file configs/accelerate/fsdp.yaml)")
torch.manual_seed(0)
model = random_llama(args.random_init_shape)
assert sum(p.numel() for p in model.parameters()) == n_params
model = accelerator.prepare(model)  # before the optimizer: FSDP replaces the parameters
optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0))
model.train()
per_device = args.batch_size // processes
generator = torch.Generator().manual_seed(accelerator.process_index)
if accelerator.is_main_process:
    log(f"{args.random_init_shape}: {n_params / 1e9:.2f}B parameters, {processes} process(es) "
        f"({accelerator.distributed_type.value}), {accelerator.device}, mixed precision {accelerator.mixed_precision}")


def step() -> tuple[float, float]:
    """One optimizer step of the global batch: (seconds forward + backward, seconds optimizer)."""
    ids = torch.randint(1, vocab, (per_device, args.seq_len), generator=generator).to(accelerator.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    sync()
    started = time.perf_counter()
    loss = summed_loss(model, batch) / (per_device * (args.seq_len - 1))
    accelerator.backward(loss)
    sync()
    middle = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad()
    sync()
    return middle - started, time.perf_counter() - middle


# ---------------------------------------------------------------------------------------------- measure
for _ in range(args.warmup_steps):
    step()
if cuda:
    torch.cuda.reset_peak_memory_stats()
timings = [step() for _ in range(args.steps)]
compute_s = sum(t[0] for t in timings)
optimizer_s = sum(t[1] for t in timings)
step_s = compute_s + optimizer_s
tokens = args.steps * args.batch_size * args.seq_len  # global
tokens_per_s = tokens / step_s
tflops = 6 * n_params * tokens_per_s / 1e12  # model FLOPs of all processes
training = {
    "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / processes,
    "seconds_per_step": step_s / args.steps, "forward_backward_s_per_step": compute_s / args.steps,
    "optimizer_s_per_step": optimizer_s / args.steps,
    "model_tflops": tflops, "model_tflops_per_gpu": tflops / processes,
    "share_of_peak": tflops / processes / args.peak_tflops if cuda else None,
    "forward_backward_share_of_peak": (6 * n_params * tokens / compute_s / 1e12 / processes / args.peak_tflops
                                       if cuda else None),
    "peak_memory_gb": (torch.cuda.max_memory_allocated() / 1e9 if cuda else None),
}
if not accelerator.is_main_process:
    sys.exit(0)

# ---------------------------------------------------------------------------------------------- the protocol's hours
table = plan.load_table()
base_kind = args.base_kind or ("h100" if cuda else "cpu-2core")
base = table["devices"][base_kind]
probe_path = Path(args.probe_results or REPO / "benchmarks" / "results" /
                  f"probe_engine-random-{args.random_init_shape}.json")
workload = table["workload"]
measured = {**base,  # the plan's other keys (collectives, save, gather, vLLM rates): the base kind's, not measured
    "status": "measured", "cuda": cuda,
    # per device: forward + backward FLOP/s of one process; the optimizer step as bytes moved per second
    "train_flop_per_s": 6 * n_params * tokens / processes / compute_s,
    # (device-seconds: P x the step's time, whether P shards share the step or P replicas each repeat it)
    "memory_bytes_per_s": n_params * workload["optimizer_bytes_per_param"] / (processes * optimizer_s / args.steps),
    "load_bytes_per_s": base["load_bytes_per_s"], "stage_startup_s": base["stage_startup_s"],
    "memory_bytes": (torch.cuda.get_device_properties(accelerator.device).total_memory if cuda
                     else base["memory_bytes"]),
}
sources = {"train": "measured here", "optimizer": "measured here",
           "load, stage start-up, memory": f"throughput.yaml {base_kind}"}
probe_results = None
if probe_path.is_file():
    probe_results = json.loads(probe_path.read_text())
    n_probe = probe_results["n_parameters"]
    decode = probe_results["engine_no_early_stop"]["tokens_per_s"]
    prefill = probe_results["likelihood"]["prompts_per_s"] * (workload["tokens_per_probe_prompt"]
                                                              + workload["tokens_per_answer"])
    measured |= {"decode_flop_per_s": 2 * n_probe * decode, "prefill_flop_per_s": 2 * n_probe * prefill}
    sources |= {"decode, prefill": f"measured: {probe_path} ({probe_results['environment']['device_name']})"}
else:
    rate = plan.rates(base)
    measured |= {"decode_flop_per_s": rate["decode"], "prefill_flop_per_s": rate["prefill"]}
    sources |= {"decode, prefill": f"NOT measured ({probe_path} missing): throughput.yaml {base_kind}"}
device_name = torch.cuda.get_device_name(accelerator.device) if cuda else platform.processor() or "cpu"
measured["summary"] = (f"{args.random_init_shape} on {processes} x {device_name}: " +
                       "; ".join(f"{k}: {v}" for k, v in sources.items()))
table_measured = copy.deepcopy(table)
table_measured["devices"]["measured"] = measured
name = "priced-model"  # one model of --model-params parameters, from the Hub, in bf16 (the paper's kind)
params = load_params(args.params, args.preset, ("~models", f"+models={{{name}: {{source: meta-llama/Meta-Llama-3-8B, "
                                                "dtype: bfloat16}}"))
result = plan.plan(params, {name: (args.model_params, "--model-params")}, table_measured, ["measured", base_kind])
estimate = {kind: result["models"][name]["devices"][kind]["hours"] for kind in ("measured", base_kind)}
paper_text = render(result, params, table_measured)

results = {
    "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "model": f"random-{args.random_init_shape}"},
    "environment": {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(accelerator.device), "device_name": device_name, "processes": processes,
        "distributed": accelerator.distributed_type.value, "mixed_precision": accelerator.mixed_precision,
        "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    },
    "n_parameters": n_params, "training": training,
    "paper_estimate": {"preset": args.preset, "model_params": args.model_params, "device_kind": measured,
                       "sources": sources, "hours_per_model": estimate},
}
out = Path(args.out or REPO / "benchmarks" / "results" / f"sft_throughput-random-{args.random_init_shape}.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(results, indent=2) + "\n")

t = training
print(f"\nfull fine-tuning, random-init {args.random_init_shape} ({n_params / 1e9:.2f}B), {processes} x {device_name}, "
      f"{accelerator.mixed_precision} autocast over fp32 weights, AdamW, batch {args.batch_size} x {args.seq_len} "
      f"tokens, {args.steps} steps\n")
print("| tokens/s | per GPU | s/step (fwd+bwd / optimizer) | model TFLOP/s per GPU (share of peak) | peak memory |")
print("|---:|---:|---:|---:|---:|")
share = f" ({t['share_of_peak']:.1%})" if t["share_of_peak"] is not None else ""
memory = f"{t['peak_memory_gb']:.1f} GB" if t["peak_memory_gb"] is not None else "-"
print(f"| {t['tokens_per_s']:,.0f} | {t['tokens_per_s_per_gpu']:,.0f} | {t['seconds_per_step']:.3f} "
      f"({t['forward_backward_s_per_step']:.3f} / {t['optimizer_s_per_step']:.3f}) | {t['model_tflops_per_gpu']:.2f}"
      f"{share} | {memory} |")
print(f"\nthe paper protocol ({Path(args.preset).name}, {len(preset_overrides(args.preset))} overrides), one model of "
      f"{args.model_params:.3g} parameters, at these rates (kind 'measured') and at throughput.yaml's {base_kind}:\n")
print(paper_text)
print(f"\nwrote {out}")
