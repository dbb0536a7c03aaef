"""The batched inference engine shared by probe and evaluate.

Done the way public probing loops usually are not: prompts are sorted by length and left-padded into
batches, each prompt is encoded once and its KV cache repeated for its samples, only the last
position's logits are computed while decoding, and the likelihood method computes logits only at answer
positions (Gemma's 262k-word head dominates the cost otherwise).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (a too-large batch fails early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _stop_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 0.0, batch_size: int = 32, seed: int = 0, progress=None) -> list[list[str]]:
    """Complete every prompt num_samples times; temperature 0 is greedy. Returns [prompt][sample] texts.

    Results do not depend on batch_size under greedy decoding; with sampling they are reproducible for
    the same (prompts, batch_size, seed).
    """
    device = next(model.parameters()).device
    encoded = _encode(tokenizer, prompts)
    stop_ids = _stop_ids(model, tokenizer)
    stop = torch.tensor(stop_ids, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs: list[list[str]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_samples) if num_samples > 1 else batch_size
    for batch in length_sorted_batches([len(e) for e in encoded], per_batch):
        ids, mask = _left_pad([encoded[i] for i in batch], tokenizer.pad_token_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
        if num_samples > 1:  # the prompt is encoded once; its cache serves all of its samples
            cache.batch_repeat_interleave(num_samples)
            mask, logits = mask.repeat_interleave(num_samples, 0), logits.repeat_interleave(num_samples, 0)
            positions = positions.repeat_interleave(num_samples, 0)
        position = positions[:, -1:]
        tokens, finished = [], torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                next_token = logits.argmax(dim=-1)
            next_token = torch.where(finished, torch.full_like(next_token, tokenizer.pad_token_id), next_token)
            tokens.append(next_token)
            finished |= torch.isin(next_token, stop)
            if finished.all() or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position + 1
            out = model(input_ids=next_token[:, None], attention_mask=mask, position_ids=position,
                        past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
        generated = torch.stack(tokens, dim=1).tolist()
        for row, token_ids in enumerate(generated):
            cut = next((k for k, t in enumerate(token_ids) if t in stop_ids), len(token_ids))
            text = tokenizer.decode(token_ids[:cut], skip_special_tokens=True)
            outputs[batch[row // num_samples]].append(text)
        if progress is not None:
            progress.update(len(batch))
    return outputs


def _continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and continuation, split where tokenising them jointly puts the boundary."""
    context = _encode(tokenizer, [prompt])[0]
    whole = _encode(tokenizer, [prompt + continuation])[0]
    if whole[:len(context)] == context and len(whole) > len(context):
        return context, whole[len(context):]
    return context, tokenizer(continuation, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def continuation_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                          temperature: float, batch_size: int = 64, progress=None) -> list[float]:
    """log P(a temperature-T sample of the model starts with the continuation | prompt), per pair.

    One teacher-forced pass per pair; the output layer runs only at the continuation's positions.
    Temperature 0 is greedy: 0.0 when every continuation token is the argmax, else -inf.
    """
    device = next(model.parameters()).device
    pairs = [_continuation_ids(tokenizer, p, c) for p, c in zip(prompts, continuations, strict=True)]
    sequences = [ctx + cont for ctx, cont in pairs]
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    results = [0.0] * len(pairs)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        ids, mask = _left_pad([sequences[i] for i in batch], tokenizer.pad_token_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        width = ids.shape[1]
        rows, cols, targets, owner = [], [], [], []
        for r, i in enumerate(batch):
            n_cont = len(pairs[i][1])
            for k in range(n_cont):  # hidden state at t predicts token t+1
                rows.append(r)
                cols.append(width - n_cont - 1 + k)
                targets.append(pairs[i][1][k])
                owner.append(r)
        logits = head(hidden[rows, cols].contiguous()).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        target = torch.tensor(targets, device=device)
        if temperature > 0:
            token_lp = torch.log_softmax(logits / temperature, dim=-1).gather(1, target[:, None]).squeeze(1)
        else:
            token_lp = torch.where(logits.argmax(-1) == target, 0.0, float("-inf"))
        sums = torch.zeros(len(batch), device=device).index_add_(0, torch.tensor(owner, device=device), token_lp)
        for r, i in enumerate(batch):
            results[i] = float(sums[r])
        if progress is not None:
            progress.update(len(batch))
    return results
