"""Does a level or an answer depend on the batch it was computed in, or on the dtype? Measured on a real model.

    .venv/bin/python benchmarks/numerics.py                              # Gemma 3 270M, 100 facts, both dtypes
    .venv/bin/python benchmarks/numerics.py --model smollm2-135m --facts 50

Batched inference pads prompts to a common length (left padding), and matrix kernels pick their blocking by
shape, so the same prompt can get logits that differ in the last bits from batch to batch. Greedy decoding turns a
near-tie into a different token, and a memory level turns a score near a bound into another level. For each dtype
(bfloat16, float32) this script runs, on the same facts:

1. the probe (params.yaml's `probe`, method likelihood unless --method) at `--batch` and at batch 1 (every prompt
   alone: no padding), and counts facts whose score or level differs;
2. greedy evaluation of the base model (the `evaluate` stage's prompts, 16 tokens) on `--facts` test facts at the
   evaluate batch size and at batch 1, and counts answers whose text or correctness differs;

then compares the dtypes (levels and answers at the default batch sizes). Writes
benchmarks/results/numerics-<model>.json and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import get_args

import torch

from memqa.config import PROBE_METHOD, load_params
from memqa.evaluation import predict
from memqa.io import read_jsonl
from memqa.memory import add_levels, probe_group
from memqa.models import load_model
from memqa.probe import score_facts
from memqa.splits import balanced_sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--facts", type=int, default=100, help="train facts probed and test facts evaluated")
    parser.add_argument("--method", default="likelihood", choices=get_args(PROBE_METHOD))
    parser.add_argument("--batch", type=int, default=0, help="probe batch size (0: params.yaml's)")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/numerics-<model>.json")
    return parser.parse_args()


def probe_rows(model, tokenizer, facts, conf, batch):
    started = time.time()
    rows = score_facts(model, tokenizer, facts, conf.model_copy(update={"batch_size": batch}), conf.method, conf.seed)
    add_levels(rows, conf)
    return rows, time.time() - started


def eval_rows(model, tokenizer, facts, conf, batch):
    started = time.time()
    rows = predict(model, tokenizer, [{**f, "level": 0} for f in facts], conf.model_copy(update={"batch_size": batch}))
    return rows, time.time() - started


def compare_probe(a: list[dict], b: list[dict]) -> dict:
    diffs = [abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)]
    return {"facts": len(a), "score_max_abs_diff": max(diffs), "scores_differing": sum(d > 0 for d in diffs),
            "levels_differing": sum(x["level"] != y["level"] for x, y in zip(a, b, strict=True))}


def compare_answers(a: list[dict], b: list[dict]) -> dict:
    return {"facts": len(a), "outputs_differing": sum(x["output"] != y["output"] for x, y in zip(a, b, strict=True)),
            "correct_differing": sum(x["correct"] != y["correct"] for x, y in zip(a, b, strict=True)),
            "accuracy": [round(100 * sum(x["correct"] for x in rows) / len(rows), 2) for rows in (a, b)]}


def main() -> None:
    args = parse_args()
    params = load_params()
    probe = params.probe.model_copy(update={"method": args.method})
    evaluate = params.evaluate
    facts = read_jsonl("data/facts.jsonl")
    train = balanced_sample([f for f in facts if probe_group(f) == "train"], args.facts, args.seed)
    test = balanced_sample([f for f in facts if f["split"] == "test"], args.facts, args.seed)
    probe_batch = args.batch or probe.batch_size
    result = {"model": args.model, "method": args.method, "facts": args.facts, "probe_batch": probe_batch,
              "eval_batch": evaluate.batch_size, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "dtypes": {}}
    kept = {}
    for dtype in args.dtypes:
        model, tokenizer = load_model(Path("data/models") / args.model, dtype)
        batched, t_batched = probe_rows(model, tokenizer, train, probe, probe_batch)
        alone, t_alone = probe_rows(model, tokenizer, train, probe, 1)
        answers, e_batched = eval_rows(model, tokenizer, test, evaluate, evaluate.batch_size)
        answers_alone, e_alone = eval_rows(model, tokenizer, test, evaluate, 1)
        kept[dtype] = (batched, answers)
        result["dtypes"][dtype] = {
            "probe_batch_vs_alone": compare_probe(batched, alone),
            "probe_wall_s": {"batched": round(t_batched, 1), "alone": round(t_alone, 1)},
            "levels_batched": [sum(r["level"] == lv for r in batched) for lv in range(probe.n_levels)],
            "eval_batch_vs_alone": compare_answers(answers, answers_alone),
            "eval_wall_s": {"batched": round(e_batched, 1), "alone": round(e_alone, 1)},
        }
        print(dtype, json.dumps(result["dtypes"][dtype]), flush=True)
    if len(kept) == 2:
        (p32, a32), (p16, a16) = kept[args.dtypes[0]], kept[args.dtypes[1]]
        result[f"{args.dtypes[0]}_vs_{args.dtypes[1]}"] = {"probe": compare_probe(p32, p16),
                                                          "eval": compare_answers(a32, a16)}
        print("dtypes", json.dumps(result[f"{args.dtypes[0]}_vs_{args.dtypes[1]}"]), flush=True)
    out = Path(args.out or f"benchmarks/results/numerics-{args.model}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
