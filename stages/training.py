"""Supervised fine-tuning in the paper's QA format, by QLoRA (default), LoRA or full fine-tuning.

A plain PyTorch loop under `accelerate`, so `accelerate launch` runs it data-parallel unchanged.
"""
from __future__ import annotations

import csv
import math
import random
import resource
import time
from pathlib import Path

import torch

from stages.models import choose_pad_token, contiguous_lm_head, torch_dtype
from stages.params import MemqaError
from stages.templates import qa_prompt

METHODS = ("qlora", "lora", "full")


def qa_example(tokenizer, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """`<|question|> Q <|answer|>` + ` A` + EOS; labels are -100 on the prompt, so loss is on the answer."""
    prompt = tokenizer(qa_prompt(question))["input_ids"]
    whole = tokenizer(qa_prompt(question) + " " + answer)["input_ids"]
    if whole[:len(prompt)] != prompt:
        whole = prompt + tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = (whole + [tokenizer.eos_token_id])[:max_length]
    labels = [-100] * len(prompt) + ids[len(prompt):]
    return {"input_ids": ids, "labels": labels[:len(ids)]}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def compute_dtype(conf: dict, method: str) -> torch.dtype:
    """bf16 on CUDA; on CPU bf16 for (Q)LoRA compute, fp32 for full fine-tuning (AdamW on bf16 weights drifts)."""
    name = conf.get("compute_dtype", "auto")
    if name != "auto":
        return torch_dtype(name)
    return torch.bfloat16 if torch.cuda.is_available() or method != "full" else torch.float32


def device_map(local_rank: int) -> dict[str, int | str]:
    """Pinned to this process's device: never `auto` with 4-bit weights (it would shard across GPUs)."""
    return {"": local_rank if torch.cuda.is_available() else "cpu"}


def load_base(model_dir: Path, method: str, conf: dict, local_rank: int = 0):
    """The base model as `method` trains it: NF4-quantised for qlora, else plain weights in compute dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if method not in METHODS:
        raise MemqaError(f"unknown sft.method '{method}': use one of {', '.join(METHODS)}")
    if not (Path(model_dir) / "config.json").is_file():
        raise MemqaError(f"no model at {model_dir}: run `dvc repro materialize` (or sft) first")
    dtype = compute_dtype(conf, method)
    kwargs: dict = {"dtype": dtype, "device_map": device_map(local_rank)}
    if method == "qlora":
        if importlib_missing("bitsandbytes"):
            raise MemqaError("sft.method qlora needs bitsandbytes: pip install bitsandbytes (or use lora)")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    choose_pad_token(tokenizer)
    return model, tokenizer


def load_trainable(model_dir: Path, method: str, conf: dict, local_rank: int = 0):
    """load_base, plus LoRA adapters on every linear layer for qlora/lora; all weights train for full."""
    model, tokenizer = load_base(model_dir, method, conf, local_rank)
    if method in ("qlora", "lora"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(r=int(conf["lora_r"]), lora_alpha=int(conf["lora_alpha"]),
                          lora_dropout=float(conf["lora_dropout"]), target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train(model, tokenizer, facts: list[dict], conf: dict, method: str, seed: int, log_path: Path) -> dict:
    """One run of SFT on facts (question, answers[0]); writes loss per optimizer step to log_path (CSV)."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    seed_everything(seed)
    accelerator = Accelerator(gradient_accumulation_steps=int(conf["grad_accum"]), cpu=not torch.cuda.is_available())
    examples = [qa_example(tokenizer, f["question"], f["answers"][0], int(conf["max_length"])) for f in facts]
    loader = torch.utils.data.DataLoader(examples, batch_size=int(conf["batch_size"]), shuffle=True,
                                         generator=torch.Generator().manual_seed(seed),
                                         collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))
    lr = float(conf["lr_full"] if method == "full" else conf["lr"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=float(conf["weight_decay"]))
    steps = math.ceil(len(loader) / int(conf["grad_accum"])) * int(conf["epochs"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(float(conf["warmup_ratio"]) * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started, tokens, step, log = time.time(), 0, 0, []
    window: list[float] = []
    for _ in range(int(conf["epochs"])):
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            window.append(float(loss.detach()))
            if accelerator.sync_gradients:
                step += 1
                log.append({"step": step, "loss": round(sum(window) / len(window), 5),
                            "lr": scheduler.get_last_lr()[0]})
                window = []
    wall = time.time() - started
    model.eval()
    if accelerator.is_main_process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr"])
            writer.writeheader()
            writer.writerows(log)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "method": method, "facts": len(facts), "steps": step, "epochs": int(conf["epochs"]), "lr": lr,
        "device": str(accelerator.device), "processes": accelerator.num_processes,
        "dtype": str(compute_dtype(conf, method)).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in trainable), "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "peak_memory_mb": round(peak / 2**20, 1), "final_loss": log[-1]["loss"] if log else None,
        "model": accelerator.unwrap_model(model),
    }


def load_for_eval(model_dir: Path, trained_dir: Path | None, method: str, conf: dict):
    """For evaluation: adapters unmerged on the base in its training precision, full weights as saved, or
    (trained_dir None) the untrained base in the same precision, the 0-data baseline."""
    if trained_dir is not None and method == "full":
        model, tokenizer = load_base(trained_dir, method, conf)
    else:
        model, tokenizer = load_base(model_dir, method, conf)
        if trained_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(trained_dir))
    model.eval().requires_grad_(False)
    contiguous_lm_head(model)
    return model, tokenizer
