"""rao_blackwell is unbiased, checked by exact enumeration: on a toy language model (a fixed next-token
distribution per prefix over a dozen words) every completion the sampler can draw is enumerated with its
probability, its traced path is built as memqa.probe.tracing records it, and E[Y] = sum P(x) Y(x) must equal
P(a completion contains a gold answer) to 1e-9, for golds the tokenizer splits before a final '.', aliases that
share a prefix, a variant that is another's suffix, and an answer whose tokens overlap themselves."""
from __future__ import annotations

import math
import random

import pytest

from memqa.matching import contains
from memqa.probe.containment import rb_estimate
from memqa.probe.tracing import REST_FLOOR, answer_settled, answer_variants, first_match

WORDS = [" Apple", "Apple", " Inc", ".", " New", "New", " York", "York", " City", " la", "la", " x"]
EOS = len(WORDS)
N_NEW = 3


class ToyTokenizer:
    """Greedy longest-match over WORDS; decode concatenates (EOS decodes to nothing)."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = []
        while text:
            word = max((w for w in WORDS if text.startswith(w)), key=len)
            ids.append(WORDS.index(word))
            text = text[len(word):]
        return {"input_ids": ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(WORDS[i] for i in ids if i != EOS)


def next_logprobs(prefix: tuple[int, ...], seed: int) -> list[float]:
    """The toy model: a fixed distribution over WORDS and EOS for each prefix (seeded by it)."""
    rng = random.Random(hash((seed, prefix)))
    weights = [rng.random() + 0.05 for _ in range(EOS + 1)]
    total = sum(weights)
    return [math.log(w / total) for w in weights]


def traced(tokens: list[int], steps: int, variants: list[tuple[int, ...]], seed: int, match: int | None) -> dict:
    """The path record trace_paths makes for a sample: per recorded position j, the log probability of each
    variant's first token and, where that is above REST_FLOOR, of its further tokens (teacher-forced)."""
    first, rest = [], {}
    for j in range(steps):
        logprobs = next_logprobs(tuple(tokens[:j]), seed)
        first.append({v[0]: logprobs[v[0]] for v in variants})
        for v in variants:
            if len(v) > 1 and j + len(v) <= N_NEW and math.exp(logprobs[v[0]]) > REST_FLOOR:
                rest[(j, v)] = sum(next_logprobs(tuple(tokens[:j]) + v[:k], seed)[v[k]] for k in range(1, len(v)))
    return {"tokens": tokens, "first": first, "rest": rest, "match": match}


def enumerate_samples(answers: list[str], seed: int):
    """Every completion the sampler can draw (it stops at EOS, at N_NEW tokens or at its first match), with its
    probability, the number of positions its path records, and its match (None: none)."""
    tokenizer = ToyTokenizer()
    todo = [([], 0.0)]
    while todo:
        tokens, logp = todo.pop()
        for token, lp in enumerate(next_logprobs(tuple(tokens), seed)):
            if token == EOS:
                yield tokens, math.exp(logp + lp), len(tokens) + 1, None  # the position that drew EOS counts
                continue
            grown = tokens + [token]
            match = first_match(tokenizer, contains, grown, answers)
            if match is not None:
                yield grown, math.exp(logp + lp), match, match
            elif len(grown) == N_NEW:
                yield grown, math.exp(logp + lp), N_NEW, None
            else:
                todo.append((grown, logp + lp))


def expectation_and_truth(answers: list[str], seed: int) -> tuple[float, float]:
    tokenizer = ToyTokenizer()
    variants = answer_variants(tokenizer, answers, contains)
    def settled(tokens: list[int]) -> bool:
        return answer_settled(contains, tokenizer.decode(tokens), answers)

    expected = truth = 0.0
    for tokens, p, steps, match in enumerate_samples(answers, seed):
        expected += p * rb_estimate(traced(tokens, steps, variants, seed, match), variants, N_NEW, settled)
        truth += p * (match is not None)
    return expected, truth


@pytest.mark.parametrize("answers", [["Apple Inc."], ["New York", "New York City"], ["York", "New York"],
                                     ["la la"], ["Apple Inc.", "New York"]],
                         ids=["final-period-split-off", "aliases-sharing-a-prefix", "variant-suffix-of-another",
                              "self-overlapping", "two-golds"])
@pytest.mark.parametrize("seed", [0, 1])
def test_rao_blackwell_expectation_equals_the_containment_probability_exactly(answers, seed):
    expected, truth = expectation_and_truth(answers, seed)
    assert 0.01 < truth < 0.99
    assert expected == pytest.approx(truth, abs=1e-9)


def test_a_gold_ending_in_punctuation_is_cut_where_the_matcher_already_counts_it():
    tokenizer = ToyTokenizer()
    variants = answer_variants(tokenizer, ["Apple Inc."], contains)
    assert sorted(variants) == sorted([(WORDS.index(" Apple"), WORDS.index(" Inc")),
                                       (WORDS.index("Apple"), WORDS.index(" Inc"))])
