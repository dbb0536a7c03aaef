"""Supervised fine-tuning in the paper's QA format, by LoRA (default), QLoRA or full fine-tuning.

A plain PyTorch loop under `accelerate`, so `accelerate launch` runs it data-parallel (DDP) or sharded (FSDP,
full fine-tuning) unchanged. `sft.batch_size` is the global batch: each of P processes takes
batch_size / (P x grad_accum) examples per micro-batch, and the loss of an optimizer step is the mean over
every answer token of the global batch, so the loss curve does not depend on P or grad_accum (tested).
Only the main process writes files.
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import random
import resource
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from memqa.distributed import is_main_process, process_state
from memqa.errors import MemqaError
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


def per_device_batch(batch_size: int, processes: int, grad_accum: int) -> int:
    """sft.batch_size is the global batch: processes x grad_accum micro-batches of this many examples."""
    parts = processes * grad_accum
    if batch_size % parts:
        fit = batch_size + (-batch_size) % parts
        raise MemqaError(f"sft.batch_size {batch_size} is the global batch and must be a multiple of processes "
                         f"({processes}) x sft.grad_accum ({grad_accum}) = {parts}: set -S sft.batch_size={fit}, "
                         "or launch a number of processes that divides it")
    return batch_size // parts


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation of the n examples per epoch, then `pad` copies of index n (a blank example: no
    loss), so that the sampled length is a multiple of `multiple` (per-device batch x processes).

    accelerate's sharding then gives every process the same number of full micro-batches, and step k of any
    launch holds examples k*B .. (k+1)*B-1 of the permutation (B the global batch): the blanks fill the last
    step, where accelerate's own `even_batches` would repeat the first examples instead."""

    def __init__(self, n: int, multiple: int, seed: int):
        self.n, self.pad = n, (-n) % multiple
        self.generator = torch.Generator().manual_seed(seed)  # named `generator`: accelerate keeps it in sync

    def __len__(self) -> int:
        return self.n + self.pad

    def __iter__(self):
        yield from torch.randperm(self.n, generator=self.generator).tolist()
        yield from [self.n] * self.pad


def answer_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens the loss counts: labels after the causal shift that are not -100."""
    return (batch["labels"][:, 1:] != -100).sum()


def accepts_logits_to_keep(model) -> bool:
    """Whether the (unwrapped, peft-unwrapped) causal LM can compute logits at chosen positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def summed_loss(model, batch: dict[str, torch.Tensor], answer_positions_only: bool = False) -> torch.Tensor:
    """Cross-entropy summed over the answer tokens of a micro-batch (fp32 logits), for a global token mean.

    answer_positions_only: the output layer runs only at positions that predict an answer token in some row
    (`logits_to_keep` with their indices). The loss is the same sum over the same tokens; the work saved is
    the output layer at prompt and padding positions, most of a small model's step when its vocabulary is
    large (Gemma's 262k-word head holds 63% of the 270M model's parameters).
    """
    targets = batch["labels"][:, 1:]
    if answer_positions_only:
        keep = (targets != -100).any(0).nonzero().squeeze(1)  # position t predicts token t + 1
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_to_keep=keep).logits
        targets = targets[:, keep]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                             ignore_index=-100, reduction="sum")


def start_live(live_dir: Path | None):
    """A DVCLive logger (step loss and lr, so `dvc exp show` follows a running experiment); main process only."""
    if live_dir is None or not is_main_process():
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)


def end_live(live, summary: dict | None = None) -> None:
    if live is None:
        return
    live.summary.update(summary or {})
    live.end()
    plots = Path(live.dir) / "plots" / "metrics"  # a declared DVC plot: exists, with headers, even when empty
    for name in ("loss", "lr"):
        if not (plots / f"{name}.tsv").is_file():
            plots.mkdir(parents=True, exist_ok=True)
            (plots / f"{name}.tsv").write_text(f"step\t{name}\n")


def train(model, tokenizer, facts: list[dict], conf: dict, method: str, seed: int, log_path: Path,
          live_dir: Path | None = None) -> dict:
    """One run of SFT on facts (question, answers[0]); the main process writes loss and lr per optimizer step
    to log_path (CSV) and to DVCLive in live_dir."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import get_cosine_schedule_with_warmup

    seed_everything(seed)
    torch.use_deterministic_algorithms(bool(conf.get("deterministic", True)), warn_only=True)
    dtype = compute_dtype(conf, method)
    # Full fine-tuning: fp32 master weights, and autocast for a lower compute dtype. Adapters already hold
    # their weights in fp32 (peft) over a frozen base in the compute dtype.
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no") if method == "full" else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded and method != "full":
        raise MemqaError(f"sft.method {method} under FSDP is not supported: launch adapters with "
                         "configs/accelerate/ddp.yaml (FSDP is for full fine-tuning)")
    processes, grad_accum = accelerator.num_processes, int(conf["grad_accum"])
    global_batch, epochs = int(conf["batch_size"]), int(conf["epochs"])
    per_device = per_device_batch(global_batch, processes, grad_accum)
    examples = [qa_example(tokenizer, f["question"], f["answers"][0], int(conf["max_length"])) for f in facts]
    blank = {"input_ids": [tokenizer.pad_token_id], "labels": [-100]}
    sampler = EpochSampler(len(examples), per_device * processes if processes > 1 else 1, seed)
    loader = torch.utils.data.DataLoader(examples + [blank], batch_size=per_device, sampler=sampler,
                                         collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))
    lr = float(conf["lr_full"] if method == "full" else conf["lr"])
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = math.ceil(len(examples) / global_batch) * epochs
    answer_positions_only = accepts_logits_to_keep(model)
    model = accelerator.prepare(model)  # before the optimizer: FSDP replaces the parameters
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=float(conf["weight_decay"]))
    optimizer, loader = accelerator.prepare(optimizer, loader)
    # Not prepared: stepped here once per optimizer step (accelerate would step it once per process).
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(float(conf["warmup_ratio"]) * steps), steps)
    model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    live = start_live(live_dir)
    started, tokens, step, log = time.time(), torch.zeros((), dtype=torch.long), 0, []
    for _ in range(epochs):
        batches = iter(loader)
        while group := list(itertools.islice(batches, grad_accum)):
            # One optimizer step: grad_accum micro-batches on each process. Every micro-batch's summed token
            # loss is divided by the answer tokens of the whole global batch (times P: DDP and FSDP average
            # gradients over processes), so the gradient is the global token mean whatever P and grad_accum.
            counted = accelerator.reduce(torch.stack([answer_tokens(b) for b in group]).sum(), "sum")
            scale = processes / counted.clamp(min=1).float()
            step_loss = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(group):
                # FSDP's no_sync would keep full unsharded gradients: it syncs every micro-batch instead
                quiet = i < len(group) - 1 and not sharded
                with accelerator.no_sync(model) if quiet else nullcontext():
                    loss = summed_loss(model, batch, answer_positions_only)
                    accelerator.backward(loss * scale)
                step_loss += loss.detach()
                tokens += batch["attention_mask"][(batch["labels"] != -100).any(1)].sum().cpu()
            optimizer.step()
            applied = scheduler.get_last_lr()[0]  # the lr this step used
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            mean = float(accelerator.reduce(step_loss, "sum") / counted.clamp(min=1))
            log.append({"step": step, "loss": round(mean, 5), "lr": applied})
            if live is not None:
                live.step = step
                live.log_metric("loss", round(mean, 5))
                live.log_metric("lr", applied)
                live.next_step()
    wall = time.time() - started
    tokens = int(accelerator.reduce(tokens.to(accelerator.device), "sum"))
    model.eval()
    if accelerator.is_main_process:
        write_csv(log_path, log, ["step", "loss", "lr"])
    end_live(live)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "method": method, "facts": len(facts), "steps": step, "epochs": epochs, "lr": lr,
        "device": str(accelerator.device), "processes": processes, "distributed": accelerator.distributed_type.value,
        "global_batch": global_batch, "per_device_batch": per_device, "grad_accum": grad_accum,
        "dtype": str(dtype).removeprefix("torch."), "precision": precision(conf, method, training=True),
        "trainable_parameters": n_trainable, "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "peak_memory_mb": round(peak / 2**20, 1), "final_loss": log[-1]["loss"] if log else None,
        "model": model, "accelerator": accelerator,
    }


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
    accelerator.wait_for_everyone()


def fine_tune(facts: list[dict], conf: dict, seed: int, model_dir: Path, out_dir: Path, log_path: Path,
              live_dir: Path | None = None, scratch_dir: Path | None = None) -> dict:
    """Train on facts and save the adapter (or full weights) and train_info.json into out_dir, atomically; under
    `accelerate launch` every process trains, only the main one writes.

    Full fine-tuning with sft.keep_weights false: out_dir holds only train_info.json, and the weights go to
    scratch_dir (not DVC-tracked), which the evaluate stage reads and then deletes (README "Disk").
    An empty training set (a level pool with no facts, recorded by split) trains nothing; evaluate reports it.
    """
    method = conf["method"]
    # full weights dropped after evaluation (raw conf dicts without the key keep them); nothing to drop untrained
    drop = method == "full" and not conf.get("keep_weights", True) and bool(facts)
    weights_dir = (scratch_dir or out_dir.with_name(out_dir.name + ".scratch")) if drop else out_dir
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
        model, tokenizer = load_trainable(model_dir, method, conf, local_rank=state.local_process_index)
        info = train(model, tokenizer, facts, conf, method, seed, log_path, live_dir)
        trained, accelerator = info.pop("model"), info.pop("accelerator")
        save_trained(accelerator, trained, tokenizer, method, compute_dtype(conf, method), weights_staging)
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
