"""Supervised fine-tuning in the paper's QA format, by QLoRA (default), LoRA or full fine-tuning.

A plain PyTorch loop under `accelerate`, so `accelerate launch` runs it data-parallel unchanged.
"""
from __future__ import annotations

import math
import random
import resource
import shutil
import time
from pathlib import Path

import torch

from memqa.io import write_csv, write_json
from memqa.models import compute_dtype, load_base, precision
from memqa.prompts import qa_prompt


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


def load_trainable(model_dir: Path, method: str, conf: dict, local_rank: int = 0):
    """load_base, plus LoRA adapters on every linear layer for qlora/lora; all weights train for full."""
    model, tokenizer = load_base(model_dir, method, conf, local_rank, training=True)
    if method in ("qlora", "lora"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(r=int(conf["lora_r"]), lora_alpha=int(conf["lora_alpha"]),
                          lora_dropout=float(conf["lora_dropout"]), target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


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
    torch.use_deterministic_algorithms(bool(conf.get("deterministic", True)), warn_only=True)
    dtype = compute_dtype(conf, method)
    # Full fine-tuning: fp32 master weights, and autocast for a lower compute dtype. Adapters already hold
    # their weights in fp32 (peft) over a frozen base in the compute dtype.
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no") if method == "full" else "no"
    accelerator = Accelerator(gradient_accumulation_steps=int(conf["grad_accum"]), mixed_precision=mixed,
                              cpu=not torch.cuda.is_available())
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
        write_csv(log_path, log, ["step", "loss", "lr"])
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "method": method, "facts": len(facts), "steps": step, "epochs": int(conf["epochs"]), "lr": lr,
        "device": str(accelerator.device), "processes": accelerator.num_processes,
        "dtype": str(dtype).removeprefix("torch."), "precision": precision(conf, method, training=True),
        "trainable_parameters": sum(p.numel() for p in trainable), "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "peak_memory_mb": round(peak / 2**20, 1), "final_loss": log[-1]["loss"] if log else None,
        "model": accelerator.unwrap_model(model),
    }


def fine_tune(facts: list[dict], conf: dict, seed: int, model_dir: Path, out_dir: Path, log_path: Path) -> dict:
    """Train on facts and save the adapter (or full weights) and train_info.json into out_dir, atomically.

    An empty training set (a level pool with no facts, recorded by split) trains nothing; evaluate reports it.
    """
    method = conf["method"]
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if not facts:
        info = {"method": method, "facts": 0, "skipped": True}
        write_csv(log_path, [], ["step", "loss", "lr"])
    else:
        model, tokenizer = load_trainable(model_dir, method, conf)
        info = train(model, tokenizer, facts, conf, method, seed, log_path)
        trained = info.pop("model")
        if method == "full":  # saved in the compute dtype it is evaluated in, not the fp32 master copy
            trained.to(compute_dtype(conf, method)).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        else:
            trained.save_pretrained(staging)
        info["skipped"] = False
    write_json(staging / "train_info.json", info)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return info
