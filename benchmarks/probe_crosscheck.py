"""Likelihood vs sampling memory scores on the same facts: Spearman of R, Cohen's kappa of the levels.

    .venv/bin/python benchmarks/probe_crosscheck.py --model gemma3-270m --facts 16

Takes facts from the model's probe output (data/probe/<model>/scores.jsonl), spread over its levels, runs
the paper's sampling protocol on them (probe params, method sample) and compares with the likelihood scores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from memqa.config import load_params
from memqa.io import read_jsonl
from memqa.memory import add_levels
from memqa.models import load_model
from memqa.probing import score_facts

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default="gemma3-270m")
parser.add_argument("--facts", type=int, default=16)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

conf = load_params()["probe"]
facts = {f["fact_id"]: f for f in read_jsonl("data/facts.jsonl")}
scored = sorted(read_jsonl(f"data/probe/{args.model}/scores.jsonl"), key=lambda r: -r["score"])
step = max(1, len(scored) // args.facts)
chosen = scored[::step][:args.facts]  # evenly spaced over the score ranking: all levels present
model, tokenizer = load_model(f"data/models/{args.model}", conf["dtype"])
started = time.time()
sampled = score_facts(model, tokenizer, [facts[r["fact_id"]] for r in chosen], conf, "sample", seed=0)
wall = time.time() - started
add_levels(sampled, conf)
likelihood = [r["score"] for r in chosen]
sampling = [r["score"] for r in sampled]
result = {
    "model": args.model, "facts": len(chosen), "templates": conf["templates"], "samples": conf["samples"],
    "temperature": conf["temperature"], "max_new_tokens": conf["max_new_tokens"], "sampling_wall_s": round(wall, 1),
    "spearman": round(float(spearmanr(likelihood, sampling).statistic), 4),
    "cohen_kappa": round(float(cohen_kappa_score([r["level"] for r in chosen], [r["level"] for r in sampled])), 4),
    "mean_R": {"likelihood": round(sum(likelihood) / len(chosen), 4),
               "sampling": round(sum(sampling) / len(chosen), 4)},
    "levels": {"likelihood": [r["level"] for r in chosen], "sampling": [r["level"] for r in sampled]},
    "pairs": [[round(a, 4), round(b, 4)] for a, b in zip(likelihood, sampling, strict=True)],
}
out = Path(f"benchmarks/results/probe_crosscheck-{args.model}.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))
