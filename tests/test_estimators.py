"""The cheap memory estimators (greedy_containment, rao_blackwell) against the exact containment probability.

P(a temperature-T sample of <= N tokens contains a gold answer) is computed exactly here, for a tiny model, by
expanding the tree of its completions (branches below 1e-6 pruned and bounded), so a lower bound and an
unbiased estimate can be checked without sampling noise on the reference side.
"""
import math
import statistics

import pytest
import torch

from memqa import engine, probing
from memqa.config import Probe
from memqa.errors import MemqaError
from memqa.matching import contains
from memqa.probing import answer_variants, greedy_containment, rao_blackwell, run_probe, score_facts, trace_paths
from memqa.prompts import fill, templates_for
from tests import tiny

N_NEW = 8
CONF = {"method": "sample", "templates": 5, "samples": 10, "temperature": 0.7, "max_new_tokens": N_NEW,
        "matcher": "contains", "level_bounds": [0.25, 0.5, 0.75], "batch_size": 64, "chunk_size": 4, "seed": 0,
        "dtype": "float32", "save_completions": False, "crosscheck_facts": 0, "rb_samples": 2}


@pytest.fixture(scope="module")
def taught():
    """A tiny model taught 3 facts often (all 21 templates), 3 rarely (2 templates), 3 never; the taught ones
    also after a detour ('... born in the town of X'), so that a completion often holds the answer later
    than its first word: P(contains) is then well above P(starts with)."""
    facts = tiny.synthetic_facts(9)
    often, rarely, never = facts[:3], facts[3:6], facts[6:]
    texts = [s for f in often for s in tiny.statements(f, 21)] * 3 + [s for f in rarely for s in tiny.statements(f, 2)]
    texts += [f"{fill(t, f['subject'])} the town of {f['answers'][0]}" for f in often + rarely
              for t in templates_for(f["relation"], 5)]
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=96, layers=2)
    tiny.teach(model, tokenizer, texts, steps=300)
    return model.requires_grad_(False), tokenizer, often, rarely, never


@torch.no_grad()
def exact_contains(model, tokenizer, prompt: str, answers: list[str], prune: float = 1e-6) -> tuple[float, float]:
    """(low, high) bounds of P(a T = 0.7 sample of <= N_NEW tokens contains an answer): every completion with
    probability above prune is followed to EOS, a match or N_NEW tokens; what was pruned is at most high - low."""
    stop = set(engine._stop_ids(model, tokenizer))
    base = tokenizer(prompt)["input_ids"]
    frontier, hit, lost = [([], 1.0)], 0.0, 0.0
    for _ in range(N_NEW):
        if not frontier:
            break
        logits = model(input_ids=torch.tensor([base + f for f, _ in frontier])).logits[:, -1]
        probs = engine.tempered_logprobs(logits, 0.7).double().exp()
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


def test_answer_variants_are_prefix_free_with_and_without_a_leading_space(taught):
    tokenizer = taught[1]
    name = taught[2][0]["answers"][0]
    variants = answer_variants(tokenizer, [name, f"{name} Kalo"])
    spaced = tuple(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
    bare = tuple(tokenizer(name, add_special_tokens=False)["input_ids"])
    assert spaced in variants and bare in variants
    assert all(v == o or v[:len(o)] != o for v in variants for o in variants)  # '<name> Kalo' implies '<name>'
    assert len(variants) == len(set(variants))


def test_greedy_containment_never_exceeds_the_exact_containment_probability(taught):
    model, tokenizer, often, rarely, never = taught
    prompts, answers = _prompts(often + rarely + never)
    variants = [answer_variants(tokenizer, a) for a in answers]
    bound, _, _ = greedy_containment(model, tokenizer, prompts, variants, answers, CONF)
    for prompt, answer, value in zip(prompts, answers, bound, strict=True):
        low, high = exact_contains(model, tokenizer, prompt, answer)
        assert value <= high + 1e-9, (prompt, value, low, high)
    assert max(bound) > 0.5  # not vacuous


def test_greedy_containment_is_at_least_the_start_probability(taught):
    """Its j = 0 terms and the greedy path itself hold every sample that starts with the answer."""
    model, tokenizer, often, rarely, never = taught
    facts = often + rarely + never
    conf = {**CONF, "templates": 3}
    greedy = score_facts(model, tokenizer, facts, conf, "greedy_containment", seed=0)
    start = score_facts(model, tokenizer, facts, conf, "likelihood", seed=0)
    for g, s in zip(greedy, start, strict=True):
        for a, b in zip(g["template_prob"], s["template_prob"], strict=True):
            assert a >= b - 1e-4, (g["fact_id"], a, b)


def test_greedy_containment_counts_answers_after_a_detour(taught):
    """Where the answer mostly comes after 'the town of', the start probability misses most of P(contains);
    greedy containment recovers most of it."""
    model, tokenizer, _, rarely, _ = taught
    prompts, answers = _prompts(rarely, templates=3)
    variants = [answer_variants(tokenizer, a) for a in answers]
    bound, _, _ = greedy_containment(model, tokenizer, prompts, variants, answers, CONF)
    start = [math.exp(x) for x in engine.continuation_logprobs(model, tokenizer, prompts, [" " + a[0] for a in answers],
                                                               temperature=0.7)]
    exact = [exact_contains(model, tokenizer, p, a)[0] for p, a in zip(prompts, answers, strict=True)]
    assert sum(bound) - sum(start) > 0.5 * (sum(exact) - sum(start)) > 0.1, (bound, start, exact)


def test_rao_blackwell_is_unbiased_for_the_exact_containment_probability(taught):
    model, tokenizer, often, rarely, never = taught
    prompts, answers = _prompts([often[0], rarely[0], rarely[1], never[0]], templates=1)
    variants = [answer_variants(tokenizer, a) for a in answers]
    estimates, _ = rao_blackwell(model, tokenizer, prompts, variants, answers, CONF, samples=600, seed=3)
    for prompt, answer, values in zip(prompts, answers, estimates, strict=True):
        low, high = exact_contains(model, tokenizer, prompt, answer)
        mean, se = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
        assert low - 4 * se - 0.005 <= mean <= high + 4 * se + 0.005, (prompt, mean, se, low, high)


def test_rao_blackwell_with_a_horizon_is_a_cheaper_lower_bound(taught):
    """rb_max_new_tokens = H: samples decoded H tokens only; the estimate (of 'the answer begins before H') stays
    below the exact P(contains) and the full estimator's mean, and costs fewer decoding steps."""
    model, tokenizer, often, rarely, _ = taught
    prompts, answers = _prompts([often[0], rarely[0]], templates=1)
    variants = [answer_variants(tokenizer, a) for a in answers]
    with engine.ComputeMeter(model) as full_cost:
        full, _ = rao_blackwell(model, tokenizer, prompts, variants, answers, CONF, samples=400, seed=5)
    with engine.ComputeMeter(model) as cut_cost:
        cut, paths = rao_blackwell(model, tokenizer, prompts, variants, answers, {**CONF, "rb_max_new_tokens": 2},
                                   samples=400, seed=5)
    assert all(len(path["tokens"]) <= 2 for rows in paths for path in rows)
    assert cut_cost.head_rows < full_cost.head_rows
    for prompt, answer, a, b in zip(prompts, answers, full, cut, strict=True):
        low, high = exact_contains(model, tokenizer, prompt, answer)
        se = statistics.stdev(b) / math.sqrt(len(b))
        assert statistics.mean(b) <= min(high, statistics.mean(a)) + 4 * se + 0.005, (prompt, a, b, high)
    assert statistics.mean(cut[1]) < statistics.mean(full[1]) - 0.05  # the detour answers come after token 2


def test_rao_blackwell_mean_over_seeds_approaches_sampling_R(taught):
    model, tokenizer, often, rarely, never = taught
    facts = [often[0], rarely[0], rarely[2], never[0]]
    conf = {**CONF, "templates": 3}
    sampled = score_facts(model, tokenizer, facts, {**conf, "samples": 300}, "sample", seed=0)
    runs = [score_facts(model, tokenizer, facts, conf, "rao_blackwell", seed=seed) for seed in range(25)]
    for f, row in enumerate(sampled):
        mean = statistics.mean(run[f]["score"] for run in runs)
        assert abs(mean - row["score"]) < 0.08, (row["fact_id"], mean, row["score"])
    assert sampled[0]["score"] > 0.5 and 0.05 < sampled[1]["score"] < 0.95  # known and half-known facts present


@pytest.mark.parametrize("method", ["greedy_containment", "rao_blackwell"])
def test_estimators_rank_often_above_rarely_above_never(taught, method):
    model, tokenizer, often, rarely, never = taught
    rows = score_facts(model, tokenizer, often + rarely + never, CONF, method, seed=0)
    mean = [statistics.mean(r["score"] for r in rows[k:k + 3]) for k in (0, 3, 6)]
    assert mean[0] > mean[1] > mean[2], mean
    assert all(r["score"] < 1 / 50 for r in rows[6:]), [r["score"] for r in rows[6:]]


def test_traced_sampling_draws_the_samplers_completions(taught):
    """Tracing only watches: the paths rao_blackwell follows are the sampler's completions for that seed,
    each stopped where its text first holds the answer."""
    model, tokenizer, often, rarely, never = taught
    prompts, answers = _prompts([often[0], rarely[0], never[0]])
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


def test_rao_blackwell_draws_other_samples_than_the_sample_method_under_one_seed(taught):
    """A crosscheck of the two under one seed compares independent draws, not the same completions twice."""
    model, tokenizer, _, rarely, _ = taught
    conf = {**CONF, "templates": 3, "rb_samples": 10, "save_completions": True}
    sampled = score_facts(model, tokenizer, rarely[:1], conf, "sample", seed=4)[0]["completions"]
    traced = score_facts(model, tokenizer, rarely[:1], conf, "rao_blackwell", seed=4)[0]["completions"]
    again = score_facts(model, tokenizer, rarely[:1], conf, "rao_blackwell", seed=4)[0]["completions"]
    assert traced == again and traced != sampled


def test_greedy_containment_follows_a_path_only_while_it_is_likely(taught, monkeypatch):
    """Below PATH_FLOOR the greedy path is dropped: fewer steps, a smaller (still valid) bound, and the mass left
    behind reported as slack."""
    model, tokenizer, _, rarely, never = taught
    prompts, answers = _prompts([rarely[0], never[0]])
    variants = [answer_variants(tokenizer, a) for a in answers]
    full, _, full_paths = greedy_containment(model, tokenizer, prompts, variants, answers, CONF)
    monkeypatch.setattr(probing, "PATH_FLOOR", 0.3)
    cut, slack, cut_paths = greedy_containment(model, tokenizer, prompts, variants, answers, CONF)
    assert sum(len(p["chosen"]) for p in cut_paths) < sum(len(p["chosen"]) for p in full_paths)
    assert all(c <= f + 1e-9 for c, f in zip(cut, full, strict=True))
    halted = [(s, p["halted"]) for s, p in zip(slack, cut_paths, strict=True) if p["halted"] is not None]
    assert halted and all(0 < h < 0.3 and s >= h for s, h in halted), halted


def test_estimators_cost_a_fraction_of_sampling(taught):
    """Forward work (ComputeMeter) on facts the model does not know, where every sample runs to full length:
    decoding steps (output-layer rows) fall with the paths followed, 1 or rb_samples = 2 instead of 10 per
    template; the prompt passes, which every method makes, weigh more in a tiny model with short completions."""
    model, tokenizer, _, _, never = taught
    flops, rows = {}, {}
    for method in ("sample", "likelihood", "greedy_containment", "rao_blackwell"):
        with engine.ComputeMeter(model) as meter:
            score_facts(model, tokenizer, never, CONF, method, seed=0)
        flops[method], rows[method] = meter.flops, meter.head_rows
    assert flops["likelihood"] < flops["greedy_containment"] < flops["rao_blackwell"] < flops["sample"], flops
    assert rows["greedy_containment"] * 5 < rows["sample"] and rows["rao_blackwell"] * 3 < rows["sample"], rows
    assert flops["greedy_containment"] * 3 < flops["sample"] and flops["rao_blackwell"] * 2 < flops["sample"], flops


def test_compute_meter_counts_padded_tokens_and_output_rows(taught):
    model, tokenizer = taught[0], taught[1]
    with engine.ComputeMeter(model) as meter:
        engine.teacher_forced_logprobs(model, tokenizer.pad_token_id, [[2, 10, 11, 12], [2, 13]], [[14, 15], [16]],
                                       temperature=0.7)
    assert (meter.tokens, meter.head_rows, meter.calls) == (2 * 6, 3, 1)
    assert meter.flops == 2 * (meter.body_params * 12 + meter.head_params * 3)
    with engine.ComputeMeter(model) as meter:
        out = engine.generate_ids(model, tokenizer, ["a b", "a b c d"], max_new_tokens=3, temperature=0.0)
    decoded = sum(len(row[0]) >= t for row in out for t in (1, 2))  # rows fed back at steps 1 and 2 (EOS: left)
    assert meter.head_rows == 2 + decoded  # the prompt pass keeps only the last position's logits
    assert meter.tokens == 2 * len(tokenizer("a b c d")["input_ids"]) + decoded


def test_teacher_forced_logprobs_match_one_plain_forward_pass_per_pair(taught):
    """The likelihood method's arithmetic (now teacher_forced_logprobs): batched, padded, head only at the
    continuation's positions, equal to a plain pass over each sequence alone."""
    model, tokenizer = taught[0], taught[1]
    contexts, continuations = [[2, 10, 11, 12, 40], [2, 13]], [[14, 15, 30], [16]]
    batched = engine.teacher_forced_logprobs(model, tokenizer.pad_token_id, contexts, continuations, temperature=0.7)
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

    model, tokenizer, often, rarely, never = taught
    path = tiny.save(model, tokenizer, tmp_path / "model")
    facts = often + rarely + never
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    conf = {**CONF, "method": "rao_blackwell", "templates": 3, "samples": 4, "crosscheck_facts": 4}
    rows, metrics = run_probe("tiny", conf, facts, path, tmp_path / "cache", TEMPLATES_FILE, tmp_path / "facts.jsonl")
    assert metrics["crosscheck"]["other_method"] == "sample" and metrics["crosscheck"]["facts"] == 4
    assert {r["method"] for r in rows} == {"rao_blackwell"} and all("level" in r for r in rows)
    with pytest.raises(MemqaError):
        run_probe("tiny", {**conf, "method": "greedy"}, facts, path, tmp_path / "cache", TEMPLATES_FILE,
                  tmp_path / "facts.jsonl")
