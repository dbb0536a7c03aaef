"""The path tracer the traced estimators (greedy_containment, rao_blackwell) read: decode paths and record, along
each, the tempered log probabilities of the token taken and of every answer variant's first token, with the
variants' further tokens teacher-forced by forks of the path (memqa.engine.generate_traced)."""
from __future__ import annotations

import math

import torch

from memqa import engine
from memqa.config import Probe
from memqa.matching import contains, get_matcher
from memqa.teacher_forcing import tempered_logprobs_at

# The traced estimators teacher-force an answer's tokens after its first only where that first token is likely
# enough: its tempered probability (greedy_containment: times the greedy prefix's) above REST_FLOOR. Below it
# the term is left out (README "The probe": what that costs each estimator).
REST_FLOOR = 1e-4


def answer_settled(matcher, text: str, answers: list[str]) -> bool:
    """True when a completion's text so far already counts as correct, whatever tokens may follow.

    A trailing U+FFFD (a character whose remaining bytes are still to come) is not judged. `contains`
    only gains matches as text is appended (normalising is character by character), so a match is
    final. A word-aligned matcher (token_sequence) could lose one ('Paris' -> 'Parisian'): it judges
    only the text before the last whitespace, whose words no later token can extend.
    """
    text = text.rstrip("\ufffd")
    if matcher is not contains:
        text = text[:max((i for i, ch in enumerate(text) if ch.isspace()), default=0)]
    return matcher(text, answers)


def stop_at_answer(tokenizer, matcher, answers_of):
    """The decode loop's stop_when for the probe: a completion of prompt p ends once its text contains one of
    answers_of(p) for good (answer_settled). A tokenizer that cleans up spaces on decoding (Llama-3's) stops too:
    the engine shows stop_when only text no later token can change (memqa.decoding)."""
    return lambda p, text: answer_settled(matcher, text, answers_of(p))


def answer_variants(tokenizer, answers: list[str], matcher=contains) -> list[tuple[int, ...]]:
    """The token sequences whose appearance in a completion puts a gold answer in its text: every alias with a
    leading space (' Paris', after a word) and without ('Paris', after a newline or a quote), each tokenised
    on its own and cut after its shortest prefix whose text already counts as correct (answer_settled): the
    matcher ignores a final '.', so ' Apple Inc.' -> [' Apple', ' Inc', '.'] is cut to [' Apple', ' Inc'], where
    the sampler stops. Prefix-free: a sequence that extends another is dropped, since it implies the shorter one;
    so at one position at most one variant can begin, and their probabilities add up exactly."""
    found = set()
    for answer in answers:
        for text in (" " + answer, answer):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            settled = next((k for k in range(1, len(ids)) if answer_settled(
                matcher, tokenizer.decode(list(ids[:k]), skip_special_tokens=True), answers)), len(ids))
            if ids:
                found.add(ids[:settled])
    return sorted(v for v in found if not any(o != v and v[:len(o)] == o for o in found))


def first_match(tokenizer, matcher, tokens: list[int], answers: list[str]) -> int | None:
    """The number of tokens after which a completion's text first counts as correct; None if it never does."""
    if not matcher(tokenizer.decode(tokens, skip_special_tokens=True), answers):
        return None
    for t in range(1, len(tokens) + 1):
        if answer_settled(matcher, tokenizer.decode(tokens[:t], skip_special_tokens=True), answers):
            return t
    return len(tokens)  # word-aligned matcher: the answer is the completion's last word


class PathTracer:
    """Watches generate_traced: at each position j of each path, the tempered log probability of the token
    chosen and of every answer variant's first token, and forks the path to teacher-force a variant's further
    tokens where its weight is above REST_FLOOR (greedy: P_T(path so far) P_T(v_1), skipping the variant the
    greedy token begins; sampled: P_T(v_1)). Ends a path whose own probability falls below path_floor."""

    def __init__(self, variants: list[list[tuple[int, ...]]], conf: Probe, greedy: bool, path_floor: float | None):
        self.variants, self.greedy = variants, greedy
        self.firsts = [sorted({v[0] for v in vs}) for vs in variants]
        self.temperature, self.n_new = conf.temperature, conf.max_new_tokens
        self.log_floor = math.log(path_floor) if path_floor else None
        self.records: dict[tuple[int, int], dict] = {}

    def step(self, rows, step, logits, tokens):
        width = max(len(self.firsts[p]) for p, _ in rows)
        index = torch.tensor([self.firsts[p] + [0] * (width - len(self.firsts[p])) for p, _ in rows],
                             device=logits.device)
        # one log-sum-exp per row for the token chosen and the variants' first tokens
        gathered = tempered_logprobs_at(logits, self.temperature, torch.cat([tokens[:, None].to(logits.device),
                                                                             index], dim=1))
        chosen, first_lp = gathered[:, 0].tolist(), gathered[:, 1:].tolist()
        halt, forks = [], []
        for k, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            rec = self.records.setdefault(row, {"chosen": [], "first": [], "mass": 0.0, "halted": None, "rest": {}})
            first = dict(zip(self.firsts[row[0]], first_lp[k], strict=False))
            forks += [(k, v, (row, len(rec["chosen"]), v)) for v in self._forked_variants(row, rec, first, token)]
            rec["chosen"].append(chosen[k])
            rec["first"].append(first)
            rec["mass"] += chosen[k]
            if self.log_floor is not None and rec["mass"] < self.log_floor:
                rec["halted"] = math.exp(rec["mass"])
                halt.append(k)
        return halt, forks

    def _forked_variants(self, row: tuple[int, int], rec: dict, first: dict, token: int) -> list[tuple[int, ...]]:
        """The variants of >= 2 tokens to teacher-force from this position of the path (weight above REST_FLOOR)."""
        j, out = len(rec["chosen"]), []
        for v in self.variants[row[0]]:
            if len(v) < 2 or j + len(v) > self.n_new or (self.greedy and v[0] == token):
                continue
            if math.exp(first[v[0]] + (rec["mass"] if self.greedy else 0.0)) > REST_FLOOR:
                out.append(v)
        return out

    def forked(self, tags, logits, targets):
        logprobs = tempered_logprobs_at(logits, self.temperature, targets[:, None])
        for (row, j, v), value in zip(tags, logprobs.squeeze(1).tolist(), strict=True):
            rest = self.records[row]["rest"]
            rest[(j, v)] = rest.get((j, v), 0.0) + value


def trace_paths(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                answers: list[list[str]], conf: Probe, *, samples: int, temperature: float, seed: int,
                path_floor: float | None = None, horizon: int | None = None,
                stream_ids: list[int] | None = None) -> list[list[dict]]:
    """Decode every prompt `samples` times (temperature 0: greedy; the sampler's per-completion streams) and
    record along each path: [prompt][sample] {tokens, chosen, first, rest, match, halted}.

    chosen[j] / first[j][t] = the tempered (probe.temperature) log probability, at position j (after j
    generated tokens), of the token the path took and of the variants' first tokens t; rest[(j, v)] =
    log P_T(v_2.. | path_<=j, v_1) for the variants forked there (PathTracer: teacher-forced in the same
    batch, engine.generate_traced). A path stops at EOS, at max_new_tokens, once its text contains a gold
    answer (as the sampler's), or with path_floor (greedy) once its own tempered probability falls below it
    (halted: that probability). match = the number of tokens after which the text first contains an answer
    (None: never); the positions recorded are exactly those before it. horizon: decode at most this many
    tokens (forks still teacher-force variants that end by max_new_tokens). stream_ids: the prompts' random
    streams (engine.generate_traced).
    """
    matcher = get_matcher(conf.matcher)
    tracer = PathTracer(variants, conf, greedy=temperature == 0, path_floor=path_floor)
    decode = min(horizon or conf.max_new_tokens, conf.max_new_tokens)
    ids = engine.generate_traced(model, tokenizer, prompts, tracer, max_new_tokens=decode, num_samples=samples,
                                 temperature=temperature, batch_size=conf.batch_size, seed=seed,
                                 stop_when=stop_at_answer(tokenizer, matcher, answers.__getitem__),
                                 stream_ids=stream_ids)
    out = []
    for p, paths in enumerate(ids):
        out.append([])
        for s, tokens in enumerate(paths):
            rec = tracer.records[(p, s)]
            match = first_match(tokenizer, matcher, tokens, answers[p])
            steps = len(rec["chosen"]) if match is None else min(match, len(rec["chosen"]))
            out[-1].append({"tokens": tokens, "chosen": rec["chosen"][:steps], "first": rec["first"][:steps],
                            "rest": {key: value for key, value in rec["rest"].items() if key[0] < steps},
                            "match": match, "halted": rec["halted"] if match is None else None})
    return out
