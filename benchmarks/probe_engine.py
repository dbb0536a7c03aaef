"""Benchmark the probe engine against the naive loop of public probing code, on the same facts and model.

    .venv/bin/python benchmarks/probe_engine.py                          # Gemma 3 270M, CPU or GPU
    .venv/bin/python benchmarks/probe_engine.py --threads 1              # on a busy shared CPU machine
    .venv/bin/python benchmarks/probe_engine.py --random-init-shape llama-7b   # GPU only: tokens/s and TFLOP/s

Measures, in one run:
1. naive: one prompt at a time, `model.generate(do_sample=True, num_return_sequences=S)` as public code does;
   naive_per_completion: one call per completion (batch 1), the plainest public loop, timed on the first
   --per-completion-prompts prompts (compared as a rate, completions/s);
   (note: HF's implicit top_k=50 applies there, our engine samples the untruncated tempered distribution);
2. engine: `memqa.engine.generate` as the probe runs it (length-sorted left-padded batches, prompt cache
   shared by samples, per-completion random streams), stopping a completion once it contains a gold alias
   (`stop_when`, the `contains` matcher) and dropping finished completions from the batch;
   engine_no_early_stop: the same without stop_when (completions end at EOS or --max-new-tokens only); the
   two must count exactly the same completions as correct (`early_stop_same_correct_counts`);
3. likelihood: `memqa.teacher_forcing.continuation_logprobs` over (prompt, " " + alias) for every gold alias.
With --random-init-shape the model is a random-init Llama of that shape with EOS disabled, so completions run
to --max-new-tokens unless they contain an alias (tokens/s counts the tokens decoded); the tokenizer (from
--model-dir) has its ids folded into the smaller vocabulary. Writes benchmarks/results/probe_engine-<model>.json
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from memqa.config import Download
from memqa.engine import generate, generate_ids
from memqa.eq import build_facts, relation_ids
from memqa.matching import contains
from memqa.models import contiguous_lm_head, load_model, load_tokenizer
from memqa.probe import answer_settled
from memqa.prompts import fill, templates_for
from memqa.teacher_forcing import continuation_logprobs

SHAPES = {  # hidden, layers, heads, intermediate, vocab
    "llama-7b": (4096, 32, 32, 11008, 32000),
    "llama-1b": (2048, 16, 32, 5632, 32000),
    "llama-tiny": (256, 2, 4, 688, 32000),  # a CPU smoke test of this code path (with --force)
}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model-dir", default="data/models/gemma3-270m")
parser.add_argument("--facts", type=int, default=6, help="in-domain train facts, round-robin over relations")
parser.add_argument("--templates", type=int, default=5, help="templates per fact")
parser.add_argument("--samples", type=int, default=10, help="completions per prompt")
parser.add_argument("--temperature", type=float, default=0.7)
parser.add_argument("--max-new-tokens", type=int, default=32)
parser.add_argument("--batch-size", type=int, default=64, help="engine rows per batch (prompts x samples)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="weights (a real model); the GPU protocol's is bf16, the CPU default's fp32")
parser.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); 1 on a busy shared machine, where spinning threads "
                         "that wait for a descheduled one make small ops (the naive loop) ~10x slower")
parser.add_argument("--data-root", default=os.environ.get("MEMQA_EQ_SOURCE", "../shared/data/entityquestions"))
parser.add_argument("--random-init-shape", choices=sorted(SHAPES), default=None)
parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator bf16 dense peak (H100 SXM: 989)")
parser.add_argument("--skip-naive", action="store_true", help="skip the (slow) naive loops")
parser.add_argument("--per-completion-prompts", type=int, default=3, help="prompts timed in the batch-1 loop")
parser.add_argument("--force", action="store_true", help="allow --random-init-shape without CUDA")
parser.add_argument("--out", default=None, help="default: benchmarks/results/probe_engine-<model>.json")
args = parser.parse_args()


class FoldedTokenizer:
    """A tokenizer whose ids are folded into a smaller vocabulary, with no EOS (completions run full length)."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.pad_token_id = tokenizer.pad_token_id % vocab_size
        self.eos_token_id = None

    def __call__(self, text, **kwargs):
        encoded = self.tokenizer(text, **kwargs)
        ids = encoded["input_ids"]
        if isinstance(ids, torch.Tensor):
            encoded["input_ids"] = ids % self.vocab_size
        elif ids and isinstance(ids[0], list):
            encoded["input_ids"] = [[i % self.vocab_size for i in row] for row in ids]
        else:
            encoded["input_ids"] = [i % self.vocab_size for i in ids]
        return encoded

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **kwargs)


def random_llama(shape: str, device: torch.device) -> torch.nn.Module:
    hidden, layers, heads, intermediate, vocab = SHAPES[shape]
    config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                      intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=4096,
                                      eos_token_id=None, pad_token_id=0)
    with device:
        model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.eval().requires_grad_(False)
    contiguous_lm_head(model)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def naive_generate(model, tokenizer, prompts: list[str], *, samples: int, temperature: float,
                   max_new_tokens: int) -> list[list[str]]:
    """The loop of public probing code: one prompt per call to HF generate."""
    outputs = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        outputs.append([tokenizer.decode(row, skip_special_tokens=True) for row in new])
    return outputs


def naive_per_completion(model, tokenizer, prompts: list[str], *, samples: int, temperature: float,
                         max_new_tokens: int) -> list[list[str]]:
    """The plainest public loop: one generate call per completion."""
    outputs = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        texts = []
        for _ in range(samples):
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=temperature,
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            texts.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        outputs.append(texts)
    return outputs


def correct_counts(completions: list[list[str]], answers: list[list[str]]) -> list[int]:
    """Per prompt, how many of its completions contain a gold alias (what R counts)."""
    return [sum(contains(c, gold) for c in comps) for comps, gold in zip(completions, answers, strict=True)]


def engine_run(stop_early: bool) -> tuple[list[list[str]], int]:
    """The engine as the probe runs it: (completions, tokens decoded)."""
    stop_when = (lambda p, text: answer_settled(contains, text, answers[p])) if stop_early else None
    ids = generate_ids(model, tokenizer, prompts, stop_when=stop_when, **engine)
    texts = [[tokenizer.decode(row, skip_special_tokens=True) for row in rows] for rows in ids]
    return texts, sum(len(row) for rows in ids for row in rows)


def share_correct(completions: list[list[str]], answers: list[list[str]]) -> float:
    """Mean over prompts of the share of its completions that contain a gold alias."""
    pairs = zip(completions, answers, strict=True)
    shares = [sum(contains(c, gold) for c in comps) / len(comps) for comps, gold in pairs]
    return sum(shares) / len(shares)


def timed(fn, device: torch.device):
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - started


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- model and data
torch.manual_seed(args.seed)
if args.threads:
    torch.set_num_threads(args.threads)
load_start = os.getloadavg()[0]
cuda = torch.cuda.is_available()
if args.random_init_shape and not cuda and not args.force:
    sys.exit(f"--random-init-shape {args.random_init_shape} measures GPU tokens/s and TFLOP/s, and no CUDA device "
             "is available here: run it on a GPU machine, or pass --force to run it on CPU anyway")
if args.random_init_shape:
    device = torch.device("cuda" if cuda else "cpu")
    model = random_llama(args.random_init_shape, device)
    tokenizer = FoldedTokenizer(load_tokenizer(args.model_dir), model.config.vocab_size)
    model_name = f"random-{args.random_init_shape}"
else:
    model, tokenizer = load_model(args.model_dir, args.dtype)
    device = model.device
    model_name = Path(args.model_dir).name
n_params = sum(p.numel() for p in model.parameters())
log(f"model {model_name}: {n_params / 1e6:.0f}M parameters on {device}")

# --facts in-domain train facts in all, spread round-robin over the in-domain relations
relations = relation_ids("id")
per_relation = -(-args.facts // len(relations))
rows, _ = build_facts(Path(args.data_root), Download(source=args.data_root, seed=args.seed,
                                                     per_relation={"train": per_relation, "dev": 0, "test": 0}))
by_relation = [[f for f in rows if f["relation"] == rel] for rel in relations]
facts = [f for k in range(per_relation) for group in by_relation for f in group[k:k + 1]][:args.facts]
prompts, answers = [], []
for fact in facts:
    for template in templates_for(fact["relation"], args.templates):
        prompts.append(fill(template, fact["subject"]))
        answers.append(fact["answers"])
pair_prompts = [p for p, gold in zip(prompts, answers, strict=True) for _ in gold]
pair_aliases = [" " + alias for gold in answers for alias in gold]
owner = [k for k, gold in enumerate(answers) for _ in gold]
log(f"{len(facts)} facts x {args.templates} templates = {len(prompts)} prompts, {len(pair_prompts)} alias pairs")

S, T, M, B = args.samples, args.temperature, args.max_new_tokens, args.batch_size
engine = dict(max_new_tokens=M, num_samples=S, temperature=T, batch_size=B, seed=args.seed)
# warm-up (untimed): first-call allocations and kernel selection
generate(model, tokenizer, prompts[:2], **engine)
continuation_logprobs(model, tokenizer, pair_prompts[:2], pair_aliases[:2], temperature=T, batch_size=B)

# ---------------------------------------------------------------------------------------------- the three methods
naive, naive_s = None, None
if not args.skip_naive:
    log("naive loop ...")
    naive_generate(model, tokenizer, prompts[:1], samples=S, temperature=T, max_new_tokens=M)  # warm-up
    torch.manual_seed(args.seed)
    naive, naive_s = timed(lambda: naive_generate(model, tokenizer, prompts, samples=S, temperature=T,
                                                  max_new_tokens=M), device)
per_completion_s = None
if not args.skip_naive:
    log("naive loop, one call per completion ...")
    subset = prompts[:args.per_completion_prompts]
    _, per_completion_s = timed(lambda: naive_per_completion(model, tokenizer, subset, samples=S, temperature=T,
                                                              max_new_tokens=M), device)
log("engine, no early stop ...")
(full, full_tokens), full_s = timed(lambda: engine_run(stop_early=False), device)
log("engine (early stop at the answer) ...")
(ours, engine_tokens), engine_s = timed(lambda: engine_run(stop_early=True), device)
log("likelihood ...")
logprobs, likelihood_s = timed(lambda: continuation_logprobs(model, tokenizer, pair_prompts, pair_aliases,
                                                             temperature=T, batch_size=B), device)

# ---------------------------------------------------------------------------------------------- numbers
n_prompts, n_completions = len(prompts), len(prompts) * S
p_alias = [0.0] * n_prompts  # P(a sample starts with some gold alias), aliases treated as disjoint
for k, lp in zip(owner, logprobs, strict=True):
    p_alias[k] += math.exp(lp)
results = {
    "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "model": model_name},
    "environment": {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(device), "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},  # > cpu_count: other jobs ran
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    },
    "n_parameters": n_params,
    "n_facts": len(facts), "n_prompts": n_prompts, "n_alias_pairs": len(pair_prompts), "n_completions": n_completions,
    "naive": None if naive is None else {
        "seconds": naive_s, "completions_per_s": n_completions / naive_s,
        "note": "HF generate with its implicit top_k=50",
    },
    "naive_per_completion": None if per_completion_s is None else {
        "seconds": per_completion_s, "completions": args.per_completion_prompts * S,
        "completions_per_s": args.per_completion_prompts * S / per_completion_s,
    },
    "engine": {"seconds": engine_s, "completions_per_s": n_completions / engine_s, "tokens_decoded": engine_tokens,
               "note": "early stop at a gold alias (contains), finished completions leave the batch"},
    "engine_no_early_stop": {"seconds": full_s, "completions_per_s": n_completions / full_s,
                             "tokens_decoded": full_tokens},
    "early_stop_same_correct_counts": correct_counts(ours, answers) == correct_counts(full, answers),
    "early_stop_speedup": full_s / engine_s,
    "likelihood": {
        "seconds": likelihood_s, "prompts_per_s": n_prompts / likelihood_s,
        "alias_pairs_per_s": len(pair_prompts) / likelihood_s,
    },
    "engine_over_naive": None if naive is None else naive_s / engine_s,
    "engine_over_naive_per_completion": None if per_completion_s is None else
    (n_completions / engine_s) / (args.per_completion_prompts * S / per_completion_s),
    "sampling_over_likelihood": (engine_s / n_prompts) / (likelihood_s / n_prompts),
}
if args.random_init_shape:  # no EOS: a completion is M tokens unless it contains an alias (engine)
    for name, seconds in (("naive", naive_s), ("engine", engine_s), ("engine_no_early_stop", full_s)):
        if seconds is not None:
            tokens_per_s = results[name].get("tokens_decoded", n_completions * M) / seconds
            results[name]["tokens_per_s"] = tokens_per_s
            if cuda:
                results[name]["tflops"] = 2 * n_params * tokens_per_s / 1e12
                results[name]["share_of_peak"] = results[name]["tflops"] / args.peak_tflops
else:  # accuracy sanity: meaningless for a random model
    results["engine"]["accuracy_contains"] = share_correct(ours, answers)
    results["engine_no_early_stop"]["accuracy_contains"] = share_correct(full, answers)
    if naive is not None:
        results["naive"]["accuracy_contains"] = share_correct(naive, answers)
    results["likelihood"]["mean_p_sample_starts_with_alias"] = sum(p_alias) / n_prompts

out = Path(args.out or f"benchmarks/results/probe_engine-{model_name}.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(results, indent=2) + "\n")

# ---------------------------------------------------------------------------------------------- table
env = results["environment"]
print(f"\n{model_name} on {env['device_name']} ({env['device']}, torch {env['torch']}): {len(facts)} facts x "
      f"{args.templates} templates = {n_prompts} prompts, {S} samples, T={T}, {M} new tokens, batch {B}\n")
print("| method | seconds | throughput | tokens/s | TFLOP/s (share of peak) | accuracy (contains) |")
print("|---|---:|---:|---:|---:|---:|")
for name in ("naive", "engine_no_early_stop", "engine"):
    r = results[name]
    if r is None:
        continue
    tok = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
    tf = f"{r['tflops']:.1f} ({r['share_of_peak']:.1%})" if "tflops" in r else "-"
    acc = f"{r['accuracy_contains']:.3f}" if "accuracy_contains" in r else "-"
    print(f"| {name} | {r['seconds']:.1f} | {r['completions_per_s']:.1f} completions/s | {tok} | {tf} | {acc} |")
r = results["likelihood"]
acc = f"{r['mean_p_sample_starts_with_alias']:.3f} (P starts with alias)" if not args.random_init_shape else "-"
print(f"| likelihood | {likelihood_s:.1f} | {r['prompts_per_s']:.1f} prompts/s | - | - | {acc} |")
if naive is not None:
    r = results["naive_per_completion"]
    print(f"| naive, one call per completion | {r['seconds']:.1f} | {r['completions_per_s']:.1f} completions/s "
          f"({r['completions']} completions) | - | - | - |")
    print(f"\nengine / naive (HF generate, num_return_sequences={S} per prompt): "
          f"{results['engine_over_naive']:.1f}x completions/s")
    print(f"engine / naive (one call per completion): {results['engine_over_naive_per_completion']:.1f}x")
print(f"early stop: {results['early_stop_speedup']:.2f}x faster than the engine without it "
      f"({engine_tokens} vs {full_tokens} tokens decoded); same completions counted correct: "
      f"{results['early_stop_same_correct_counts']}")
print(f"sampling {S} completions (engine) / one likelihood pass, per fact-template: "
      f"{results['sampling_over_likelihood']:.1f}x the seconds")
print(f"\nwrote {out}")
