"""The batched inference engine shared by probe and evaluate.

Done the way public probing loops usually are not: prompts are sorted by length and left-padded into
batches, each prompt is encoded once and its KV cache repeated for its samples, only the last
position's logits are computed while decoding, a completion that is done (EOS, or an answer found)
leaves the batch at once, and the likelihood method computes logits only at answer positions (Gemma's
262k-word head dominates the cost otherwise). Sampling draws each completion from its own counter-based
random stream, so a completion does not depend on its batch neighbours.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import numpy as np
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


def _prefill(model, rows: list[list[int]], pad_id: int, num_samples: int, device: torch.device):
    """Encode a batch of prompts once and repeat its KV cache, last logits, mask and positions for the samples:
    (cache, logits, mask, positions), each with num_samples rows per prompt, prompt by prompt."""
    ids, mask = _left_pad(rows, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        mask, logits = mask.repeat_interleave(num_samples, 0), logits.repeat_interleave(num_samples, 0)
        positions = positions.repeat_interleave(num_samples, 0)
    return cache, logits, mask, positions


def _stop_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The random stream of one completion: a key from (seed, prompt index, sample index)."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ prompt) ^ sample)


def gumbel_noise(keys: Sequence[int], step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise, [len(keys), vocab]: row k's from a counter-based stream keyed by (keys[k], step),
    so a row's noise depends on nothing but its key and the step.

    CPU: numpy's Philox4x64 keyed by (key, step). CUDA: torch's Philox seeded by a 64-bit hash of (key, step),
    drawn on the device (the two devices' streams differ; each is reproducible).
    """
    if device.type == "cuda":
        uniform = torch.empty(len(keys), vocab, device=device)
        generator = torch.Generator(device=device)
        for k, key in enumerate(keys):
            generator.manual_seed(_mix64(key ^ _mix64(step)))
            uniform[k].uniform_(generator=generator)
    else:
        drawn = np.empty((len(keys), vocab), dtype=np.float32)
        for k, key in enumerate(keys):
            np.random.Generator(np.random.Philox(key=(key << 64) | step)).random(out=drawn[k], dtype=np.float32)
        uniform = torch.from_numpy(drawn).to(device)
    return -torch.log(-torch.log(uniform))  # u = 0 gives -inf: never chosen


def sample_gumbel_max(logits: torch.Tensor, temperature: float, keys: Sequence[int], step: int) -> torch.Tensor:
    """One token per row from softmax(logits / T) by the Gumbel-max trick: argmax(logits / T + Gumbel noise).

    Exact sampling from the tempered, untruncated distribution, with each row's noise its own. Unlike
    inverse-CDF sampling, a tiny change of the logits (the rounding of another batch shape) changes the
    token only when the two best noisy scores are that close, not whenever any boundary moves.
    """
    noise = gumbel_noise(keys, step, logits.shape[-1], logits.device)
    return (logits.float() / temperature + noise).argmax(dim=-1)


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
                 temperature: float = 0.0, batch_size: int = 32, seed: int = 0, progress=None,
                 stop_when: Callable[[int, str], bool] | None = None) -> list[list[list[int]]]:
    """Complete every prompt num_samples times; temperature 0 is greedy. Returns [prompt][sample] token ids,
    without the stop token (EOS) that ended a completion.

    stop_when(prompt index, text so far) -> True ends that completion after the token just sampled (the
    probe: it already contains a gold answer). A completion that ends, by a stop token or stop_when,
    leaves the batch: its rows of the KV cache, attention mask, positions and logits are dropped, so the
    remaining rows decode at a smaller batch instead of decoding padding.

    Sampling gives each completion (prompt index p, sample index s) its own random stream: step t adds
    gumbel_noise keyed by (row_key(seed, p, s), t) to the tempered logits and takes the argmax. A completion's
    tokens therefore do not depend on which other rows share its batch, on batch_size, or on when other
    rows leave; with and without stop_when they agree token for token up to the stop point (both up to
    floating-point effects of batch shape on the logits, as greedy decoding is).
    """
    device = next(model.parameters()).device
    encoded = _encode(tokenizer, prompts)
    stop_ids = set(_stop_ids(model, tokenizer))
    outputs: list[list[list[int]]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_samples) if num_samples > 1 else batch_size
    for batch in length_sorted_batches([len(e) for e in encoded], per_batch):
        cache, logits, mask, positions = _prefill(model, [encoded[i] for i in batch], tokenizer.pad_token_id,
                                                  num_samples, device)
        rows = [(p, s) for p in batch for s in range(num_samples)]  # in the cache's batch order
        keys = [row_key(seed, p, s) for p, s in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        active = list(range(len(rows)))  # rows still decoding, aligned with the cache's batch dimension
        position = positions[:, -1:]
        for step in range(max_new_tokens):
            if temperature > 0:
                next_token = sample_gumbel_max(logits, temperature, [keys[r] for r in active], step)
            else:
                next_token = logits.argmax(dim=-1)
            keep = []
            for k, (r, token) in enumerate(zip(active, next_token.tolist(), strict=True)):
                if token in stop_ids:
                    continue
                tokens[r].append(token)
                # the whole row is decoded, so a character split over tokens is judged once complete
                if stop_when is not None and stop_when(rows[r][0], tokenizer.decode(tokens[r],
                                                                                  skip_special_tokens=True)):
                    continue
                keep.append(k)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(active):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, position, next_token = mask[index], position[index], next_token[index]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position + 1
            out = model(input_ids=next_token[:, None], attention_mask=mask, position_ids=position,
                        past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
        for (p, _), token_ids in zip(rows, tokens, strict=True):
            outputs[p].append(token_ids)
        if progress is not None:
            progress.update(len(batch))
    return outputs


class Tracer(Protocol):
    """What generate_traced reports to, and asks of, the estimator that watches it."""

    def step(self, rows: list[tuple[int, int]], step: int, logits: torch.Tensor, tokens: torch.Tensor
             ) -> tuple[Sequence[int], Sequence[tuple[int, Sequence[int], Hashable]]]:
        """Rows still decoding ((prompt, sample) each), their next-token logits, the tokens just chosen; returns
        (indices of rows that end after this token, forks (row index, continuation of >= 2 tokens, tag))."""

    def forked(self, tags: list[Hashable], logits: torch.Tensor, targets: torch.Tensor) -> None:
        """For each fork still running: the logits after its latest forced token and the next token it forces."""


@torch.inference_mode()
def generate_traced(model, tokenizer, prompts: Sequence[str], tracer: Tracer, *, max_new_tokens: int,
                    num_samples: int = 1, temperature: float = 0.0, batch_size: int = 32, seed: int = 0,
                    stop_when: Callable[[int, str], bool] | None = None) -> list[list[list[int]]]:
    """generate_ids watched by a tracer, which may also fork rows to teacher-force short continuations.

    At every decoding step tracer.step sees each row still decoding before its token is judged (the step that
    draws EOS included, so every position at which a completion could have gone on), and may end rows after
    this token or fork them: a fork is a copy of the row's state as it is before the chosen token (its KV-cache
    row, mask and position), fed the continuation's tokens one per step instead; after each forced token but
    the last, tracer.forked gets the logits predicting the next one. Forks ride in the batch beside the
    decoding rows, so teacher-forcing a continuation at any position of a path costs one decoding step per
    token after its first and no second pass over prompt and path.

    The decoding rows are generate_ids's: the same per-completion random streams, stop tokens and stop_when,
    so the completions are the same for the same seed (up to floating-point effects of batch shape).
    """
    device = next(model.parameters()).device
    encoded = _encode(tokenizer, prompts)
    stop_ids = set(_stop_ids(model, tokenizer))
    outputs: list[list[list[int]]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_samples) if num_samples > 1 else batch_size
    for batch in length_sorted_batches([len(e) for e in encoded], per_batch):
        cache, logits, mask, positions = _prefill(model, [encoded[i] for i in batch], tokenizer.pad_token_id,
                                                  num_samples, device)
        rows = [(p, s) for p in batch for s in range(num_samples)]
        keys = [row_key(seed, p, s) for p, s in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        active = list(range(len(rows)))  # decoding rows: the first len(active) rows of the cache
        forks: list[list] = []  # [tag, continuation, tokens fed]: the cache's rows after the decoding ones
        position = positions[:, -1:]
        step = 0
        while active or forks:
            n = len(active)
            index, feed = [], []
            if n:
                if temperature > 0:
                    next_token = sample_gumbel_max(logits[:n], temperature, [keys[r] for r in active], step)
                else:
                    next_token = logits[:n].argmax(dim=-1)
                halt, spawn = tracer.step([rows[r] for r in active], step, logits[:n], next_token)
                halt = set(halt)
                keep = []
                for k, (r, token) in enumerate(zip(active, next_token.tolist(), strict=True)):
                    if token in stop_ids:
                        continue
                    tokens[r].append(token)
                    if k in halt or step == max_new_tokens - 1:
                        continue
                    if stop_when is not None and stop_when(rows[r][0], tokenizer.decode(tokens[r],
                                                                                      skip_special_tokens=True)):
                        continue
                    keep.append(k)
                index += keep
                feed += [int(next_token[k]) for k in keep]
                active = [active[k] for k in keep]
            else:
                spawn = []
            if forks:
                tracer.forked([f[0] for f in forks], logits[n:], torch.tensor([f[1][f[2]] for f in forks]))
                going = []
                for i, fork in enumerate(forks):
                    if fork[2] + 1 < len(fork[1]):  # its next forced token still has a successor to score
                        index.append(n + i)
                        feed.append(fork[1][fork[2]])
                        fork[2] += 1
                        going.append(fork)
                forks = going
            for k, continuation, tag in spawn:
                index.append(k)
                feed.append(continuation[0])
                forks.append([tag, list(continuation), 1])
            if not index:
                break
            select = torch.tensor(index, device=device)
            if index != list(range(mask.shape[0])):
                cache.batch_select_indices(select)
                mask, position = mask[select], position[select]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position + 1
            out = model(input_ids=torch.tensor(feed, device=device)[:, None], attention_mask=mask,
                        position_ids=position, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
            step += 1
        for (p, _), token_ids in zip(rows, tokens, strict=True):
            outputs[p].append(token_ids)
    return outputs


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 0.0, batch_size: int = 32, seed: int = 0, progress=None,
             stop_when: Callable[[int, str], bool] | None = None) -> list[list[str]]:
    """generate_ids, decoded: [prompt][sample] texts.

    Reproducible for the same (prompts, seed); up to floating-point effects of batch shape on the logits,
    results do not depend on batch_size either (greedy, and sampling with its per-completion streams).
    With stop_when, a completion is the text at its stop point.
    """
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, num_samples=num_samples,
                       temperature=temperature, batch_size=batch_size, seed=seed, progress=progress,
                       stop_when=stop_when)
    return [[tokenizer.decode(row, skip_special_tokens=True) for row in samples] for samples in ids]


def _continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and continuation, split where tokenising them jointly puts the boundary."""
    context = _encode(tokenizer, [prompt])[0]
    whole = _encode(tokenizer, [prompt + continuation])[0]
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
        ids, mask = _left_pad([sequences[i] for i in batch], pad_id, device)
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


class ComputeMeter:
    """Counts the forward work done on a model while active (`with ComputeMeter(model) as meter:`).

    tokens: token positions through the decoder stack, padding included (it is computed);
    head_rows: hidden states through the output layer (one per decoding step per row, one per scored token);
    flops: 2 x (non-embedding parameters x tokens + output-layer parameters x head_rows), the matmul work
    (attention over these short sequences and the embedding lookup left out). Counted by forward hooks on
    the decoder and the output layer, so every method is measured the same way, whatever its code does.
    """

    def __init__(self, model):
        self.model = model
        self.tokens = self.head_rows = self.calls = 0
        self._hooks: list = []
        head = model.get_output_embeddings().weight
        embed = model.get_input_embeddings().weight
        unique = {id(p): p.numel() for p in model.parameters()}
        self.head_params = head.numel()
        self.body_params = sum(unique.values()) - embed.numel() - (0 if head is embed else head.numel())

    def _count_tokens(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()
            self.calls += 1

    def _count_rows(self, module, args):
        self.head_rows += args[0].numel() // args[0].shape[-1]

    def __enter__(self) -> ComputeMeter:
        self._hooks = [self.model.get_decoder().register_forward_pre_hook(self._count_tokens, with_kwargs=True),
                       self.model.get_output_embeddings().register_forward_pre_hook(self._count_rows)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def flops(self) -> float:
        return 2.0 * (self.body_params * self.tokens + self.head_params * self.head_rows)

    def as_dict(self) -> dict:
        return {"forward_tokens": self.tokens, "head_rows": self.head_rows, "forward_calls": self.calls,
                "gflops": round(self.flops / 1e9, 3)}
