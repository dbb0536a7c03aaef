"""The measurements of benchmarks/gpu_check.py (which documents them): throughput of the probe and evaluation, an
SFT step, load and save rates, vLLM, QLoRA; and the figures they give in memqa/resources/throughput.yaml's layout."""
from __future__ import annotations

import gc
import importlib.util
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from gpu_check_parts import (
    PEAK_BF16,
    SHAPES,
    facts,
    random_llama,
    sync,
    timed_generate,
    timed_hf,
    word_tokenizer,
    words,
)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def with_flops(rate: dict[str, float], n: int, cuda: bool) -> dict[str, float]:
    flop = 2 * n * rate["tokens_per_s"]
    return {**rate, "decode_flop_per_s": flop, **({"mfu": flop / PEAK_BF16} if cuda else {})}


def throughput_check(device: torch.device, smoke: bool) -> dict[str, Any]:
    """The probe (samples x tokens, with and without early stop) and evaluation (greedy) on the 8B shape: memqa's
    engine against HF generate. Random weights: EOS and the answers are rare, so rows run to full length."""
    shape, cuda = SHAPES["tiny" if smoke else "llama3-8b"], device.type == "cuda"
    model = random_llama(shape, torch.bfloat16 if cuda else torch.float32, device)
    vocab, rng, n = shape["vocab_size"], random.Random(1), n_parameters(model)
    tok = word_tokenizer(vocab)
    probe = {"samples": 10, "max_new": 8 if smoke else 32, "batch": 40 if smoke else 512,
             "prompts": [words(rng, vocab, 12) for _ in range(8 if smoke else 102)]}
    answers = [[words(rng, vocab, 2) for _ in range(3)] for _ in probe["prompts"]]
    evaluation = [words(rng, vocab, 16) for _ in range(16 if smoke else 512)]
    common = {"max_new_tokens": probe["max_new"], "num_samples": 10, "temperature": 0.7, "batch_size": probe["batch"]}
    with torch.inference_mode():
        timed_generate(model, tok, probe["prompts"][:4], **{**common, "max_new_tokens": 4})  # warm-up
        runs = {"engine_early_stop": timed_generate(
                    model, tok, probe["prompts"], stop_when=lambda p, text: any(a in text for a in answers[p]),
                    **common),
                "engine_no_early_stop": timed_generate(model, tok, probe["prompts"], **common),
                "hf_generate": timed_hf(model, tok, probe["prompts"], max_new=probe["max_new"], samples=10,
                                        temperature=0.7, batch=probe["batch"] // 10),
                "evaluate_engine": timed_generate(model, tok, evaluation, max_new_tokens=16, batch_size=256),
                "evaluate_hf_generate": timed_hf(model, tok, evaluation, max_new=16, batch=256)}
    return {"shape": "tiny" if smoke else "llama3-8b", "parameters": n, "dtype": str(next(model.parameters()).dtype),
            "probe_rows_per_batch": probe["batch"] // 10 * 10,
            **{name: with_flops(rate, n, cuda) for name, rate in runs.items()},
            "early_stop_overhead": runs["engine_no_early_stop"]["tokens_per_s"]
            / runs["engine_early_stop"]["tokens_per_s"]}


def one_sft_step_run(model, tok, optimizer: str, smoke: bool, work: Path) -> dict[str, Any]:
    """memqa.training.train on 8 steps of 8 QA pairs, each step timed (after a synchronize)."""
    from memqa import training
    from memqa.config import Sft

    conf = Sft(method="full", lr=1e-4, lr_full=1e-5, epochs=1, batch_size=8, max_length=64, compute_dtype="auto")
    times, real_step, real_adamw = [], training.train_step, training.adamw

    def step(*args, **kwargs):
        began = sync()
        out = real_step(*args, **kwargs)
        times.append(sync() - began)
        return out

    training.train_step = step
    if optimizer == "foreach":  # torch's CUDA default, which memqa replaced by the fused kernel
        training.adamw = lambda params, lr, decay, device: torch.optim.AdamW(params, lr=lr, weight_decay=decay,
                                                                             foreach=True)
    try:
        info = training.train(model, tok, facts(64, tok.vocab_size, seed=2), conf, 0, work / f"{optimizer}.csv")
    finally:
        training.train_step, training.adamw = real_step, real_adamw
    n = n_parameters(model)
    info.pop("accelerator").free_memory()
    info.pop("model")
    step_s = statistics.median(times[2:])
    tokens = info["tokens_per_s"] * info["wall_s"] / info["steps"]
    return {"step_s": step_s, "tokens_per_step": tokens, "train_flop_per_s": 6 * n * tokens / step_s,
            "peak_bytes_per_parameter": info["peak_memory_mb"] * 2**20 / n, "peak_memory_mb": info["peak_memory_mb"]}


def sft_step_check(device: torch.device, smoke: bool, work: Path) -> dict[str, Any]:
    """An SFT step's time and peak bytes/parameter with the fused AdamW, and with torch's foreach default."""
    shape = SHAPES["tiny" if smoke else "llama3-8b-8layers"]
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"shape": "tiny" if smoke else "llama3-8b-8layers"}
    for optimizer in ("fused", "foreach"):
        model = random_llama(shape, torch.float32, device)  # fp32 master weights, as load_base gives them
        out["parameters"] = n_parameters(model)
        out[optimizer] = one_sft_step_run(model, word_tokenizer(shape["vocab_size"]), optimizer, smoke, work)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def load_save_check(folder: Path, device: torch.device, smoke: bool) -> dict[str, Any]:
    """Save the 8-layer 8B shape in bf16 and load it back in bf16 (evaluation) and fp32 (SFT): bytes/s. The files
    are in the page cache when loaded: a warm load, faster than the first one from disk."""
    from transformers import AutoModelForCausalLM

    shape = SHAPES["tiny" if smoke else "llama3-8b-8layers"]
    model = random_llama(shape, torch.bfloat16, device)
    n, began = n_parameters(model), sync()
    model.save_pretrained(folder)
    save_s = sync() - began
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    del model
    out = {"parameters": n, "save_s": save_s, "save_bytes_per_s": 2 * n / save_s}
    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        began = sync()
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": str(device)})
        seconds = sync() - began
        out[f"load_{str(dtype).removeprefix('torch.')}"] = {"seconds": seconds, "bytes_per_s": size * n / seconds}
        del loaded
    return out


def vllm_check(folder: Path, smoke: bool) -> dict[str, Any]:
    """The probe through vLLM on the saved model (10 samples x 32 tokens, untruncated at T 0.7, EOS ignored)."""
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed here (pip install vllm); its rate stays ASSUMED"}
    if smoke or not torch.cuda.is_available():
        return {"skipped": "the GPU run measures vLLM (--cpu-smoke does not)"}
    if not (folder / "config.json").is_file():
        return {"skipped": "load_save did not save its model"}
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), dtype="bfloat16", seed=0, gpu_memory_utilization=0.6)
    rng, vocab = random.Random(3), SHAPES["llama3-8b"]["vocab_size"]
    prompts = [{"prompt_token_ids": [2] + [6 + rng.randrange(vocab - 6) for _ in range(12)]} for _ in range(512)]
    params = SamplingParams(n=10, temperature=0.7, top_k=-1, top_p=1.0, max_tokens=32, ignore_eos=True,
                            detokenize=False)
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    began = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    n = sum(p.numel() for p in random_llama(SHAPES["llama3-8b-8layers"], torch.bfloat16, "meta").parameters())
    return {"parameters": n, "completions_per_s": 5120 / seconds, "tokens_per_s": tokens / seconds,
            "decode_vllm_flop_per_s": 2 * n * tokens / seconds, "mfu": 2 * n * tokens / seconds / PEAK_BF16}


def qlora_check(work: Path, smoke: bool) -> dict[str, Any]:
    """QLoRA through fine_tune on the small shape, when bitsandbytes imports (NF4 needs CUDA)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed here: QLoRA not checked"}
    if smoke or not torch.cuda.is_available():
        return {"skipped": "QLoRA's NF4 weights need CUDA"}
    from gpu_check_parts import save_random

    from memqa.config import Sft
    from memqa.training import fine_tune

    model_dir = save_random(work / "model", SHAPES["small"], torch.bfloat16)
    conf = Sft(method="qlora", lr=2e-3, lr_full=1e-5, epochs=4, batch_size=8, max_length=64)
    info = fine_tune(facts(16, SHAPES["small"]["vocab_size"]), conf, 0, model_dir, work / "out", work / "loss.csv")
    loss = [float(line.split(",")[1]) for line in (work / "loss.csv").read_text().splitlines()[1:]]
    return {"ok": loss[0] > loss[-1], "loss": loss, "peak_memory_mb": info["peak_memory_mb"],
            "adapter_saved": (work / "out" / "adapter_model.safetensors").is_file()}


def throughput_yaml(checks: dict[str, Any], figures: bool) -> dict[str, Any]:
    """The figures in memqa/resources/throughput.yaml's layout: a device kind's keys (and `measured`, naming them),
    plus the workload's bytes/parameter of full fine-tuning on one GPU."""
    if not figures:
        return {"status": "NOT figures: --cpu-smoke or no CUDA; do not copy into throughput.yaml"}
    kind, measured = {}, []

    def take(key: str, value: Any) -> None:
        kind[key] = value
        measured.append(key)

    version = checks.get("versions", {})
    if "gpu_memory_bytes" in version:
        take("memory_bytes", version["gpu_memory_bytes"])
    if "engine_no_early_stop" in checks.get("throughput", {}):
        take("decode_flop_per_s", checks["throughput"]["engine_no_early_stop"]["decode_flop_per_s"])
    if "decode_vllm_flop_per_s" in checks.get("vllm_throughput", {}):
        take("decode_vllm_flop_per_s", checks["vllm_throughput"]["decode_vllm_flop_per_s"])
    if "fused" in checks.get("sft_step", {}):
        take("train_flop_per_s", checks["sft_step"]["fused"]["train_flop_per_s"])
    if "load_bfloat16" in checks.get("load_save", {}):
        take("load_bytes_per_s", checks["load_save"]["load_bfloat16"]["bytes_per_s"])
        take("save_bytes_per_s", checks["load_save"]["save_bytes_per_s"])
    workload = ({"training_state_bytes_per_param": round(checks["sft_step"]["fused"]["peak_bytes_per_parameter"], 1)}
                if "fused" in checks.get("sft_step", {}) else {})
    return {"device": {"status": "measured", "measured": measured, **kind,
                       "gpu": version.get("gpu"), "note": "train_flop_per_s: the whole step (optimizer included)"},
            "workload": workload}
