"""What SFT trains on: QA pairs in the paper's prompt format, padded batches, the epoch order, the summed loss.

The training loop (memqa/training.py) takes its batches and its loss from here.
"""
from __future__ import annotations

import inspect

import torch

from memqa.errors import MemqaError
from memqa.prompts import qa_prompt


def qa_example(tokenizer, question: str, answer: str, max_length: int,
               space_before_eos: bool = False) -> dict[str, list[int]]:
    """`<|question|> Q <|answer|>` + ` A` (+ ` ` with space_before_eos, the template of Ye et al. 2025, App. A) +
    EOS; labels are -100 on the prompt, so loss is on the answer."""
    prompt = tokenizer(qa_prompt(question))["input_ids"]
    target = " " + answer + (" " if space_before_eos else "")
    whole = tokenizer(qa_prompt(question) + target)["input_ids"]
    if whole[:len(prompt)] != prompt:
        whole = prompt + tokenizer(target, add_special_tokens=False)["input_ids"]
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
