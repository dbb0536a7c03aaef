"""Teacher forcing: log P(a temperature-T sample of the model goes on with a given continuation | context).

The likelihood method's arithmetic: one teacher-forced pass per pair over context + continuation, in the
engine's length-sorted, left-padded batches, with the output layer run only at the continuation's positions
(the traced estimators teacher-force inside the decode loop instead: memqa.engine.generate_traced forks).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from memqa.engine import encode, left_pad, length_sorted_batches


def _continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and continuation, split where tokenising them jointly puts the boundary."""
    context = encode(tokenizer, [prompt])[0]
    whole = encode(tokenizer, [prompt + continuation])[0]
    if whole[:len(context)] == context and len(whole) > len(context):
        return context, whole[len(context):]
    return context, tokenizer(continuation, add_special_tokens=False)["input_ids"]


def tempered_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32; temperature 0 is greedy: 0.0 at the argmax, -inf elsewhere."""
    logits = logits.float()
    if temperature > 0:
        return torch.log_softmax(logits / temperature, dim=-1)
    best = logits.argmax(-1, keepdim=True)
    return torch.full_like(logits, float("-inf")).scatter_(-1, best, 0.0)


# tempered_logprobs_at sums over the vocabulary this many rows at a time on the CPU: a 4-row slice of Gemma's
# 262k-word logits stays in cache, 1.9x faster than the full log-softmax at 64 rows (18.2 ms against 34.5 ms:
# benchmarks/results/sampler-gemma3-270m.json).
LSE_ROWS = 4


def tempered_logprobs_at(logits: torch.Tensor, temperature: float, index: torch.Tensor) -> torch.Tensor:
    """tempered_logprobs(logits, temperature).gather(1, index), in float32, without writing the [rows, vocab]
    log-softmax: each row's scaled logits at index minus their log-sum-exp (by LSE_ROWS rows on the CPU)."""
    index = index.to(logits.device)
    if temperature == 0:
        return tempered_logprobs(logits, 0.0).gather(1, index)
    step = LSE_ROWS if logits.device.type == "cpu" else max(1, len(logits))
    lse = torch.cat([torch.logsumexp(torch.div(part.float(), temperature), dim=-1, keepdim=True)
                     for part in logits.split(step)]) if len(logits) else logits.new_empty(0, 1, dtype=torch.float32)
    return torch.div(logits.gather(1, index).float(), temperature) - lse


@torch.inference_mode()
def teacher_forced_logprobs(model, pad_id: int, contexts: Sequence[list[int]], continuations: Sequence[list[int]],
                            *, temperature: float, batch_size: int = 64, progress=None) -> list[float]:
    """log P(a temperature-T sample goes on with continuation | context), per pair of token-id lists.

    One teacher-forced pass per pair over context + continuation (length-sorted, left-padded batches); the
    output layer runs only at the continuation's positions (Gemma's 262k-word head dominates the cost
    otherwise). Temperature 0 is greedy: 0.0 when every continuation token is the argmax, else -inf.
    """
    device = next(model.parameters()).device
    sequences = [list(ctx) + list(cont) for ctx, cont in zip(contexts, continuations, strict=True)]
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    results = [0.0] * len(sequences)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        ids, mask = left_pad([sequences[i] for i in batch], pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        width = ids.shape[1]
        rows, cols, targets, owner = [], [], [], []
        for r, i in enumerate(batch):
            n_cont = len(continuations[i])
            for k in range(n_cont):  # hidden state at t predicts token t+1
                rows.append(r)
                cols.append(width - n_cont - 1 + k)
                targets.append(continuations[i][k])
                owner.append(r)
        if rows:
            logits = head(hidden[rows, cols].contiguous())
            if softcap:
                logits = torch.tanh(logits.float() / softcap) * softcap
            target = torch.tensor(targets, device=device)
            if temperature > 0:
                token_lp = tempered_logprobs_at(logits, temperature, target[:, None]).squeeze(1)
            else:
                token_lp = torch.where(logits.argmax(-1) == target, 0.0, float("-inf"))
            sums = torch.zeros(len(batch), device=device).index_add_(0, torch.tensor(owner, device=device), token_lp)
            for r, i in enumerate(batch):
                results[i] = float(sums[r])
        if progress is not None:
            progress.update(len(batch))
    return results


@torch.inference_mode()
def continuation_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                          temperature: float, batch_size: int = 64, progress=None) -> list[float]:
    """log P(a temperature-T sample of the model starts with the continuation | prompt), per pair.

    One teacher-forced pass per pair (teacher_forced_logprobs), the text split into prompt and continuation
    tokens where tokenising them jointly puts the boundary.
    Temperature 0 is greedy: 0.0 when every continuation token is the argmax, else -inf.
    """
    pairs = [_continuation_ids(tokenizer, p, c) for p, c in zip(prompts, continuations, strict=True)]
    return teacher_forced_logprobs(model, tokenizer.pad_token_id, [ctx for ctx, _ in pairs],
                                   [cont for _, cont in pairs], temperature=temperature, batch_size=batch_size,
                                   progress=progress)
