"""The CPU decode step's full-vocabulary work, and the default probe's cost per fact.

    .venv/bin/python benchmarks/sampler.py --model gemma3-270m --facts 60     # after `make repro` (data/, the model)

Measures, in one run, on one quiet machine:
1. step: milliseconds of one step of 64 rows over the model's vocabulary, bf16 logits drawn N(0, s^2) for a peaked
   (s = 6) and a flat (s = 2.5) case: the dense Gumbel draw (decoding.full_gumbel_max: every element's noise)
   against decoding.sample_gumbel_max (noise only for the candidates), whether their tokens are equal; and the full
   tempered log-softmax gathered against teacher_forcing.tempered_logprobs_at, with their largest difference;
   best of --repeats;
2. probe: score_facts with params.yaml's probe section (the default estimator, screen, dtype and batch size) on
   --facts facts drawn at random (seed 0) from every probed fact of data/facts.jsonl: wall seconds per fact and
   the share of templates the screen sent on.
Writes benchmarks/results/sampler-<model>.json.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
from roofline import _timed  # benchmarks/, the script's folder, is on sys.path

from memqa import decoding, teacher_forcing
from memqa.config import load_params
from memqa.environment import versions
from memqa.io import read_jsonl, write_json
from memqa.memory import probe_group
from memqa.models import load_model
from memqa.probe import score_facts


def best_ms(work, repeats: int) -> float:
    """The best of `repeats` timed runs after one warm-up, in ms."""
    work()
    return round(min(_timed(work) for _ in range(repeats)) * 1000, 1)


def full_logprobs_at(logits: torch.Tensor, temperature: float, index: torch.Tensor) -> torch.Tensor:
    """The whole tempered log-softmax, then the gather (what tempered_logprobs_at avoids writing)."""
    return teacher_forcing.tempered_logprobs(logits, temperature).gather(1, index.to(logits.device))


def sampler_timing(vocab: int, scale: float, repeats: int) -> dict:
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(0)) * scale).to(torch.bfloat16)
    keys = [decoding.row_key(0, p, 0) for p in range(64)]
    dense = best_ms(lambda: decoding.full_gumbel_max(logits, 0.7, keys, 0), repeats)
    pruned = best_ms(lambda: decoding.sample_gumbel_max(logits, 0.7, keys, 0), repeats)
    same = torch.equal(decoding.full_gumbel_max(logits, 0.7, keys, 0), decoding.sample_gumbel_max(logits, 0.7, keys, 0))
    return {"logit_sd": scale, "dense_ms": dense, "pruned_ms": pruned, "speedup": round(dense / pruned, 2),
            "same_tokens": same}


def logprob_timing(vocab: int, repeats: int) -> dict:
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(0)) * 2.5).to(torch.bfloat16)
    index = torch.randint(0, vocab, (64, 4), generator=torch.Generator().manual_seed(1))
    softmax = best_ms(lambda: full_logprobs_at(logits, 0.7, index), repeats)
    lse = best_ms(lambda: teacher_forcing.tempered_logprobs_at(logits, 0.7, index), repeats)
    drift = (full_logprobs_at(logits, 0.7, index) - teacher_forcing.tempered_logprobs_at(logits, 0.7, index)).abs()
    return {"log_softmax_ms": softmax, "logprobs_at_ms": lse, "speedup": round(softmax / lse, 2),
            "max_abs_difference": float(drift.max())}


def probe_timing(model, tokenizer, facts: list[dict], conf) -> dict:
    started = time.perf_counter()
    rows = score_facts(model, tokenizer, facts, conf, conf.method, seed=0)
    wall = time.perf_counter() - started
    templates = sum(len(r["template_prob"]) for r in rows)
    sent = templates - sum(r.get("screened_templates", 0) for r in rows)
    return {"method": conf.method, "rb_samples": conf.rb_samples, "rb_screen_cut": conf.rb_screen_cut,
            "dtype": conf.dtype, "batch_size": conf.batch_size, "facts": len(facts), "wall_s": round(wall, 1),
            "s_per_fact": round(wall / len(facts), 3), "template_share_sent_on": round(sent / templates, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--facts", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    conf = load_params().probe
    facts = random.Random(0).sample([f for f in read_jsonl("data/facts.jsonl") if probe_group(f)], args.facts)
    model, tokenizer = load_model(Path("data/models") / args.model, conf.dtype)
    vocab = model.get_output_embeddings().weight.shape[0]
    result = {"model": args.model, "threads": torch.get_num_threads(), "rows": 64, "vocab": vocab,
              "load_average_1m_start": os.getloadavg()[0], "versions": versions(),
              "sampler": [sampler_timing(vocab, scale, args.repeats) for scale in (6.0, 2.5)],
              "logprobs": logprob_timing(vocab, args.repeats),
              "probe": probe_timing(model, tokenizer, facts, conf),
              "load_average_1m_end": os.getloadavg()[0]}
    write_json(Path(args.out) / f"sampler-{args.model}.json", result)
    print(result["sampler"], result["logprobs"], result["probe"])


if __name__ == "__main__":
    main()
