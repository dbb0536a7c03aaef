"""Supervised fine-tuning in the paper's QA format, by LoRA (default), QLoRA or full fine-tuning.

A plain PyTorch loop under `accelerate`, so `accelerate launch` runs it data-parallel (DDP) or sharded (FSDP,
full fine-tuning) unchanged. `sft.batch_size` is the global batch: each of P processes takes
batch_size / (P x grad_accum) examples per micro-batch, and the loss of an optimizer step is the mean over
every answer token of the global batch, so the loss curve does not depend on P or grad_accum (tested).
Only the main process writes files.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memqa.distributed import deterministic_cuda, fsdp_plugin, process_state
from memqa.errors import MemqaError
from memqa.io import write_csv, write_json
from memqa.models import compute_dtype, load_base, precision
from memqa.sft_batches import (
    EpochSampler,
    accepts_logits_to_keep,
    answer_tokens,
    collate,
    per_device_batch,
    qa_example,
    summed_loss,
)
from memqa.sft_log import end_live, log_step, start_live

if TYPE_CHECKING:
    from memqa.config import Sft


def load_trainable(model_dir: Path, conf: Sft, local_rank: int = 0):
    """load_base, plus LoRA adapters on every linear layer for qlora/lora; all weights train for full."""
    model, tokenizer = load_base(model_dir, conf.method, conf, local_rank, training=True)
    if conf.method in ("qlora", "lora"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(r=conf.lora_r, lora_alpha=conf.lora_alpha, lora_dropout=conf.lora_dropout,
                          target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


def determinism(on: bool, cuda: bool) -> None:
    """torch's deterministic algorithms (warn_only: an op without a deterministic kernel warns and runs). On CUDA
    without fill_uninitialized_memory: it NaN-fills every torch.empty, FSDP's all-gather buffers every step."""
    torch.use_deterministic_algorithms(on, warn_only=True)
    if on and cuda:
        torch.utils.deterministic.fill_uninitialized_memory = False


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; fused on CUDA (the default foreach kernels allocate another full-size buffer per step, 4 bytes per
    parameter at the peak of full fine-tuning); on CPU torch's default, unchanged."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             **({"fused": True} if device.type == "cuda" else {}))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class Run:
    """What one SFT run holds while it steps: the prepared model, optimizer, schedule and batches."""
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    grad_accum: int
    sharded: bool  # FSDP: full fine-tuning, parameters sharded over processes
    answer_positions_only: bool
    max_grad_norm: float | None  # clip the global gradient norm to this before each step (None: no clipping)


def _accelerator(conf: Sft):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # Full fine-tuning: fp32 master weights, and autocast for a lower compute dtype. Adapters already hold
    # their weights in fp32 (peft) over a frozen base in the compute dtype.
    dtype = compute_dtype(conf)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no") if conf.method == "full" else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), fsdp_plugin=fsdp_plugin(dtype))
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded and conf.method != "full":
        raise MemqaError(f"sft.method {conf.method} under FSDP is not supported: launch adapters with "
                         "configs/accelerate/ddp.yaml (FSDP is for full fine-tuning)")
    return accelerator, sharded


def setup(model, tokenizer, facts: list[dict], conf: Sft, seed: int) -> tuple[Run, dict]:
    """The run (model prepared before the optimizer: FSDP replaces the parameters) and what it records."""
    from transformers import get_cosine_schedule_with_warmup

    seed_everything(seed)
    determinism(conf.deterministic, torch.cuda.is_available())
    accelerator, sharded = _accelerator(conf)
    processes = accelerator.num_processes
    per_device = per_device_batch(conf.batch_size, processes, conf.grad_accum)
    examples = [qa_example(tokenizer, f["question"], f["answers"][0], conf.max_length, conf.space_before_eos)
                for f in facts]
    blank = {"input_ids": [tokenizer.pad_token_id], "labels": [-100]}
    sampler = EpochSampler(len(examples), per_device * processes if processes > 1 else 1, seed)
    loader = torch.utils.data.DataLoader(examples + [blank], batch_size=per_device, sampler=sampler,
                                         collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))
    lr = conf.lr_full if conf.method == "full" else conf.lr
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = math.ceil(len(examples) / conf.batch_size) * conf.epochs
    answer_positions_only = accepts_logits_to_keep(model)
    model = accelerator.prepare(model)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr, conf.weight_decay, accelerator.device)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    # Not prepared: stepped here once per optimizer step (accelerate would step it once per process).
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(conf.warmup_ratio * steps), steps)
    info = {"method": conf.method, "facts": len(facts), "steps": 0, "epochs": conf.epochs, "lr": lr,
            "device": str(accelerator.device), "processes": processes,
            "distributed": accelerator.distributed_type.value, "global_batch": conf.batch_size,
            "per_device_batch": per_device, "grad_accum": conf.grad_accum,
            "dtype": str(compute_dtype(conf)).removeprefix("torch."),
            "precision": precision(conf, conf.method, training=True), "trainable_parameters": n_trainable}
    run = Run(accelerator, model, optimizer, scheduler, loader, conf.grad_accum, sharded, answer_positions_only,
              conf.max_grad_norm)
    return run, info


def train_step(run: Run, group: list[dict]) -> tuple[float, float, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches on each process: (mean answer-token loss of the global
    batch, the lr the step used, tokens it read on this process).

    Every micro-batch's summed token loss is divided by the answer tokens of the whole global batch (times P:
    DDP and FSDP average gradients over processes), so the gradient is the global token mean whatever P and
    grad_accum."""
    accelerator = run.accelerator
    counted = accelerator.reduce(torch.stack([answer_tokens(b) for b in group]).sum(), "sum")
    scale = accelerator.num_processes / counted.clamp(min=1).float()
    step_loss = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.long)
    for i, batch in enumerate(group):
        # FSDP's no_sync would keep full unsharded gradients: it syncs every micro-batch instead
        quiet = i < len(group) - 1 and not run.sharded
        with accelerator.no_sync(run.model) if quiet else nullcontext():
            loss = summed_loss(run.model, batch, run.answer_positions_only)
            accelerator.backward(loss * scale)
        step_loss += loss.detach()
        tokens += batch["attention_mask"][(batch["labels"] != -100).any(1)].sum().cpu()
    if run.max_grad_norm is not None:  # accelerate clips the whole gradient, sharded (FSDP) or not
        accelerator.clip_grad_norm_(run.model.parameters(), run.max_grad_norm)
    run.optimizer.step()
    applied = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    run.optimizer.zero_grad()
    return float(accelerator.reduce(step_loss, "sum") / counted.clamp(min=1)), applied, tokens


def train(model, tokenizer, facts: list[dict], conf: Sft, seed: int, log_path: Path,
          live_dir: Path | None = None) -> dict:
    """One run of SFT on facts (question, answers[0]); the main process writes loss and lr per optimizer step
    to log_path (CSV) and to DVCLive in live_dir."""
    run, info = setup(model, tokenizer, facts, conf, seed)
    run.model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    live = start_live(live_dir)
    started, tokens, log = time.time(), torch.zeros((), dtype=torch.long), []
    for _ in range(conf.epochs):
        batches = iter(run.loader)
        while group := list(itertools.islice(batches, run.grad_accum)):
            loss, lr, read = train_step(run, group)
            tokens += read
            log_step(log, live, loss, lr)
    wall = time.time() - started
    tokens = int(run.accelerator.reduce(tokens.to(run.accelerator.device), "sum"))
    run.model.eval()
    if run.accelerator.is_main_process:
        write_csv(log_path, log, ["step", "loss", "lr"])
    end_live(live)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**info, "steps": len(log), "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1) if wall else None,
            "peak_memory_mb": round(peak / 2**20, 1), "final_loss": log[-1]["loss"] if log else None,
            "model": run.model, "accelerator": run.accelerator}


def save_trained(accelerator, model, tokenizer, method: str, dtype: torch.dtype, folder: Path) -> None:
    """Adapters, or full weights in the compute dtype they are evaluated in (not the fp32 master copy).

    Under FSDP every process holds a shard: get_state_dict gathers the full state dict onto the main process
    (fsdp_state_dict_type FULL_STATE_DICT; every process must call it), which alone writes."""
    unwrapped = accelerator.unwrap_model(model)
    if method == "full":
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            cast: dict[int, torch.Tensor] = {}  # by storage, so tied weights (embeddings, lm_head) stay one tensor
            state = {name: cast.setdefault(tensor.data_ptr(), tensor.to(dtype) if tensor.is_floating_point()
                                           else tensor) for name, tensor in state.items()}
            unwrapped.save_pretrained(folder, state_dict=state, is_main_process=True)
            tokenizer.save_pretrained(folder)
            config = json.loads((folder / "config.json").read_text())  # it records the fp32 master dtype
            (folder / "config.json").write_text(json.dumps({**config, "dtype": str(dtype).removeprefix("torch.")},
                                                           indent=2) + "\n")
    elif accelerator.is_main_process:
        unwrapped.save_pretrained(folder)
        sort_target_modules(folder / "adapter_config.json")
    accelerator.wait_for_everyone()


def sort_target_modules(config_path: Path) -> None:
    """peft keeps target_modules as a set and writes it in the process's string-hash order, so two runs of one cell
    wrote different adapter_config.json bytes around identical weights, and DVC saw a changed output (and reran its
    evaluation). Sorted, the folder's bytes depend on the training only; the JSON layout stays peft's."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def fine_tune(facts: list[dict], conf: Sft, seed: int, model_dir: Path, out_dir: Path, log_path: Path,
              live_dir: Path | None = None, scratch_dir: Path | None = None) -> dict:
    """Train on facts and save the adapter (or full weights) and train_info.json into out_dir, atomically; under
    `accelerate launch` every process trains, only the main one writes.

    Full fine-tuning with sft.keep_weights false: out_dir holds only train_info.json, and the weights go to
    scratch_dir (not DVC-tracked), which the evaluate stage reads and then deletes (docs/paper-scale.md, "Disk").
    An empty training set (a level pool with no facts, recorded by split) trains nothing; evaluate reports it.
    """
    method = conf.method
    drop = method == "full" and not conf.keep_weights and bool(facts)  # nothing to drop untrained
    weights_dir = (scratch_dir or out_dir.with_name(out_dir.name + ".scratch")) if drop else out_dir
    deterministic_cuda(conf.deterministic)  # before anything starts CUDA
    state = process_state()
    staging = out_dir.with_name(out_dir.name + ".partial")
    weights_staging = weights_dir.with_name(weights_dir.name + ".partial") if drop else staging
    if state.is_main_process:
        for folder in {staging, weights_staging}:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
    if not facts:
        info = {"method": method, "facts": 0, "skipped": True}
        if state.is_main_process:
            write_csv(log_path, [], ["step", "loss", "lr"])
            end_live(start_live(live_dir), {"step": 0, "skipped": True})
    else:
        seed_everything(seed)  # the adapters' random init is part of the seed's training randomness
        model, tokenizer = load_trainable(model_dir, conf, local_rank=state.local_process_index)
        info = train(model, tokenizer, facts, conf, seed, log_path, live_dir)
        trained, accelerator = info.pop("model"), info.pop("accelerator")
        save_trained(accelerator, trained, tokenizer, method, compute_dtype(conf), weights_staging)
        info["skipped"] = False
    if drop:
        info["weights"] = {"kept": False, "dir": str(weights_dir)}
    if state.is_main_process:
        write_json(staging / "train_info.json", info)
        if drop:
            shutil.rmtree(weights_dir, ignore_errors=True)
            weights_staging.rename(weights_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    state.wait_for_everyone()
    return info
