"""P(a temperature-T sample of <= N tokens contains a gold answer) from traced paths (tracing.trace_paths): a
lower bound from the greedy path alone (greedy_containment), and unbiased Rao-Blackwellised estimates from samples
(rao_blackwell)."""
from __future__ import annotations

import math

from memqa.config import Probe
from memqa.probe.tracing import trace_paths

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
                  answers: list[list[str]], conf: Probe, *, samples: int, seed: int) -> tuple[list[list[float]], list]:
    """Per prompt, `samples` unbiased estimates of P(a temperature-T sample of <= N tokens contains a gold
    answer), one from each sample x (drawn as the sampler draws, stopped at its first match tau); also the paths.

        Y(x) = sum_{j < tau} sum_{v included at j} P_T(x_j+1.. = v | x_<=j)  +  [tau exists and the match at tau
               is not an included variant v ending at tau, i.e. x_tau-|v|+1..tau = v with v included at tau-|v|]

    (tau = infinity when x never matches; j runs over every position x reached, the one at which it drew
    EOS included; v included at j: j + |v| <= N, and |v| = 1 or P_T(v_1 | x_<=j) > REST_FLOOR, where v's
    further tokens are teacher-forced by a fork of the path.)
    Unbiased: let G be "some included variant v begins at a position j and its last token is the sample's
    first match" (tau = j + |v|). G's pieces for different (j, v) are disjoint, and the piece (j, v) is
    {tau > j} and {v begins at j}; {tau > j} and whether v is included at j are decided by x_<=j, so
    P(piece) = E[1(tau > j) 1(v included at j) P_T(v at j | x_<=j)]; summed over (j, v), the expectation of the
    first part of Y is P(G). The second part is the indicator of {contains} minus G, so E[Y] = P(contains).
    Two edge cases are assumed away: an answer whose token sequence overlaps itself (its suffix is its
    prefix), and a text that contains the answer before the variant's last token (a character run ending
    the previous text completes it); both would make Y count a little too much. The threshold costs no bias
    (it only moves mass between the two parts), only variance. Y is not capped at 1 (its mean is <= 1).
    Rao-Blackwellised: each step's "does the answer begin here" indicator is replaced by its conditional
    probability given the prefix, so a fact below the sampler's resolution still gets a graded score.
    With probe.rb_max_new_tokens = H < N, a sample is decoded only H tokens and j runs below min(tau, H):
    Y then estimates, unbiased, P(the first match begins before position H), a lower bound of P(contains).
    """
    n_new = conf.max_new_tokens
    paths = trace_paths(model, tokenizer, prompts, variants, answers, conf, samples=samples,
                        temperature=conf.temperature, seed=seed, horizon=conf.rb_max_new_tokens)
    value = [[0.0] * samples for _ in prompts]
    for p, rows in enumerate(paths):
        for s, path in enumerate(rows):
            explained = False
            for j, first in enumerate(path["first"]):
                for v in variants[p]:
                    if j + len(v) > n_new or (len(v) > 1 and (j, v) not in path["rest"]):
                        continue
                    value[p][s] += math.exp(first[v[0]] + (path["rest"][(j, v)] if len(v) > 1 else 0.0))
                    if path["match"] == j + len(v) and tuple(path["tokens"][j:j + len(v)]) == v:
                        explained = True
            if path["match"] is not None and not explained:
                value[p][s] += 1.0
    return value, paths
