"""The probe's estimators of a fact's memory score R, one registry entry each (ESTIMATORS: probe.method -> estimator),
and score_facts, which lays out the prompts and runs the one probe.method names.

A new estimator is a function here, (model, tokenizer, Prompts, conf, seed) -> one row per fact, and its entry in
ESTIMATORS (its name must also be allowed by memqa.config.PROBE_METHOD: tests/test_probe.py checks the two agree).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from memqa import engine, teacher_forcing
from memqa.config import Probe
from memqa.errors import MemqaError
from memqa.matching import get_matcher
from memqa.memory import probe_group
from memqa.probe.containment import greedy_containment, rao_blackwell
from memqa.probe.tracing import answer_variants, stop_at_answer
from memqa.prompts import fill, published_count, templates_for

# rao_blackwell draws from streams of its own: under one seed its samples are independent of `sample`'s.
RB_STREAM = 0x52424C << 32


@dataclass(frozen=True)
class Prompts:
    """A shard's facts and their prompts, laid out fact by fact, per_fact (probe.templates) prompts each."""
    facts: list[dict]
    texts: list[str]

    @classmethod
    def of(cls, facts: list[dict], templates: int, template_set: str) -> Prompts:
        return cls(facts, [fill(t, fact["subject"]) for fact in facts
                           for t in templates_for(fact["relation"], templates, template_set)])

    @property
    def per_fact(self) -> int:
        return len(self.texts) // len(self.facts)

    def answers(self, p: int) -> list[str]:
        """The gold answers of prompt p (of fact p // per_fact)."""
        return self.facts[p // self.per_fact]["answers"]

    def of_fact(self, f: int) -> slice:
        """Fact f's prompts."""
        return slice(f * self.per_fact, (f + 1) * self.per_fact)


def sample(model, tokenizer, prompts: Prompts, conf: Probe, seed: int) -> list[dict]:
    """The paper's protocol: R = the share of probe.samples completions per template (one, greedy, at temperature
    0) that contain a gold answer under probe.matcher.

    A completion stops as soon as it contains a gold answer (tracing.stop_at_answer): later tokens could not
    change whether it counts, so R is the same as from full-length completions, at a fraction of the decoding.
    Saved completions (save_completions) are therefore cut where the answer was found; with probe.engine vllm
    (memqa.vllm_engine.sample) they run to EOS or max_new_tokens, and R is the same.
    """
    matcher = get_matcher(conf.matcher)
    samples = 1 if conf.temperature == 0 else conf.samples
    if conf.engine == "vllm":  # model: vLLM's LLM (run_probe); completions to EOS or max_new_tokens
        from memqa import vllm_engine

        completions = vllm_engine.sample(model, tokenizer, prompts.texts, conf, seed)
    else:
        completions = engine.generate(model, tokenizer, prompts.texts, max_new_tokens=conf.max_new_tokens,
                                      num_samples=samples, temperature=conf.temperature, batch_size=conf.batch_size,
                                      seed=seed, stop_when=stop_at_answer(tokenizer, matcher, prompts.answers))
    rows = []
    for f, fact in enumerate(prompts.facts):
        mine = completions[prompts.of_fact(f)]
        correct = [sum(matcher(text, fact["answers"]) for text in texts) for texts in mine]
        row = {"template_correct": correct, "score": sum(correct) / (len(correct) * samples)}
        if conf.save_completions:
            row["completions"] = mine
        rows.append(row)
    return rows


def likelihood(model, tokenizer, prompts: Prompts, conf: Probe, seed: int) -> list[dict]:
    """A lower bound of sampling's R: per template, the probability that a sample starts with the answer (its best
    alias, after a space), from one teacher-forced pass per alias."""
    best = _starts_with_answer(model, tokenizer, prompts, conf)
    rows = []
    for f in range(len(prompts.facts)):
        probs = [round(b, 6) for b in best[prompts.of_fact(f)]]
        rows.append({"template_prob": probs, "score": sum(probs) / len(probs)})
    return rows


def _starts_with_answer(model, tokenizer, prompts: Prompts, conf: Probe) -> list[float]:
    """Per prompt, P(a sample starts with ' ' + its best alias), unrounded."""
    texts = prompts.texts
    pairs = [(p, " " + answer) for p in range(len(texts)) for answer in prompts.answers(p)]
    logprobs = teacher_forcing.continuation_logprobs(model, tokenizer, [texts[p] for p, _ in pairs],
                                                     [answer for _, answer in pairs], temperature=conf.temperature,
                                                     batch_size=conf.batch_size)
    best = [0.0] * len(texts)  # the best alias per prompt
    for (p, _), logprob in zip(pairs, logprobs, strict=True):
        best[p] = max(best[p], math.exp(logprob))
    return best


def _variants(tokenizer, prompts: Prompts, conf: Probe) -> tuple[list[list[tuple[int, ...]]], list[list[str]]]:
    """Per prompt: its answer variants (answer_variants, computed once per fact) and its gold answers."""
    matcher = get_matcher(conf.matcher)
    per_fact = [answer_variants(tokenizer, fact["answers"], matcher) for fact in prompts.facts]
    n = len(prompts.texts)
    return [per_fact[p // prompts.per_fact] for p in range(n)], [prompts.answers(p) for p in range(n)]


def _traced_row(tokenizer, value: list[float], paths: list[list[dict]], conf: Probe, **extra) -> dict:
    """One fact's row from its templates' estimates: template_prob, score, extra, (save_completions) the paths."""
    probs = [round(v, 6) for v in value]
    row = {"template_prob": probs, "score": sum(probs) / len(probs), **extra}
    if conf.save_completions:
        row["completions"] = [[tokenizer.decode(path["tokens"], skip_special_tokens=True) for path in rows]
                              for rows in paths]
    return row


def greedy(model, tokenizer, prompts: Prompts, conf: Probe, seed: int) -> list[dict]:
    """greedy_containment per template (a lower bound of P(a sample contains the answer), from the greedy path);
    slack: the fact's mean of what the approximations left out, at most."""
    variants, answers = _variants(tokenizer, prompts, conf)
    value, slack, paths = greedy_containment(model, tokenizer, prompts.texts, variants, answers, conf)
    rows = []
    for f in range(len(prompts.facts)):
        mine = prompts.of_fact(f)
        rows.append(_traced_row(tokenizer, value[mine], [[path] for path in paths[mine]], conf,
                                slack=round(sum(slack[mine]) / prompts.per_fact, 6)))
    return rows


def rao_blackwellised(model, tokenizer, prompts: Prompts, conf: Probe, seed: int) -> list[dict]:
    """rao_blackwell per template: the mean of probe.rb_samples unbiased estimates of P(a sample contains the
    answer), one per sample (drawn from streams of its own, RB_STREAM); sample_prob: every estimate.

    With probe.rb_screen_cut c, every template is first scored by likelihood (P(a sample starts with the answer),
    a lower bound of its P(contains)) and only those at or above c are sampled; the others keep that lower bound
    (sample_prob []). A sampled template draws the streams it would unscreened, so screening changes a score only
    at the screened templates. A fact none of whose templates reaches c is marked screened_out: its score is below
    c, which sits below level 0's resolution (memqa.config.Probe), so it is level 0."""
    screened = conf.rb_screen_cut is not None
    start = _starts_with_answer(model, tokenizer, prompts, conf) if screened else None
    kept = [p for p, value in enumerate(start) if value >= conf.rb_screen_cut] if screened else \
        list(range(len(prompts.texts)))
    sampled = dict(zip(kept, _rao_blackwell_estimates(model, tokenizer, prompts, conf, seed, kept), strict=True))
    rows = []
    for f in range(len(prompts.facts)):
        mine = range(len(prompts.texts))[prompts.of_fact(f)]
        found = [sampled.get(p, ([], [])) for p in mine]  # (estimates, paths); ([], []): screened
        value = [sum(e) / len(e) if e else start[p] for p, (e, _) in zip(mine, found, strict=True)]
        extra = {}
        if screened:
            extra = {"screen_likelihood": round(sum(start[p] for p in mine) / len(mine), 6),
                     "screened_templates": sum(not e for e, _ in found)}
            if not any(e for e, _ in found):
                extra["screened_out"] = True
        rows.append(_traced_row(tokenizer, value, [paths for _, paths in found], conf,
                                sample_prob=[[round(v, 6) for v in e] for e, _ in found], **extra))
    return rows


def _rao_blackwell_estimates(model, tokenizer, prompts: Prompts, conf: Probe, seed: int,
                             chosen: list[int]) -> list[tuple[list[float], list[dict]]]:
    """Per chosen prompt (indices into prompts.texts, which key their streams): its rb_samples estimates and paths."""
    if not chosen:
        return []
    variants, answers = _variants(tokenizer, prompts, conf)
    estimates, paths = rao_blackwell(model, tokenizer, [prompts.texts[p] for p in chosen],
                                     [variants[p] for p in chosen], [answers[p] for p in chosen], conf,
                                     samples=conf.rb_samples, seed=seed ^ RB_STREAM, stream_ids=chosen)
    return list(zip(estimates, paths, strict=True))


@dataclass(frozen=True)
class Estimator:
    """One probe.method: how it scores a shard's facts, which method its crosscheck (probe.crosscheck_facts) runs
    against it, and the probe params only it reads (they key its shards only: shards.fingerprint)."""
    score: Callable[..., list[dict]]
    crosscheck: str
    own_params: tuple[str, ...] = ()


ESTIMATORS: dict[str, Estimator] = {
    "sample": Estimator(sample, crosscheck="likelihood"),
    "likelihood": Estimator(likelihood, crosscheck="sample"),
    "greedy_containment": Estimator(greedy, crosscheck="sample"),
    "rao_blackwell": Estimator(rao_blackwellised, crosscheck="sample",
                               own_params=("rb_samples", "rb_max_new_tokens", "rb_screen_cut")),
}


def estimator(method: str) -> Estimator:
    if method not in ESTIMATORS:
        raise MemqaError(f"unknown probe.method '{method}': use one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[method]


def score_facts(model, tokenizer, facts: list[dict], conf: Probe, method: str, seed: int) -> list[dict]:
    """One row per fact: R (score), the method's per-template results, and (when asked) the completions.

    Completions stop at an answer only where decoding a prefix of the tokens gives a prefix of the text
    (byte-level BPE and SentencePiece decoders do); a tokenizer that cleans up spaces decodes to full length.
    """
    rows = estimator(method).score(model, tokenizer, Prompts.of(facts, conf.templates, conf.template_set), conf, seed)
    return [{"fact_id": fact["fact_id"], "group": probe_group(fact), "relation": fact["relation"],
             "subject": fact["subject"], "method": method, "templates": _templates_used(fact, conf), **row}
            for fact, row in zip(facts, rows, strict=True)]


def _templates_used(fact: dict, conf: Probe) -> dict[str, int]:
    """How many of the fact's templates are the paper's (published) and how many memqa's own."""
    published = published_count(fact["relation"], conf.templates) if conf.template_set == "published" else 0
    return {"published": published, "authored": conf.templates - published}
