"""The checks of benchmarks/gpu_check.py (which documents them): random Llamas, a word-level tokenizer, and one
function per check, each returning the dict that goes into the JSON."""
from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

PEAK_BF16 = 9.89e14  # H100/H200 SXM dense bf16 (datasheet), for the MFU shares
SHAPES = {  # LlamaConfig fields; llama3-8b: GQA (8 key-value heads), 128k vocabulary
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 512},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
              "intermediate_size": 1536, "vocab_size": 8192},
    "llama3-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "intermediate_size": 14336, "vocab_size": 128256},
}
SHAPES["llama3-8b-8layers"] = {**SHAPES["llama3-8b"], "num_hidden_layers": 8}  # 2.8B: 20 B/param fits one GPU


def word_tokenizer(vocab: int):
    """A tokenizer with one word per id (w0, w1, ...), so a random model's every token decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<|question|>", "<|answer|>"]
    words = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def random_llama(shape: dict, dtype: torch.dtype, device: torch.device | str, seed: int = 0,
                 initializer_range: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, max_position_embeddings=1024, rope_theta=500000.0, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0, tie_word_embeddings=False, initializer_range=initializer_range)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def words(rng: random.Random, vocab: int, n: int) -> str:
    return " ".join(f"w{rng.randrange(vocab - 6)}" for _ in range(n))


def facts(n: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": words(rng, vocab, 6), "answers": [words(rng, vocab, 2)]} for _ in range(n)]


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def share(a: list, b: list) -> float:
    rows = [(x, y) for xs, ys in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True)]
    return sum(x == y for x, y in rows) / len(rows)


def hf_generate(model, tok, prompts: list[str], max_new: int, samples: int = 1, temperature: float = 0.0,
                batch: int = 1) -> list[list[list[int]]]:
    """HF generate, left-padded batches of `batch` prompts; token ids after the prompt, cut at EOS."""
    tok.padding_side, out = "left", []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True).to(model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else \
            {"do_sample": False}
        ids = model.generate(**enc, max_new_tokens=max_new, num_return_sequences=samples, eos_token_id=3,
                             pad_token_id=0, **sampling)[:, enc["input_ids"].shape[1]:].tolist()
        rows = [r[:r.index(3)] if 3 in r else r for r in ids]
        out += [rows[j:j + samples] for j in range(0, len(rows), samples)]
    return out


def engine_check(device: torch.device, smoke: bool) -> dict[str, Any]:
    """The engine's invariants on this device (the noise bit for bit; shares of identical rows otherwise)."""
    from memqa.decoding import hashed_uniform, row_key
    from memqa.engine import generate_ids

    shape = SHAPES["tiny"] if smoke else {**SHAPES["small"], "num_hidden_layers": 2}
    vocab, rng = shape["vocab_size"], random.Random(0)
    tok, prompts = word_tokenizer(vocab), [words(rng, vocab, rng.randint(2, 9)) for _ in range(16)]
    keys = [row_key(1, p, s) for p in range(64) for s in range(2)]
    out: dict[str, Any] = {"device": str(device), "noise_bitwise_equal_to_cpu": torch.equal(
        hashed_uniform(keys, 4, vocab, device).cpu(), hashed_uniform(keys, 4, vocab, torch.device("cpu")))}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            model = random_llama(shape, dtype, device, initializer_range=0.2)  # peaky logits: few near ties
            greedy = generate_ids(model, tok, prompts, max_new_tokens=12, batch_size=16)
            alone = [generate_ids(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
            kwargs = {"max_new_tokens": 12, "num_samples": 4, "temperature": 1.0, "seed": 3}
            sampled = [generate_ids(model, tok, prompts, batch_size=b, **kwargs) for b in (64, 8, 1)]
            out[str(dtype).removeprefix("torch.")] = {
                "greedy_batched_equals_alone": share(greedy, alone),
                "greedy_alone_equals_hf_generate": share(alone, hf_generate(model, tok, prompts, 12)),
                "sampled_batch_64_equals_8": share(sampled[0], sampled[1]),
                "sampled_batch_64_equals_1": share(sampled[0], sampled[2])}
    fp32 = out["float32"]
    out["ok"] = out["noise_bitwise_equal_to_cpu"] and min(fp32.values()) >= 0.95
    return out


def save_random(folder: Path, shape: dict, dtype: torch.dtype) -> Path:
    """A random Llama and its tokenizer saved as `materialize` leaves a model (in its dtype), built on the CPU."""
    random_llama(shape, dtype, "cpu").save_pretrained(folder)
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    return folder


def one_sft(run: Path, model_dir: Path, data: list[dict], conf) -> dict[str, Any] | None:
    """fine_tune once, watching the trained model's RoPE buffers; the main process reads back what it saved."""
    from safetensors import safe_open

    from memqa import training
    from memqa.models import load_for_eval

    seen, real = {}, training.train

    def watched(*args, **kwargs):
        info = real(*args, **kwargs)
        inner = info["accelerator"].unwrap_model(info["model"])
        seen["inv_freq_dtype"] = sorted({str(b.dtype) for n, b in inner.named_buffers() if n.endswith("inv_freq")})
        return info

    training.train = watched
    try:
        info = training.fine_tune(data, conf, 0, model_dir, run / "out", run / "loss.csv")
    finally:
        training.train = real
    if not (run / "loss.csv").is_file():  # not the main process
        return None
    with (run / "loss.csv").open() as handle:
        loss = [float(row["loss"]) for row in csv.DictReader(handle)]
    with safe_open(str(run / "out" / "model.safetensors"), "pt") as weights:
        tensor_dtype = str(weights.get_tensor(next(iter(weights.keys()))).dtype).removeprefix("torch.")
    reloaded, _ = load_for_eval(model_dir, run / "out", "full", conf)
    config_dtype = json.loads((run / "out" / "config.json").read_text())["dtype"]
    return {"loss": loss, "distributed": info["distributed"], "processes": info["processes"],
            "inv_freq_dtype": seen["inv_freq_dtype"][0] if len(seen["inv_freq_dtype"]) == 1 else seen,
            "saved_dtype": tensor_dtype if tensor_dtype == config_dtype else f"{tensor_dtype} (config {config_dtype})",
            "reloaded_dtype": str(next(reloaded.parameters()).dtype).removeprefix("torch."),
            "peak_memory_mb": info["peak_memory_mb"]}


def sft_check(work: Path, shape: dict, reruns: int) -> dict[str, Any]:
    """Full fine-tuning through fine_tune (reruns times: are reruns identical?)."""
    from memqa.config import Sft

    work.mkdir(parents=True, exist_ok=True)
    model_dir = save_random(work / "model", shape, torch.bfloat16)
    conf = Sft(method="full", lr=1e-4, lr_full=1e-3, epochs=4, batch_size=8, max_length=64, compute_dtype="auto",
               deterministic=True, keep_weights=True, warmup_ratio=0.0)
    runs = [one_sft(work / f"run{i}", model_dir, facts(16, shape["vocab_size"]), conf) for i in range(reruns)]
    if runs[0] is None:
        return {}
    result = {**runs[0], "loss_falls": runs[0]["loss"][0] > runs[0]["loss"][-1]}
    if reruns > 1:
        result["rerun_identical_loss"] = runs[1]["loss"] == runs[0]["loss"]
    expected = "bfloat16" if torch.cuda.is_available() else "float32"
    result["ok"] = (result["loss_falls"] and result["saved_dtype"] == expected == result["reloaded_dtype"]
                    and result["inv_freq_dtype"] == "torch.float32")
    return result


def _timed(generate, model, tok, prompts, **kwargs) -> dict[str, float]:
    began = sync()
    ids = generate(model, tok, prompts, **kwargs)
    seconds = sync() - began
    tokens = sum(len(row) for rows in ids for row in rows)
    return {"seconds": seconds, "completions_per_s": sum(map(len, ids)) / seconds, "tokens_per_s": tokens / seconds}


def timed_generate(model, tok, prompts, **kwargs) -> dict[str, float]:
    from memqa.engine import generate_ids

    return _timed(generate_ids, model, tok, prompts, **kwargs)


def timed_hf(model, tok, prompts, **kwargs) -> dict[str, float]:
    return _timed(hf_generate, model, tok, prompts, **kwargs)
