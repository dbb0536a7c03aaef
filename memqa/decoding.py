"""What the decode loop (memqa.engine) keeps for each row besides its KV cache: its random stream and its text.

Random streams: a 64-bit key per (seed, prompt, sample), Gumbel noise from a counter-based stream keyed by (row
key, step), and Gumbel-max sampling over it; a row's noise depends on nothing but its key and the step, so a
sampled completion does not depend on its batch. Texts: each row's decoded text for stop_when, kept up to date
incrementally (RowTexts), and for a tokenizer that cleans up spaces on decoding only the part no later token can
change (settled_text).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_GAMMA, _C1, _C2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's constants
_CHUNK = 1 << 25  # elements of noise per device draw: 268 MB of int64 (512 rows x 128k vocabulary: 2 draws)


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit hash."""
    x = (x + _GAMMA) & _MASK64
    x = ((x ^ (x >> 30)) * _C1) & _MASK64
    x = ((x ^ (x >> 27)) * _C2) & _MASK64
    return x ^ (x >> 31)


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The random stream of one completion: a key from (seed, prompt index, sample index)."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ prompt) ^ sample)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >> 63 else x


def _lsr(x: torch.Tensor, shift: int) -> torch.Tensor:
    """A logical right shift of int64 values holding 64-bit words (torch's >> on int64 is arithmetic)."""
    return (x >> shift) & ((1 << (64 - shift)) - 1)


def splitmix_uniform(states: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform [0, 1) float32, [len(states), vocab]: element v of row k is splitmix64's output v + 1 from the 64-bit
    state states[k] (int64), its top 24 bits. Integer arithmetic only (wrapping int64 multiplies), so every device
    computes the same bits, and one draw covers the whole batch: a few kernels, not one per row."""
    x = states[:, None] + torch.arange(1, vocab + 1, device=states.device) * _signed(_GAMMA)
    for shift, factor in ((30, _C1), (27, _C2)):
        x ^= _lsr(x, shift)
        x *= _signed(factor)
    x ^= _lsr(x, 31)
    return _lsr(x, 40).float() * 2.0 ** -24


def hashed_uniform(keys: Sequence[int], step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32, [len(keys), vocab], on device: splitmix_uniform from the state
    _mix64(key ^ _mix64(step)) of each row, every row in one draw (in chunks of _CHUNK elements)."""
    states = torch.tensor([_signed(_mix64(key ^ _mix64(step))) for key in keys], dtype=torch.long, device=device)
    if not keys:
        return torch.empty(0, vocab, device=device)
    return torch.cat([splitmix_uniform(part, vocab) for part in states.split(max(1, _CHUNK // vocab))])


def _philox_words(keys: Sequence[int], step: int, vocab: int) -> np.ndarray:
    """numpy's Philox4x64 keyed by (key, step), row by row: [len(keys), vocab] 32-bit halves of its raw 64-bit
    words (each word's low then its high half), drawn in bulk; _uniform turns them into Generator.random's floats."""
    raw = np.empty((len(keys), (vocab + 1) // 2), dtype=np.uint64)
    for k, key in enumerate(keys):
        raw[k] = np.random.Philox(key=(key << 64) | step).random_raw(raw.shape[1])
    return raw.astype("<u8", copy=False).view("<u4")[:, :vocab]


def _uniform(words: np.ndarray) -> torch.Tensor:
    """Uniform [0, 1) float32 from 32-bit words: the top 24 bits, as Generator.random(dtype=float32) keeps them."""
    return torch.from_numpy((words >> 8).astype(np.float32) * np.float32(2.0 ** -24))


def gumbel_noise(keys: Sequence[int], step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise, [len(keys), vocab]: row k's from a counter-based stream keyed by (keys[k], step),
    so a row's noise depends on nothing but its key and the step.

    CPU: numpy's Philox4x64 keyed by (key, step), row by row. Other devices (CUDA): hashed_uniform, the whole
    batch in one draw (the two streams differ; each is reproducible, and the CUDA one equals hashed_uniform on CPU).
    """
    if device.type != "cpu":
        uniform = hashed_uniform(keys, step, vocab, device)
    else:
        uniform = _uniform(_philox_words(keys, step, vocab))
    return _gumbel(uniform)


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniforms: -log(-log u); u = 0 gives -inf, never chosen."""
    return -torch.log(-torch.log(uniform))


def sample_gumbel_max(logits: torch.Tensor, temperature: float, keys: Sequence[int], step: int) -> torch.Tensor:
    """One token per row from softmax(logits / T) by the Gumbel-max trick: argmax(logits / T + Gumbel noise).

    Exact sampling from the tempered, untruncated distribution, with each row's noise its own. Unlike
    inverse-CDF sampling, a tiny change of the logits (the rounding of another batch shape) changes the
    token only when the two best noisy scores are that close, not whenever any boundary moves.
    On the CPU the noise is transformed only where it can matter (_pruned_gumbel_max): the same tokens.
    """
    if logits.device.type == "cpu":
        return _pruned_gumbel_max(logits, temperature, _philox_words(keys, step, logits.shape[-1]))
    return full_gumbel_max(logits, temperature, keys, step)


def full_gumbel_max(logits: torch.Tensor, temperature: float, keys: Sequence[int], step: int) -> torch.Tensor:
    """Gumbel-max with noise for every element (other devices; on the CPU the reference the pruned one equals)."""
    noise = gumbel_noise(keys, step, logits.shape[-1], logits.device)
    return (logits.float() / temperature + noise).argmax(dim=-1)


def _pruned_gumbel_max(logits: torch.Tensor, temperature: float, words: np.ndarray) -> torch.Tensor:
    """argmax(logits.float() / T + Gumbel noise of _uniform(words)) per row, first index on ties, computing the
    scores only for candidates: the noise of a row is at most G(its largest u), so a token whose scaled logit is
    below the top-logit token's score minus that bound cannot win. On a 262k vocabulary the full transform (two
    logs, a division and an add over every element) costs ~4x the output layer in bf16; the candidates are few.
    The words are turned into uniforms only where read (u's order is the words' order, so the largest u is the
    largest word's), and the top logit comes from max, not argmax (3x faster on bf16; both take the first index)."""
    top_logit, top = logits.max(dim=-1, keepdim=True)
    top_words = np.take_along_axis(words, top.numpy(), axis=-1)
    top_score = top_logit.float() / temperature + _gumbel(_uniform(top_words))
    noise_bound = _gumbel(_uniform(words.max(axis=-1, keepdims=True)))
    # slack of two bf16 ulps (2^-6 relative) and more: rounding the cut to the logits' dtype loses no candidate
    cut = (top_score - noise_bound) * temperature
    cut = cut - 2.0 ** -6 * cut.abs() - 1e-3
    rows, cols = torch.nonzero(logits >= cut.to(logits.dtype), as_tuple=True)
    scores = logits[rows, cols].float() / temperature + _gumbel(_uniform(words[rows.numpy(), cols.numpy()]))
    best = torch.full((logits.shape[0],), -torch.inf).scatter_reduce(0, rows, scores, "amax")
    winner = torch.where(scores == best[rows], cols, logits.shape[-1])
    return torch.full((logits.shape[0],), logits.shape[-1]).scatter_reduce(0, rows, winner, "amin")


# Characters that come right before another inside one of the patterns transformers' clean_up_tokenization
# replaces (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're").
_PATTERN_PRECEDERS = frozenset(" 'nvr")
CLEANUP_UNKNOWN = "unknown"


def decode_cleanup(tokenizer) -> Callable[[str], str] | str | None:
    """What the tokenizer's decode does after joining the tokens' text: None (nothing), the standard
    clean_up_tokenization (clean_up_tokenization_spaces, where transformers applies it), or CLEANUP_UNKNOWN."""
    ids = tokenizer(" a . b 's", add_special_tokens=False)["input_ids"]
    raw = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    cleaned = tokenizer.decode(ids, skip_special_tokens=True)
    from transformers import PreTrainedTokenizerBase

    standard = getattr(type(tokenizer), "clean_up_tokenization", None) is PreTrainedTokenizerBase.clean_up_tokenization
    if cleaned == raw:
        return None
    return tokenizer.clean_up_tokenization if standard and tokenizer.clean_up_tokenization(raw) == cleaned \
        else CLEANUP_UNKNOWN


def settled_text(raw: str, cleanup: Callable[[str], str]) -> str:
    """The part of cleanup(raw) that cleanup(raw + more) begins with, whatever follows: cleanup(raw[:p + 1]) for
    the last p where raw[p] is no space and raw[p - 1] comes before no character in any pattern. No pattern
    occurrence, in any of the replacements, can hold position p, so the text up to p is cleaned as it is alone."""
    p = next((i for i in range(len(raw) - 1, -1, -1)
              if raw[i] != " " and (i == 0 or raw[i - 1] not in _PATTERN_PRECEDERS)), -1)
    return cleanup(raw[:p + 1])


class RowTexts:
    """Each row's decoded text, kept up to date incrementally: per step one batched decode, for every row given,
    of the tokens since its text last ended on a whole character and one token before them for context (so a
    tokenizer that drops a first token's leading space drops it alike in both windows). A tokenizer that cleans up
    spaces (cleanup) shows only settled_text: what no later token can change."""

    def __init__(self, tokenizer, cleanup: Callable[[str], str] | None, n_rows: int):
        self.tokenizer, self.cleanup = tokenizer, cleanup
        self.done, self.start, self.read = [""] * n_rows, [0] * n_rows, [0] * n_rows

    def update(self, rows: list[int], tokens: list[list[int]]) -> list[str]:
        """The texts of rows (indices into tokens, each one token longer than at its last update)."""
        windows = [w for r in rows for w in (tokens[r][self.start[r]:self.read[r]], tokens[r][self.start[r]:])]
        decoded = self.tokenizer.batch_decode(windows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        texts = []
        for i, r in enumerate(rows):
            before, now = decoded[2 * i], decoded[2 * i + 1]
            new = now[len(before):]
            text = self.done[r] + new
            if new and not new.endswith("\ufffd"):  # ends on a whole character: later windows start here
                self.done[r], self.start[r], self.read[r] = text, self.read[r], len(tokens[r])
            # a trailing U+FFFD is a character still to come: cleaned text is judged only before it
            texts.append(text if self.cleanup is None else settled_text(text.rstrip("\ufffd"), self.cleanup))
        return texts
