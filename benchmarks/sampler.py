"""The CPU sampler before and after pruning: one Gumbel-max step at Gemma's shape, and rao_blackwell end to end.

    .venv/bin/python benchmarks/sampler.py --model gemma3-270m --facts 6     # after `make repro` (data/, the model)

Measures, in one run, on one quiet machine:
1. step: milliseconds of one sampling step of 64 rows over the model's vocabulary, bf16 logits drawn N(0, 2.5^2),
   the full transform (every element's noisy score, as memqa did before) against decoding.sample_gumbel_max
   (candidates only, raw Philox words), best of --repeats, and whether their tokens are equal;
2. probe: score_facts by rao_blackwell (1 sample, every token: max_new_tokens) in bf16 on --facts in-domain train
   facts (roofline.py's pick), with each sampler: wall seconds per fact and whether every score is equal.
Writes benchmarks/results/sampler-<model>.json.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from roofline import _timed, pick_facts  # benchmarks/, the script's folder, is on sys.path

from memqa import decoding, engine
from memqa.config import load_params
from memqa.environment import versions
from memqa.io import write_json
from memqa.models import load_model
from memqa.probe import score_facts


def best_ms(work, repeats: int) -> float:
    """The best of `repeats` timed runs after one warm-up, in ms."""
    work()
    return round(min(_timed(work) for _ in range(repeats)) * 1000, 1)


def step_timing(vocab: int, repeats: int) -> dict:
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(0)) * 2.5).to(torch.bfloat16)
    keys = [decoding.row_key(0, p, 0) for p in range(64)]
    full = best_ms(lambda: decoding.full_gumbel_max(logits, 0.7, keys, 0), repeats)
    pruned = best_ms(lambda: decoding.sample_gumbel_max(logits, 0.7, keys, 0), repeats)
    same = torch.equal(decoding.full_gumbel_max(logits, 0.7, keys, 0), decoding.sample_gumbel_max(logits, 0.7, keys, 0))
    return {"rows": 64, "vocab": vocab, "full_ms": full, "pruned_ms": pruned, "speedup": round(full / pruned, 2),
            "same_tokens": same}


def probe_timing(model, tokenizer, facts: list[dict], conf) -> dict:
    """rao_blackwell K=1, full length, with each sampler (engine's name patched for the full one)."""
    run_conf = conf.model_copy(update={"rb_samples": 1, "rb_max_new_tokens": None})
    result, scores = {}, {}
    try:
        for name, sampler in (("full", decoding.full_gumbel_max), ("pruned", decoding.sample_gumbel_max)):
            engine.sample_gumbel_max = sampler
            started = time.perf_counter()
            scores[name] = score_facts(model, tokenizer, facts, run_conf, "rao_blackwell", seed=0)
            result[f"{name}_s_per_fact"] = round((time.perf_counter() - started) / len(facts), 2)
    finally:
        engine.sample_gumbel_max = decoding.sample_gumbel_max
    result["speedup"] = round(result["full_s_per_fact"] / result["pruned_s_per_fact"], 2)
    result["same_scores"] = scores["full"] == scores["pruned"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--facts", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    conf, facts = load_params().probe, pick_facts(args.facts)
    model, tokenizer = load_model(Path("data/models") / args.model, "bfloat16")
    result = {"model": args.model, "facts": len(facts), "dtype": "bfloat16", "threads": torch.get_num_threads(),
              "load_average_1m_start": os.getloadavg()[0], "versions": versions(),
              "step": step_timing(model.get_output_embeddings().weight.shape[0], args.repeats),
              "probe_rao_blackwell_k1": probe_timing(model, tokenizer, facts, conf),
              "load_average_1m_end": os.getloadavg()[0]}
    write_json(Path(args.out) / f"sampler-{args.model}.json", result)
    print(result["step"], result["probe_rao_blackwell_k1"])


if __name__ == "__main__":
    main()
