"""What the decode loop (memqa.engine) keeps for each row besides its KV cache: its random stream and its text.

Random streams: a 64-bit key per (seed, prompt, sample), Gumbel noise from a counter-based stream keyed by (row
key, step), and Gumbel-max sampling over it; a row's noise depends on nothing but its key and the step, so a
sampled completion does not depend on its batch. Texts: each row's decoded text for stop_when, kept up to date
incrementally (RowTexts), and for a tokenizer that cleans up spaces on decoding only the part no later token can
change (settled_text).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _splitmix_bits(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output for states x (int64, already advanced), as uniforms in [0, 1): its top 24 bits."""
    for shift, factor in ((30, _C1), (27, _C2)):
        x = x ^ _lsr(x, shift)
        x = x * _signed(factor)
    x = x ^ _lsr(x, 31)
    return _lsr(x, 40).float() * 2.0 ** -24


def splitmix_uniform(states: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform [0, 1) float32, [len(states), vocab]: element v of row k is splitmix64's output v + 1 from the 64-bit
    state states[k] (int64), its top 24 bits. Integer arithmetic only (wrapping int64 multiplies), so every device
    computes the same bits, and one draw covers the whole batch: a few kernels, not one per row."""
    return _splitmix_bits(states[:, None] + torch.arange(1, vocab + 1, device=states.device) * _signed(_GAMMA))


def splitmix_at(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """splitmix_uniform(states, vocab)[k, index[k]] for every k, without the rest of the rows: the stream is
    counter-based, so any element is computed on its own."""
    return _splitmix_bits(states + (index + 1) * _signed(_GAMMA))


def _states(keys: Sequence[int], step: int, device: torch.device) -> torch.Tensor:
    """Each row's splitmix64 state at a step: _mix64(key ^ _mix64(step)), as int64."""
    return torch.tensor([_signed(_mix64(key ^ _mix64(step))) for key in keys], dtype=torch.long, device=device)


def hashed_uniform(keys: Sequence[int], step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32, [len(keys), vocab], on device: splitmix_uniform from each row's state (_states),
    every row in one draw (in chunks of _CHUNK elements)."""
    return _dense_uniform(_states(keys, step, device), vocab)


def _dense_uniform(states: torch.Tensor, vocab: int) -> torch.Tensor:
    """splitmix_uniform(states, vocab), in chunks of _CHUNK elements."""
    if not len(states):
        return torch.empty(0, vocab, device=states.device)
    return torch.cat([splitmix_uniform(part, vocab) for part in states.split(max(1, _CHUNK // vocab))])


def gumbel_noise(keys: Sequence[int], step: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise, [len(keys), vocab]: row k's from a counter-based stream keyed by (keys[k], step)
    (hashed_uniform), so a row's noise depends on nothing but its key and the step, and every device draws the
    same bits."""
    return _gumbel(hashed_uniform(keys, step, vocab, device))


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniforms: -log(-log u); u = 0 gives -inf, never chosen."""
    return -torch.log(-torch.log(uniform))


# The largest noise a 24-bit uniform (at most 1 - 2^-24) gives, as _gumbel computes it in float32: ~16.64
GUMBEL_MAX = float(_gumbel(torch.tensor([1.0 - 2.0 ** -24])))


def sample_gumbel_max(logits: torch.Tensor, temperature: float, keys: Sequence[int], step: int) -> torch.Tensor:
    """One token per row from softmax(logits / T) by the Gumbel-max trick: argmax(logits / T + Gumbel noise).

    Exact sampling from the tempered, untruncated distribution, with each row's noise its own. Unlike
    inverse-CDF sampling, a tiny change of the logits (the rounding of another batch shape) changes the
    token only when the two best noisy scores are that close, not whenever any boundary moves.
    On the CPU the noise is drawn only where it can matter (_pruned_gumbel_max): the same tokens as the full draw.
    """
    if logits.device.type == "cpu":
        return _pruned_gumbel_max(logits, temperature, _states(keys, step, logits.device))
    return full_gumbel_max(logits, temperature, keys, step)


def full_gumbel_max(logits: torch.Tensor, temperature: float, keys: Sequence[int], step: int) -> torch.Tensor:
    """Gumbel-max with noise for every element (other devices; on the CPU the reference the pruned one equals)."""
    return _dense_gumbel_max(logits, temperature, _states(keys, step, logits.device))


def _dense_gumbel_max(logits: torch.Tensor, temperature: float, states: torch.Tensor) -> torch.Tensor:
    """argmax(logits / T + Gumbel noise of every element of the rows' streams)."""
    return (logits.float() / temperature + _gumbel(_dense_uniform(states, logits.shape[-1]))).argmax(dim=-1)


def _pruned_gumbel_max(logits: torch.Tensor, temperature: float, states: torch.Tensor) -> torch.Tensor:
    """argmax(logits.float() / T + Gumbel noise of the rows' streams) per row, first index on ties, drawing the noise
    only for candidates: no noise exceeds GUMBEL_MAX, so a token whose scaled logit is below the top-logit token's
    score minus GUMBEL_MAX cannot win; the stream is counter-based (splitmix_at), so the candidates' noise is
    drawn alone. On a 262k vocabulary drawing and transforming every element costs more than the output layer in
    bf16; the candidates are few. The top logit comes from max, not argmax (3x faster on bf16; both take the
    first index). A top token whose u is 0 (noise -inf) makes every token a candidate: still exact. Rows so flat
    that over an eighth of the elements are candidates are drawn densely instead (the same noise, so the same
    tokens)."""
    top_logit, top = logits.max(dim=-1, keepdim=True)
    top_score = top_logit.float() / temperature + _gumbel(splitmix_at(states[:, None], top))
    # slack of two bf16 ulps (2^-6 relative) and more: rounding the cut to the logits' dtype loses no candidate
    cut = (top_score - GUMBEL_MAX) * temperature
    cut = cut - 2.0 ** -6 * cut.abs() - 1e-3
    rows, cols = torch.nonzero(logits >= cut.to(logits.dtype), as_tuple=True)
    if len(rows) > logits.numel() // 8:  # flat rows: the dense draw is cheaper per element than gathering
        return _dense_gumbel_max(logits, temperature, states)
    scores = logits[rows, cols].float() / temperature + _gumbel(splitmix_at(states[rows], cols))
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
