"""The probe's GFLOP/s against this CPU's matmul roofline, in fp32 and bf16, and the ops where bf16 loses.

    nice -n 19 .venv/bin/python benchmarks/roofline.py --model gemma3-270m --facts 8     # after `make repro`

Measures, in one run, on one quiet machine:
1. roofline: GFLOP/s of torch.matmul at the shape of the output layer ([rows x hidden] x [hidden x vocab], rows
   64 and 210) and at 2048^3, fp32 and bf16 (best of --repeats after a warm-up);
2. probe: for each dtype and each method (likelihood; rao_blackwell with 1 sample, 16 tokens: the faithful
   candidate), score_facts on --facts in-domain train facts under memqa.meter.ComputeMeter: the counted matmul
   GFLOPs over wall seconds, and that as a share of the head-shaped roofline at 64 rows (the probe's batch);
3. ops: torch.profiler's top ops by self CPU time for rao_blackwell on the first 2 facts, per dtype, so a
   dtype that is slower end to end shows which ops lose (the matmuls, or the casts and softmax around them).
Writes benchmarks/results/roofline-<model>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from memqa.config import load_params
from memqa.environment import versions
from memqa.io import read_jsonl, write_json
from memqa.memory import probe_group
from memqa.meter import ComputeMeter
from memqa.models import load_model
from memqa.probe import score_facts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
METHODS = {"likelihood": {}, "rao_blackwell_k1_h16": {"rb_samples": 1, "rb_max_new_tokens": 16}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--facts", type=int, default=8, help="in-domain train facts the probe scores per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed matmuls per shape (the best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for roofline-<model>.json")
    return parser.parse_args()


def matmul_gflops(rows: int, inner: int, cols: int, dtype: torch.dtype, repeats: int) -> float:
    """Best GFLOP/s of [rows x inner] @ [inner x cols] over `repeats` timed runs, after one warm-up."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * rows * inner * cols / best / 1e9


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def roofline(hidden: int, vocab: int, repeats: int) -> dict:
    shapes = {"head_64": (64, hidden, vocab), "head_210": (210, hidden, vocab), "square_2048": (2048, 2048, 2048)}
    return {name: {dtype: round(matmul_gflops(*shape, DTYPES[dtype], repeats), 1) for dtype in DTYPES}
            for name, shape in shapes.items()}


def probe_run(model, tokenizer, facts: list[dict], conf, method: str) -> dict:
    """Wall time and counted GFLOPs of one method on the facts."""
    run_conf = conf.model_copy(update=METHODS[method])
    base = "likelihood" if method == "likelihood" else "rao_blackwell"
    with ComputeMeter(model) as meter:
        started = time.perf_counter()
        score_facts(model, tokenizer, facts, run_conf, base, seed=0)
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), **meter.as_dict(), "gflop_per_s": round(meter.flops / seconds / 1e9, 1)}


def top_ops(model, tokenizer, facts: list[dict], conf, limit: int = 8) -> list[dict]:
    """The ops taking the most self CPU time while rao_blackwell scores the facts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        score_facts(model, tokenizer, facts, conf.model_copy(update=METHODS["rao_blackwell_k1_h16"]),
                    "rao_blackwell", seed=0)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:limit]
    return [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 2), "calls": e.count} for e in events]


def pick_facts(n: int) -> list[dict]:
    """n in-domain train facts spread over the relations (every k-th of data/facts.jsonl's train group)."""
    train = [f for f in read_jsonl("data/facts.jsonl") if probe_group(f) == "train"]
    step = max(1, len(train) // n)
    return train[::step][:n]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    conf, facts = load_params().probe, pick_facts(args.facts)
    result = {"model": args.model, "facts": len(facts), "threads": torch.get_num_threads(),
              "load_average_1m_start": os.getloadavg()[0], "versions": versions(), "probe": {}, "ops": {}}
    for dtype in DTYPES:
        model, tokenizer = load_model(Path("data/models") / args.model, dtype)
        if "roofline" not in result:
            head = model.get_output_embeddings().weight
            result["roofline"] = roofline(head.shape[1], head.shape[0], args.repeats)
        result["probe"][dtype] = {m: probe_run(model, tokenizer, facts, conf, m) for m in METHODS}
        result["ops"][dtype] = top_ops(model, tokenizer, facts[:2], conf)
        print(dtype, json.dumps(result["probe"][dtype]), flush=True)
    result["probe_share_of_head_roofline"] = {
        dtype: {m: round(r["gflop_per_s"] / result["roofline"]["head_64"][dtype], 3) for m, r in runs.items()}
        for dtype, runs in result["probe"].items()}
    result["load_average_1m_end"] = os.getloadavg()[0]
    out = Path(args.out) / f"roofline-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(json.dumps({k: result[k] for k in ("roofline", "probe_share_of_head_roofline")}, indent=1))


if __name__ == "__main__":
    main()
