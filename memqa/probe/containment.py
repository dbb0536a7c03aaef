"""P(a temperature-T sample of <= N tokens contains a gold answer) from traced paths (tracing.trace_paths): a
lower bound from the greedy path alone (greedy_containment), and unbiased Rao-Blackwellised estimates from samples
(rao_blackwell)."""
from __future__ import annotations

import math
from collections.abc import Callable

from memqa.config import Probe
from memqa.matching import get_matcher
from memqa.probe.tracing import answer_settled, trace_paths

# greedy_containment follows a greedy path only while the path's own tempered probability is above PATH_FLOOR:
# every later term is a sample that begins with that whole prefix, so together they are below it.
PATH_FLOOR = 1e-4


def greedy_containment(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                       answers: list[list[str]], conf: Probe) -> tuple[list[float], list[float], list[dict]]:
    """A lower bound of P(a temperature-T sample of <= N tokens contains a gold answer), per prompt, from the
    greedy path g alone; also the slack (what the approximations left out, at most) and the greedy paths.

    Every sample x either follows g through the step k at which g's text first contains an answer, or first
    leaves g at some step j+1 (x_1..j = g_1..j, x_j+1 != g_j+1). These events are disjoint, so
        P(contains) >= [k exists] P_T(g_<=k)
                       + sum_{j < k} P_T(g_<=j) sum_{variants v, v_1 != g_j+1, j + |v| <= N} P_T(x_j+1.. = v | g_<=j),
    P_T the tempered (T = probe.temperature) probability and v the answer variants (answer_variants, prefix-free,
    so at one j their events are disjoint: the sum is their union, exactly). Each event puts the answer's
    tokens, hence its text, in the sample. P_T(v_1 | g_<=j) comes with the greedy decoding (the logits at j);
    v's further tokens are teacher-forced (a fork of the path, one decoding step per token) only where
    P_T(g_<=j) P_T(v_1 | g_<=j) > REST_FLOOR; a term below it is dropped, and so is everything after the path's
    own probability falls below PATH_FLOOR (where the greedy decoding stops): both keep the bound a lower
    bound; slack = the dropped terms' first-token weights + the abandoned path mass, an upper bound of what
    they could add.
    """
    n_new = conf.max_new_tokens
    paths = [row[0] for row in trace_paths(model, tokenizer, prompts, variants, answers, conf, samples=1,
                                           temperature=0.0, seed=0, path_floor=PATH_FLOOR)]
    value, slack = [0.0] * len(prompts), [0.0] * len(prompts)
    for p, path in enumerate(paths):
        log_prefix = 0.0
        for j, (chosen, first) in enumerate(zip(path["chosen"], path["first"], strict=True)):
            greedy_next = path["tokens"][j] if j < len(path["tokens"]) else None  # None: the greedy path drew EOS
            for v in variants[p]:
                if v[0] == greedy_next or j + len(v) > n_new:
                    continue
                weight = math.exp(log_prefix + first[v[0]])
                if len(v) == 1:
                    value[p] += weight
                elif (j, v) in path["rest"]:
                    value[p] += weight * math.exp(path["rest"][(j, v)])
                else:
                    slack[p] += weight
            log_prefix += chosen
        if path["match"] is not None:
            value[p] += math.exp(log_prefix)  # the steps recorded are exactly the path's first k tokens
        slack[p] += path["halted"] or 0.0
    return value, slack, paths


def rao_blackwell(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                  answers: list[list[str]], conf: Probe, *, samples: int, seed: int,
                  stream_ids: list[int] | None = None) -> tuple[list[list[float]], list]:
    """Per prompt, `samples` unbiased estimates of P(a temperature-T sample of <= N tokens contains a gold
    answer), one from each sample x (drawn as the sampler draws, stopped at its first match tau), by rb_estimate;
    also the paths. With probe.rb_max_new_tokens = H < N, a sample is decoded only H tokens and only the
    positions before H count: the estimate is then an unbiased one of a lower bound of P(contains).
    Rao-Blackwellised: each step's "does the answer begin here" indicator is replaced by its conditional
    probability given the prefix, so a fact below the sampler's resolution still gets a graded score.
    stream_ids: the prompts' random streams (engine.generate_traced)."""
    paths = trace_paths(model, tokenizer, prompts, variants, answers, conf, samples=samples,
                        temperature=conf.temperature, seed=seed, horizon=conf.rb_max_new_tokens, stream_ids=stream_ids)
    matcher = get_matcher(conf.matcher)
    value = []
    for p, rows in enumerate(paths):
        def settled(tokens: list[int], gold: list[str] = answers[p]) -> bool:
            return answer_settled(matcher, tokenizer.decode(tokens, skip_special_tokens=True), gold)

        value.append([rb_estimate(path, variants[p], conf.max_new_tokens, settled) for path in rows])
    return value, paths


def _included(path: dict, j: int, v: tuple[int, ...], n_new: int) -> bool:
    """Whether variant v counts at position j of the path: j recorded, v ends by n_new, and v's tokens after its
    first were teacher-forced there (done where P_T(v_1 | x_<=j) > REST_FLOOR)."""
    return 0 <= j < len(path["first"]) and j + len(v) <= n_new and (len(v) == 1 or (j, v) in path["rest"])


def _first_match_ends(path: dict, j: int, v: tuple[int, ...], variants: list[tuple[int, ...]], n_new: int,
                      settled: Callable[[list[int]], bool]) -> bool:
    """Whether x_<=j followed by v has its first match exactly at v's last token, and v is the longest included
    variant ending there (so each first match is counted under one (j, v) only: a variant that is another's
    suffix, 'York' in 'New York', or that overlaps itself, 'la' 'la', is not counted twice)."""
    tokens, end = path["tokens"][:j] + list(v), j + len(v)
    if any(len(v) < len(w) <= end and tuple(tokens[end - len(w):end]) == w and _included(path, end - len(w), w, n_new)
           for w in variants):
        return False
    # x_<=j has not matched (j is before the path's first match): the first match is at the first k that settles
    return settled(tokens) and not any(settled(tokens[:j + k]) for k in range(1, len(v)))


def rb_estimate(path: dict, variants: list[tuple[int, ...]], n_new: int,
                settled: Callable[[list[int]], bool]) -> float:
    """One sample's unbiased estimate Y of P(contains), from its traced path (tokens, first, rest, match) and
    settled(tokens) = whether their text already counts as correct whatever follows (tracing.answer_settled):

        Y = sum over recorded positions j and included variants v of  P_T(x_j+1.. = v | x_<=j) [E(j, v)]
            + [x matched, and at its match tau no included variant v has x_tau-|v|+1..tau = v]

    E(j, v): x_<=j followed by v first matches exactly at v's last token, and no longer included variant ends
    there on those tokens (_first_match_ends). The events {x_j+1.. = v and E(j, v)} are disjoint (each is "the
    first match is at j + |v| and v is the longest included variant ending on it"), and E(j, v) and v's inclusion
    at j are decided by x_<=j, so the first part's expectation is the probability of their union; the second
    part is the indicator of the rest of {contains}. Hence E[Y] = P(contains), exactly (tested by enumerating a
    toy model's completions). Y is not capped at 1 (its mean is <= 1)."""
    value = 0.0
    for j, first in enumerate(path["first"]):
        for v in variants:
            if _included(path, j, v, n_new) and _first_match_ends(path, j, v, variants, n_new, settled):
                value += math.exp(first[v[0]] + (path["rest"][(j, v)] if len(v) > 1 else 0.0))
    tau = path["match"]
    if tau is not None and not any(_included(path, tau - len(v), v, n_new) and
                                   tuple(path["tokens"][tau - len(v):tau]) == v for v in variants):
        value += 1.0
    return value
