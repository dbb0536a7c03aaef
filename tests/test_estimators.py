"""The cheap memory estimators (greedy_containment, rao_blackwell) against the exact containment probability.

P(a temperature-T sample of <= N tokens contains a gold answer) is computed exactly here, for a tiny model, by
expanding the tree of its completions (branches below 1e-5 pruned and bounded), so a lower bound and an
unbiased estimate can be checked without sampling noise on the reference side.

What the taught model learned depends on float rounding (CPU kernels, threads), so the tests assert what the
estimators guarantee against the exact value on that very model, and the facts are taught so that what the
checks need (a known fact, an answer after a detour, an intermediate probability) holds by design. Every
assertion on what training learned is a tiny.Margin from a function in MARGINS (benchmarks/training_margins.py
measures them over seeds and thread counts).
"""
import math
import statistics
from dataclasses import dataclass, field
from unittest import mock

import pytest
import torch

from memqa import engine, teacher_forcing
from memqa.config import Probe
from memqa.errors import MemqaError
from memqa.matching import contains
from memqa.meter import ComputeMeter
from memqa.probe import answer_variants, containment, greedy_containment, rao_blackwell, score_facts, trace_paths
from memqa.prompts import fill, templates_for
from tests import tiny

N_NEW = 8
CONF = Probe(method="sample", templates=5, samples=10, temperature=0.7, max_new_tokens=N_NEW, matcher="contains",
             level_bounds=[0.25, 0.5, 0.75], batch_size=64, chunk_size=4, seed=0, dtype="float32", rb_samples=2)
# greedy_containment and the exact tree read float32 logits of different batch shapes: they differ by ~1e-6
ROUNDING = 1e-5


@dataclass
class Taught:
    """The taught model, its fact groups, and the exact containment bounds computed so far (shared by tests)."""
    model: torch.nn.Module
    tokenizer: object
    often: list[dict]
    detour: list[dict]
    split: list[dict]
    never: list[dict]
    exact_cache: dict = field(default_factory=dict)

    @property
    def facts(self) -> list[dict]:
        return self.often + self.detour + self.split + self.never

    def exact(self, prompt: str, answers: list[str]) -> tuple[float, float]:
        key = (prompt, tuple(answers))
        if key not in self.exact_cache:
            self.exact_cache[key] = exact_contains(self.model, self.tokenizer, prompt, answers)
        return self.exact_cache[key]


def conf(**change) -> Probe:
    """CONF with some params changed, validated as params.yaml's would be."""
    return Probe.model_validate({**CONF.model_dump(), **change})


def build(seed: int = 0) -> Taught:
    """A tiny model taught 3 facts often (all 21 templates, 3 times: known), 3 only after a detour ('... the
    town of X', 5 templates, 6 times: P(starts with X) ~ 0, P(contains X) high), 2 split (5 templates, each with
    the answer and with another name equally often: P(contains the answer) intermediate by symmetry), 3 never."""
    facts = tiny.synthetic_facts(11)
    often, detour, split, never = facts[:3], facts[3:6], facts[6:8], facts[8:]
    texts = [s for f in often for s in tiny.statements(f, 21)] * 3
    texts += [f"{fill(t, f['subject'])} the town of {f['answers'][0]}" for f in detour
              for t in templates_for(f["relation"], 5)] * 6
    texts += [s for f in split for a in (f["answers"][0], tiny.other_answer(f)) for s in tiny.statements(f, 5, a)] * 3
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=96, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=300, seed=seed)
    return Taught(model.requires_grad_(False), tokenizer, often, detour, split, never)


@pytest.fixture(scope="module")
def taught() -> Taught:
    return build()


@torch.no_grad()
def exact_contains(model, tokenizer, prompt: str, answers: list[str], prune: float = 1e-5) -> tuple[float, float]:
    """(low, high) bounds of P(a T = 0.7 sample of <= N_NEW tokens contains an answer): every completion with
    probability above prune is followed to EOS, a match or N_NEW tokens; what was pruned is at most high - low."""
    stop = set(engine._stop_ids(model, tokenizer))
    base = tokenizer(prompt)["input_ids"]
    frontier, hit, lost = [([], 1.0)], 0.0, 0.0
    for _ in range(N_NEW):
        if not frontier:
            break
        logits = model(input_ids=torch.tensor([base + f for f, _ in frontier])).logits[:, -1]
        probs = teacher_forcing.tempered_logprobs(logits, 0.7).double().exp()
        following = []
        for (prefix, p), row in zip(frontier, probs, strict=True):
            keep = (row * p > prune).nonzero().flatten().tolist()
            lost += p * (1.0 - float(row[keep].sum()))
            for token in keep:
                q = p * float(row[token])
                if token in stop:
                    continue
                if contains(tokenizer.decode(prefix + [token], skip_special_tokens=True), answers):
                    hit += q
                else:
                    following.append((prefix + [token], q))
        frontier = following
    return hit, hit + lost


def _prompts(facts: list[dict], templates: int = 2) -> tuple[list[str], list[list[str]]]:
    prompts, answers = [], []
    for fact in facts:
        for template in templates_for(fact["relation"], templates):
            prompts.append(fill(template, fact["subject"]))
            answers.append(fact["answers"])
    return prompts, answers


def _worst(name: str, values: list[float], labels: list, threshold: float) -> tiny.Margin:
    """The largest of values (each must stay <= threshold), with the label of the prompt or fact it came from."""
    k = max(range(len(values)), key=values.__getitem__)
    return tiny.at_most(name, values[k], threshold, labels[k])


def greedy_scores_bracketed(w: Taught) -> list[tiny.Margin]:
    """score_facts' greedy_containment, per template: at least likelihood's start probability (its j = 0 terms
    and the greedy path hold every sample that starts with the answer), at most the exact containment (it is a
    lower bound of it); known facts score high and never-taught ones below sampling's resolution."""
    greedy = score_facts(w.model, w.tokenizer, w.facts, conf(templates=2), "greedy_containment", seed=0)
    start = score_facts(w.model, w.tokenizer, w.facts, conf(templates=2), "likelihood", seed=0)
    prompts, answers = _prompts(w.facts)
    exact_high = [w.exact(p, a)[1] for p, a in zip(prompts, answers, strict=True)]
    g = [x for row in greedy for x in row["template_prob"]]
    s = [x for row in start for x in row["template_prob"]]
    scores = {row["fact_id"]: row["score"] for row in greedy}
    return [_worst("likelihood - greedy_containment, worst template", [b - a for a, b in zip(g, s, strict=True)],
                   prompts, 1e-4),  # template_prob is rounded to 6 digits, the two computed in float32
            _worst("greedy_containment - exact upper bound, worst template",
                   [a - h for a, h in zip(g, exact_high, strict=True)], prompts, ROUNDING),
            tiny.at_least("greedy_containment score, least of the often-taught facts",
                          min(scores[f["fact_id"]] for f in w.often), 0.5),
            tiny.at_most("greedy_containment score, most of the never-taught facts",
                         max(scores[f["fact_id"]] for f in w.never), 1 / 50)]


def greedy_counts_detours(w: Taught) -> list[tiny.Margin]:
    """On facts taught only as '... the town of X', the start probability misses P(contains); the greedy path
    (through the detour) recovers most of it."""
    prompts, answers = _prompts(w.detour, templates=3)
    variants = [answer_variants(w.tokenizer, a) for a in answers]
    bound, _, _ = greedy_containment(w.model, w.tokenizer, prompts, variants, answers, CONF)
    start = [math.exp(x) for x in teacher_forcing.continuation_logprobs(w.model, w.tokenizer, prompts,
                                                                        [" " + a[0] for a in answers],
                                                                        temperature=0.7)]
    exact = [w.exact(p, a)[0] for p, a in zip(prompts, answers, strict=True)]
    gap = sum(exact) - sum(start)
    share = (sum(bound) - sum(start)) / gap if gap > 0 else 0.0
    return [tiny.at_least("exact - start probability, summed over the detour prompts", gap, 0.2),
            tiny.at_least("share of that gap greedy_containment recovers", share, 0.5)]


def _z(values: list[float], low: float, high: float) -> float:
    """How many standard errors the mean of unbiased estimates lies outside [low, high] (0 inside); 0.005 of
    slack for the edge cases rao_blackwell's docstring assumes away and for rounding (6 digits)."""
    mean, se = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    return max(low - mean, mean - high, 0.0) / (se + 0.005 / 4)


def rao_blackwell_unbiased(w: Taught) -> list[tiny.Margin]:
    """600 estimates per prompt: their mean within 4 standard errors of the exact containment (a guarantee
    up to sampling noise), on a known, a detour, a split (intermediate) and a never-taught fact."""
    prompts, answers = _prompts([w.often[0], w.detour[0], w.split[0], w.never[0]], templates=1)
    variants = [answer_variants(w.tokenizer, a) for a in answers]
    estimates, _ = rao_blackwell(w.model, w.tokenizer, prompts, variants, answers, CONF, samples=600, seed=3)
    z = [_z(values, *w.exact(prompt, answer)) for prompt, answer, values in zip(prompts, answers, estimates,
                                                                                    strict=True)]
    return [_worst("rao_blackwell mean's distance from the exact bounds in SE, worst prompt", z, prompts, 4)]


def horizon_is_a_cheaper_lower_bound(w: Taught) -> list[tiny.Margin]:
    """rb_max_new_tokens = H: samples decoded H tokens only; the estimate (of 'the answer begins before H') stays
    below the exact P(contains) and the full estimator's mean, and costs fewer decoding steps."""
    prompts, answers = _prompts([w.often[0], w.detour[0]], templates=1)
    variants = [answer_variants(w.tokenizer, a) for a in answers]
    with ComputeMeter(w.model) as full_cost:
        full, _ = rao_blackwell(w.model, w.tokenizer, prompts, variants, answers, CONF, samples=400, seed=5)
    with ComputeMeter(w.model) as cut_cost:
        cut, paths = rao_blackwell(w.model, w.tokenizer, prompts, variants, answers, conf(rb_max_new_tokens=2),
                                   samples=400, seed=5)
    assert all(len(path["tokens"]) <= 2 for rows in paths for path in rows)
    z = [_z(b, 0.0, min(w.exact(prompt, answer)[1], statistics.mean(a)))
         for prompt, answer, a, b in zip(prompts, answers, full, cut, strict=True)]
    return [_worst("horizon estimate above min(exact, full estimate), in SE, worst prompt", z, prompts, 4),
            tiny.at_least("full - horizon estimate on the detour fact (its answer comes after token 2)",
                          statistics.mean(full[1]) - statistics.mean(cut[1]), 0.05),
            tiny.at_least("output rows saved by the horizon", full_cost.head_rows - cut_cost.head_rows, 1)]


def rao_blackwell_mean_over_seeds(w: Taught) -> list[tiny.Margin]:
    """score_facts' rao_blackwell is unbiased: its mean over 25 seeds lies within 5 standard errors (over those
    seeds) of the fact's exact containment, averaged over its templates; the split fact makes it non-vacuous
    (a never-taught fact's, ~0 both, is rao_blackwell_unbiased's)."""
    facts = [w.often[0], w.detour[0], w.split[0]]
    runs = [score_facts(w.model, w.tokenizer, facts, conf(templates=3), "rao_blackwell", seed=seed)
            for seed in range(25)]
    z, exact = [], []
    for f, fact in enumerate(facts):
        prompts, answers = _prompts([fact], templates=3)
        bounds = [w.exact(p, a) for p, a in zip(prompts, answers, strict=True)]
        low, high = statistics.mean(b[0] for b in bounds), statistics.mean(b[1] for b in bounds)
        z.append(_z([run[f]["score"] for run in runs], low, high))
        exact.append(low)
    return [_worst("rao_blackwell mean over seeds: distance from the exact bounds in SE, worst fact", z,
                   [f["fact_id"] for f in facts], 5),  # 5, not 4: the SE is itself estimated from 25 runs
            tiny.at_least("exact containment of the split fact (intermediate: above)", exact[2], 0.1),
            tiny.at_most("exact containment of the split fact (intermediate: below)", exact[2], 0.9)]


def screen_splits_the_facts(w: Taught) -> list[tiny.Margin]:
    """With rb_screen_cut at level 0's resolution, a taught fact's best template's likelihood is above it and every
    template of a never-taught fact is below (so the screen test below is not vacuous)."""
    screened = conf(templates=3)
    cut = 1 / (screened.templates * screened.samples)
    start = score_facts(w.model, w.tokenizer, [w.often[0], w.never[0]], screened, "likelihood", seed=0)
    return [tiny.at_least("likelihood of a taught fact's best template, over the cut",
                          max(start[0]["template_prob"]), cut),
            tiny.at_most("likelihood of a never-taught fact's best template, under the cut",
                         max(start[1]["template_prob"]), cut)]


def test_answer_variants_are_prefix_free_with_and_without_a_leading_space(taught):
    tokenizer = taught.tokenizer
    name = taught.often[0]["answers"][0]
    variants = answer_variants(tokenizer, [name, f"{name} Kalo"])
    spaced = tuple(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
    bare = tuple(tokenizer(name, add_special_tokens=False)["input_ids"])
    assert spaced in variants and bare in variants
    assert all(v == o or v[:len(o)] != o for v in variants for o in variants)  # '<name> Kalo' implies '<name>'
    assert len(variants) == len(set(variants))


def test_greedy_containment_scores_lie_between_the_start_probability_and_the_exact_containment(taught):
    tiny.require(greedy_scores_bracketed(taught))


def test_greedy_containment_counts_answers_after_a_detour(taught):
    tiny.require(greedy_counts_detours(taught))


def test_rao_blackwell_is_unbiased_for_the_exact_containment_probability(taught):
    tiny.require(rao_blackwell_unbiased(taught))


def test_rao_blackwell_with_a_horizon_is_a_cheaper_lower_bound(taught):
    tiny.require(horizon_is_a_cheaper_lower_bound(taught))


def test_rao_blackwell_mean_over_seeds_matches_the_exact_containment(taught):
    tiny.require(rao_blackwell_mean_over_seeds(taught))


def test_screen_samples_only_templates_at_or_above_the_cut_and_keeps_the_others_likelihood(taught):
    tiny.require(screen_splits_the_facts(taught))
    facts = [taught.often[0], taught.never[0], taught.split[0]]
    plain, cut = conf(templates=3), 1 / 30
    start = score_facts(taught.model, taught.tokenizer, facts, plain, "likelihood", seed=5)
    alone = score_facts(taught.model, taught.tokenizer, facts, plain, "rao_blackwell", seed=5)
    rows = score_facts(taught.model, taught.tokenizer, facts, conf(templates=3, rb_screen_cut=cut), "rao_blackwell",
                       seed=5)
    for row, first, unscreened in zip(rows, start, alone, strict=True):
        for t, (value, below) in enumerate(zip(row["template_prob"], first["template_prob"], strict=True)):
            if below < cut:  # screened: its likelihood, unsampled
                assert value == below and row["sample_prob"][t] == []
            else:  # sampled: what the unscreened run draws for it (the same streams)
                assert value == pytest.approx(unscreened["template_prob"][t], abs=2e-6)
        assert row["screened_templates"] == sum(v < cut for v in first["template_prob"])
        assert row.get("screened_out", False) == all(v < cut for v in first["template_prob"])
    assert rows[1]["screened_out"] and rows[1]["score"] < 1 / 30  # the never-taught fact: level 0
    assert rows[0]["screened_templates"] < 3  # the taught one was sampled


def test_a_screen_cut_above_level_0s_resolution_is_refused():
    base = {**CONF.model_dump(), "method": "rao_blackwell", "templates": 21, "samples": 10}
    assert Probe.model_validate({**base, "rb_screen_cut": 1 / 210}).rb_screen_cut == 1 / 210
    assert Probe.model_validate(base).rb_screen_cut is None
    with pytest.raises(ValueError, match="above level 0's resolution 1/210"):
        Probe.model_validate({**base, "rb_screen_cut": 0.01})


def test_traced_sampling_draws_the_samplers_completions(taught):
    """Tracing only watches: the paths rao_blackwell follows are the sampler's completions for that seed,
    each stopped where its text first holds the answer."""
    model, tokenizer = taught.model, taught.tokenizer
    prompts, answers = _prompts([taught.often[0], taught.detour[0], taught.never[0]])
    variants = [answer_variants(tokenizer, a) for a in answers]
    traced = trace_paths(model, tokenizer, prompts, variants, answers, CONF, samples=4, temperature=0.7, seed=9)
    plain = engine.generate_ids(model, tokenizer, prompts, max_new_tokens=N_NEW, num_samples=4, temperature=0.7,
                                batch_size=64, seed=9, stop_when=lambda p, text: contains(text, answers[p]))
    assert [[path["tokens"] for path in paths] for paths in traced] == plain
    for paths, answer in zip(traced, answers, strict=True):
        for path in paths:
            assert len(path["first"]) == len(path["chosen"]) >= len(path["tokens"])
            if path["match"] is not None:
                assert path["match"] == len(path["tokens"]) == len(path["first"])
                assert contains(tokenizer.decode(path["tokens"]), answer)


def rao_blackwell_draws_its_own_samples(w: Taught) -> list[tiny.Margin]:
    """A crosscheck of rao_blackwell and sample under one seed compares independent draws, not the same
    completions twice: on the split fact (either name, by chance) independent draws differ somewhere."""
    saving = conf(templates=3, rb_samples=10, save_completions=True)
    sampled = score_facts(w.model, w.tokenizer, w.split[:1], saving, "sample", seed=4)[0]["completions"]
    traced = score_facts(w.model, w.tokenizer, w.split[:1], saving, "rao_blackwell", seed=4)[0]["completions"]
    again = score_facts(w.model, w.tokenizer, w.split[:1], saving, "rao_blackwell", seed=4)[0]["completions"]
    assert traced == again
    differ = sum(a != b for rows_a, rows_b in zip(sampled, traced, strict=True)
                 for a, b in zip(rows_a, rows_b, strict=True))
    return [tiny.at_least("completions that differ between sample and rao_blackwell", differ, 1)]


def test_rao_blackwell_draws_other_samples_than_the_sample_method_under_one_seed(taught):
    tiny.require(rao_blackwell_draws_its_own_samples(taught))


def greedy_path_floor(w: Taught) -> list[tiny.Margin]:
    """Below PATH_FLOOR the greedy path is dropped: fewer steps, a smaller (still valid) bound, and the mass left
    behind reported as slack. The floor is set from the model's own greedy paths, above the first-step
    probability of a path that never finds the answer (a never-taught fact's), so that it is crossed by design."""
    prompts, answers = _prompts([w.split[0], w.never[0]])
    variants = [answer_variants(w.tokenizer, a) for a in answers]
    full, _, full_paths = greedy_containment(w.model, w.tokenizer, prompts, variants, answers, CONF)
    lost = [math.exp(p["chosen"][0]) for p in full_paths if p["match"] is None and len(p["chosen"]) >= 2]
    floor = math.sqrt(min(lost, default=1.0))  # above that path's probability after its first token (< 1)
    with mock.patch.object(containment, "PATH_FLOOR", floor):
        cut, slack, cut_paths = greedy_containment(w.model, w.tokenizer, prompts, variants, answers, CONF)
    assert all(c <= f + ROUNDING for c, f in zip(cut, full, strict=True))  # other rows, other batch shapes
    halted = [(s, p["halted"]) for s, p in zip(slack, cut_paths, strict=True) if p["halted"] is not None]
    saved = sum(len(p["chosen"]) for p in full_paths) - sum(len(p["chosen"]) for p in cut_paths)
    margins = [tiny.at_least("greedy paths that never find the answer (>= 2 steps)", len(lost), 1)]
    if lost:  # then, by the floor's choice, that path halts at its first step
        assert halted and saved > 0 and all(0 < h < floor and s >= h for s, h in halted), (floor, halted)
    return margins


def test_greedy_containment_follows_a_path_only_while_it_is_likely(taught):
    tiny.require(greedy_path_floor(taught))


def estimator_costs(w: Taught) -> list[tiny.Margin]:
    """Forward work (ComputeMeter) on facts the model does not know: decoding steps (output-layer rows) fall
    with the paths followed, 1 or rb_samples = 2 instead of 10 per template; the prompt passes, which every
    method makes, weigh more in a tiny model with short completions. How short they are is learned (where
    EOS comes): the ratios' thresholds sit >= 20% below the least seen in benchmarks/training_margins.py."""
    flops, rows = {}, {}
    for method in ("sample", "likelihood", "greedy_containment", "rao_blackwell"):
        with ComputeMeter(w.model) as meter:
            score_facts(w.model, w.tokenizer, w.never, CONF, method, seed=0)
        flops[method], rows[method] = meter.flops, meter.head_rows
    return [tiny.at_least("flops greedy_containment / likelihood",
                          flops["greedy_containment"] / flops["likelihood"], 1),
            tiny.at_least("flops rao_blackwell / greedy_containment",
                          flops["rao_blackwell"] / flops["greedy_containment"], 1),
            tiny.at_least("flops sample / rao_blackwell", flops["sample"] / flops["rao_blackwell"], 2),
            tiny.at_least("flops sample / greedy_containment", flops["sample"] / flops["greedy_containment"], 2.5),
            tiny.at_least("output rows sample / greedy_containment", rows["sample"] / rows["greedy_containment"], 5),
            tiny.at_least("output rows sample / rao_blackwell", rows["sample"] / rows["rao_blackwell"], 3)]


def test_estimators_cost_a_fraction_of_sampling(taught):
    tiny.require(estimator_costs(taught))


def test_compute_meter_counts_padded_tokens_and_output_rows(taught):
    model, tokenizer = taught.model, taught.tokenizer
    with ComputeMeter(model) as meter:
        teacher_forcing.teacher_forced_logprobs(model, tokenizer.pad_token_id, [[2, 10, 11, 12], [2, 13]],
                                                [[14, 15], [16]], temperature=0.7)
    assert (meter.tokens, meter.head_rows, meter.calls) == (2 * 6, 3, 1)
    assert meter.flops == 2 * (meter.body_params * 12 + meter.head_params * 3)
    with ComputeMeter(model) as meter:
        out = engine.generate_ids(model, tokenizer, ["a b", "a b c d"], max_new_tokens=3, temperature=0.0)
    decoded = sum(len(row[0]) >= t for row in out for t in (1, 2))  # rows fed back at steps 1 and 2 (EOS: left)
    assert meter.head_rows == 2 + decoded  # the prompt pass keeps only the last position's logits
    assert meter.tokens == 2 * len(tokenizer("a b c d")["input_ids"]) + decoded


def test_teacher_forced_logprobs_match_one_plain_forward_pass_per_pair(taught):
    """The likelihood method's arithmetic (now teacher_forced_logprobs): batched, padded, head only at the
    continuation's positions, equal to a plain pass over each sequence alone."""
    model, tokenizer = taught.model, taught.tokenizer
    contexts, continuations = [[2, 10, 11, 12, 40], [2, 13]], [[14, 15, 30], [16]]
    batched = teacher_forcing.teacher_forced_logprobs(model, tokenizer.pad_token_id, contexts, continuations,
                                                      temperature=0.7)
    for ctx, cont, value in zip(contexts, continuations, batched, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
        logprobs = torch.log_softmax(logits.float() / 0.7, -1)
        expected = sum(float(logprobs[len(ctx) - 1 + k, token]) for k, token in enumerate(cont))
        assert value == pytest.approx(expected, abs=1e-4)


def test_params_schema_takes_the_new_methods_and_rb_samples():
    base = {"templates": 21, "samples": 10, "temperature": 0.7, "max_new_tokens": 32, "matcher": "contains",
            "level_bounds": [0.25, 0.5, 0.75], "batch_size": 64, "chunk_size": 50, "seed": 0}
    for method in ("sample", "likelihood", "greedy_containment", "rao_blackwell"):
        assert Probe.model_validate({**base, "method": method}).rb_samples == 2
    assert Probe.model_validate({**base, "method": "rao_blackwell", "rb_max_new_tokens": 16}).rb_max_new_tokens == 16
    with pytest.raises(ValueError):
        Probe.model_validate({**base, "method": "rao_blackwell", "rb_samples": 0})
    with pytest.raises(ValueError):
        Probe.model_validate({**base, "method": "greedy"})


def test_crosscheck_of_a_cheap_method_runs_the_sampler(taught, tmp_path):
    import json

    from memqa.paths import TEMPLATES_FILE
    from memqa.probe import run_probe

    model, tokenizer = taught.model, taught.tokenizer
    path = tiny.save(model, tokenizer, tmp_path / "model")
    facts = taught.facts
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    checked = conf(method="rao_blackwell", templates=3, samples=4, crosscheck_facts=4)
    rows, metrics = run_probe("tiny", checked, facts, path, tmp_path / "cache", TEMPLATES_FILE,
                              tmp_path / "facts.jsonl")
    assert metrics["crosscheck"]["other_method"] == "sample" and metrics["crosscheck"]["facts"] == 4
    assert {r["method"] for r in rows} == {"rao_blackwell"} and all("level" in r for r in rows)
    with pytest.raises(MemqaError):
        run_probe("tiny", checked.model_copy(update={"method": "greedy"}), facts, path, tmp_path / "cache",
                  TEMPLATES_FILE, tmp_path / "facts.jsonl")


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(seed)).
MARGINS = [greedy_scores_bracketed, greedy_counts_detours, rao_blackwell_unbiased,
           horizon_is_a_cheaper_lower_bound, rao_blackwell_mean_over_seeds, rao_blackwell_draws_its_own_samples,
           greedy_path_floor, estimator_costs, screen_splits_the_facts]


def test_screen_metrics_count_the_facts_and_templates_sent_on_per_group():
    from memqa.probe.run import screen_metrics

    rows = [{"group": "train", "template_prob": [0.1, 0.0, 0.0], "screened_templates": 2},
            {"group": "train", "template_prob": [0.0, 0.0, 0.0], "screened_templates": 3, "screened_out": True},
            {"group": "test_id", "template_prob": [0.2, 0.3, 0.1], "screened_templates": 0}]
    metrics = screen_metrics(rows, 1e-5)
    assert metrics["cut"] == 1e-5
    assert (metrics["sent_on"]["train"], metrics["facts"]["train"]) == (1, 2)
    assert (metrics["templates_sent_on"]["train"], metrics["templates"]["train"]) == (1, 6)
    assert (metrics["templates_sent_on"]["test_id"], metrics["templates_sent_on"]["test_ood"]) == (3, 0)
