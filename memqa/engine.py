"""The batched inference engine shared by probe and evaluate: one decode loop (generate_traced), which plain
generation runs with a NullTracer.

Prompts are sorted by length and left-padded into batches, each prompt is encoded once and its KV cache repeated
for its samples, only the last position's logits are computed while decoding, and a completion that is done (EOS,
or an answer found) leaves the batch at once. Sampling draws each completion from its own counter-based random
stream, so a completion does not depend on its batch neighbours. Teacher forcing is memqa.teacher_forcing.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from memqa.decoding import CLEANUP_UNKNOWN, RowTexts, decode_cleanup, row_key, sample_gumbel_max


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (a too-large batch fails early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
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
    ids, mask = left_pad(rows, pad_id, device)
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


class Tracer(Protocol):
    """What the decode loop reports to, and asks of, the estimator that watches it."""

    def step(self, rows: list[tuple[int, int]], step: int, logits: torch.Tensor, tokens: torch.Tensor
             ) -> tuple[Sequence[int], Sequence[tuple[int, Sequence[int], Hashable]]]:
        """Rows still decoding ((prompt, sample) each), their next-token logits, the tokens just chosen; returns
        (indices of rows that end after this token, forks (row index, continuation of >= 2 tokens, tag))."""

    def forked(self, tags: list[Hashable], logits: torch.Tensor, targets: torch.Tensor) -> None:
        """For each fork still running: the logits after its latest forced token and the next token it forces."""


class NullTracer:
    """The tracer of plain generation (generate_ids): it watches nothing, ends no row and forks none."""

    def step(self, rows, step, logits, tokens):
        return (), ()

    def forked(self, tags, logits, targets) -> None:  # never called: there are no forks
        pass


@dataclass(frozen=True)
class _Rules:
    """How rows are decoded: the same for every batch of one call."""
    tokenizer: Any
    tracer: Tracer
    device: torch.device
    max_new_tokens: int
    temperature: float
    stop_ids: frozenset[int]
    stop_when: Callable[[int, str], bool] | None
    cleanup: Callable[[str], str] | None = None
    stream_ids: Sequence[int] | None = None  # per prompt, the index its random streams are keyed by (None: its own)


@dataclass
class _Batch:
    """One batch being decoded. The cache's rows are the decoding rows (`active`, indices into `rows`, in order),
    then the forks ([tag, continuation, tokens fed] each); texts: the rows' texts for stop_when."""
    rows: list[tuple[int, int]]
    keys: list[int]
    tokens: list[list[int]]
    active: list[int]
    cache: Any
    logits: torch.Tensor
    mask: torch.Tensor
    position: torch.Tensor
    texts: RowTexts | None = None
    forks: list[list] = field(default_factory=list)
    step: int = 0


def _decode_rows(b: _Batch, rules: _Rules) -> tuple[list[int], list[int], list]:
    """Choose every decoding row's next token, show it to the tracer, and judge the rows: (cache rows that go on,
    the tokens they are fed, the tracer's new forks). A row ends at a stop token (not kept), after
    max_new_tokens, when the tracer halts it or when stop_when holds for its text so far (RowTexts)."""
    n = len(b.active)
    if not n:
        return [], [], []
    if rules.temperature > 0:
        next_token = sample_gumbel_max(b.logits[:n], rules.temperature, [b.keys[r] for r in b.active], b.step)
    else:
        next_token = b.logits[:n].argmax(dim=-1)
    halt, spawn = rules.tracer.step([b.rows[r] for r in b.active], b.step, b.logits[:n], next_token)
    halt, chosen, keep = set(halt), next_token.tolist(), []
    for k, (r, token) in enumerate(zip(b.active, chosen, strict=True)):
        if token not in rules.stop_ids:
            b.tokens[r].append(token)
            if k not in halt and b.step < rules.max_new_tokens - 1:
                keep.append(k)
    if rules.stop_when is not None and keep:
        texts = b.texts.update([b.active[k] for k in keep], b.tokens)
        keep = [k for k, text in zip(keep, texts, strict=True) if not rules.stop_when(b.rows[b.active[k]][0], text)]
    b.active = [b.active[k] for k in keep]
    return keep, [chosen[k] for k in keep], list(spawn)


def _advance_forks(b: _Batch, rules: _Rules, n: int, index: list[int], feed: list[int], spawn: list) -> None:
    """Show the running forks' logits to the tracer, feed each its next forced token while that token has a
    successor to score, and start the new forks (each fed its first token); n: decoding rows before this step."""
    going = []
    if b.forks:
        rules.tracer.forked([f[0] for f in b.forks], b.logits[n:], torch.tensor([f[1][f[2]] for f in b.forks]))
        for i, fork in enumerate(b.forks):
            if fork[2] + 1 < len(fork[1]):
                index.append(n + i)
                feed.append(fork[1][fork[2]])
                fork[2] += 1
                going.append(fork)
    for k, continuation, tag in spawn:
        index.append(k)
        feed.append(continuation[0])
        going.append([tag, list(continuation), 1])
    b.forks = going


def _forward(model, b: _Batch, rules: _Rules, index: list[int], feed: list[int]) -> None:
    """Keep the cache rows in index (finished rows leave the batch; a fork copies its row), feed them a token."""
    if index != list(range(b.mask.shape[0])):
        select = torch.tensor(index, device=rules.device)
        b.cache.batch_select_indices(select)
        b.mask, b.position = b.mask[select], b.position[select]
    b.mask = torch.cat([b.mask, torch.ones_like(b.mask[:, :1])], dim=1)
    b.position = b.position + 1
    out = model(input_ids=torch.tensor(feed, device=rules.device)[:, None], attention_mask=b.mask,
                position_ids=b.position, past_key_values=b.cache, use_cache=True)
    b.cache, b.logits = out.past_key_values, out.logits[:, -1]
    b.step += 1


def _decode_batch(model, prompts: list[list[int]], batch: list[int], rules: _Rules, num_samples: int,
                  seed: int) -> _Batch:
    """Decode one batch of prompts (indices into prompts) num_samples times each, to the end of every row."""
    cache, logits, mask, positions = _prefill(model, [prompts[i] for i in batch], rules.tokenizer.pad_token_id,
                                              num_samples, rules.device)
    rows = [(p, s) for p in batch for s in range(num_samples)]  # in the cache's batch order
    texts = RowTexts(rules.tokenizer, rules.cleanup, len(rows)) if rules.stop_when is not None else None
    ids = rules.stream_ids or range(len(prompts))
    b = _Batch(rows, [row_key(seed, ids[p], s) for p, s in rows], [[] for _ in rows], list(range(len(rows))), cache,
               logits, mask, positions[:, -1:], texts)
    while b.active or b.forks:
        n = len(b.active)
        index, feed, spawn = _decode_rows(b, rules)
        _advance_forks(b, rules, n, index, feed, spawn)
        if not index:
            break
        _forward(model, b, rules, index, feed)
    return b


@torch.inference_mode()
def generate_traced(model, tokenizer, prompts: Sequence[str], tracer: Tracer, *, max_new_tokens: int,
                    num_samples: int = 1, temperature: float = 0.0, batch_size: int = 32, seed: int = 0,
                    progress=None, stop_when: Callable[[int, str], bool] | None = None,
                    stream_ids: Sequence[int] | None = None) -> list[list[list[int]]]:
    """The decode loop: every prompt completed num_samples times (temperature 0: greedy), watched by a tracer,
    which may also fork rows to teacher-force short continuations. Returns [prompt][sample] token ids, without
    the stop token (EOS) that ended a completion. stream_ids[p]: the prompt index prompt p's random streams are
    keyed by (default p), so a subset of a call's prompts draws the completions the whole call would.

    stop_when(prompt index, text so far) -> True ends that completion after the token just chosen (the probe:
    it already contains a gold answer); the text is the completion's decoded text (memqa.decoding.RowTexts: one
    batched decode of a few tokens per row and step), or where decode cleans up spaces its settled_text, which
    every longer completion's text begins with. A completion that ends (a stop token, stop_when, max_new_tokens,
    the tracer) leaves the batch: its rows of the KV cache, mask, positions and logits are dropped.

    At every step tracer.step sees each row still decoding before its token is judged (the step that draws EOS
    included, so every position at which a completion could have gone on), and may end rows after this token or
    fork them: a fork is a copy of the row's state before the chosen token (its KV-cache row, mask and
    position), fed the continuation's tokens one per step instead; after each forced token but the last,
    tracer.forked gets the logits predicting the next one. Forks ride in the batch beside the decoding rows, so
    teacher-forcing a continuation at any position of a path costs one decoding step per token after its first;
    they change no decoding row's tokens (up to floating-point effects of batch shape on the logits).
    """
    if max_new_tokens < 1:
        return [[[] for _ in range(num_samples)] for _ in prompts]
    encoded = encode(tokenizer, prompts)
    cleanup = decode_cleanup(tokenizer) if stop_when is not None else None
    if cleanup == CLEANUP_UNKNOWN:  # a decode whose text no prefix rule covers: decode to full length
        stop_when, cleanup = None, None
    rules = _Rules(tokenizer, tracer, next(model.parameters()).device, max_new_tokens, temperature,
                   frozenset(_stop_ids(model, tokenizer)), stop_when, cleanup, stream_ids)
    outputs: list[list[list[int]]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_samples) if num_samples > 1 else batch_size
    for batch in length_sorted_batches([len(e) for e in encoded], per_batch):
        done = _decode_batch(model, encoded, batch, rules, num_samples, seed)
        for (p, _), token_ids in zip(done.rows, done.tokens, strict=True):
            outputs[p].append(token_ids)
        if progress is not None:
            progress.update(len(batch))
    return outputs


def generate_ids(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
                 temperature: float = 0.0, batch_size: int = 32, seed: int = 0, progress=None,
                 stop_when: Callable[[int, str], bool] | None = None) -> list[list[list[int]]]:
    """Complete every prompt num_samples times (temperature 0: greedy): generate_traced with a NullTracer.

    Sampling gives each completion (prompt index p, sample index s) its own random stream: step t adds
    gumbel_noise keyed by (row_key(seed, p, s), t) to the tempered logits and takes the argmax. A completion's
    tokens therefore do not depend on which other rows share its batch, on batch_size, or on when other
    rows leave; with and without stop_when they agree token for token up to the stop point (both up to
    floating-point effects of batch shape on the logits, as greedy decoding is).
    """
    return generate_traced(model, tokenizer, prompts, NullTracer(), max_new_tokens=max_new_tokens,
                           num_samples=num_samples, temperature=temperature, batch_size=batch_size, seed=seed,
                           progress=progress, stop_when=stop_when)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 0.0, batch_size: int = 32, seed: int = 0, progress=None,
             stop_when: Callable[[int, str], bool] | None = None) -> list[list[str]]:
    """generate_ids, decoded: [prompt][sample] texts (with stop_when, the text at its stop point).

    Reproducible for the same (prompts, seed); up to floating-point effects of batch shape on the logits,
    results do not depend on batch_size either (greedy, and sampling with its per-completion streams)."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, num_samples=num_samples,
                       temperature=temperature, batch_size=batch_size, seed=seed, progress=progress,
                       stop_when=stop_when)
    return [[tokenizer.decode(row, skip_special_tokens=True) for row in samples] for samples in ids]
