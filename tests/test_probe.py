import json
import statistics
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from memqa import probing
from memqa.engine import generate
from memqa.memory import add_levels, memory_level
from memqa.paths import RELATIONS_FILE, TEMPLATES_FILE
from memqa.probing import probe_sharded, run_probe, score_facts
from memqa.prompts import probe_templates
from tests import tiny

PROBE = {"method": "likelihood", "templates": 21, "samples": 10, "temperature": 0.7, "max_new_tokens": 8,
         "matcher": "contains", "level_bounds": [0.25, 0.5, 0.75], "batch_size": 16, "chunk_size": 4, "seed": 0,
         "dtype": "float32", "save_completions": False, "crosscheck_facts": 0}


def build(root: Path, seed: int = 0) -> tuple[Path, list[dict], list[dict], list[dict]]:
    """A tiny model taught 6 facts often (all 21 templates, 3 times), 6 split (all 21 templates, as often with
    the answer as with another name: P(the answer) intermediate by symmetry, whatever the float rounding), 6
    never. Saved under root; returns (path, often, split, never)."""
    facts = tiny.synthetic_facts(18)
    often, split, never = facts[:6], facts[6:12], facts[12:]
    texts = [s for f in often for s in tiny.statements(f, 21)] * 3
    texts += [s for f in split for a in (f["answers"][0], tiny.other_answer(f)) for s in tiny.statements(f, 21, a)]
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=96, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=500, seed=seed)
    return tiny.save(model, tokenizer, root / "model"), often, split, never


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> tuple[Path, list[dict], list[dict], list[dict]]:
    return build(tmp_path_factory.mktemp("tiny"))


def probe_scores_follow_teaching(taught: tuple) -> list[tiny.Margin]:
    """run_probe's scores, likelihood and sample: facts whose answer was always taught score high (level >= 3),
    those taught with it half the time in between, never-taught ones at level 0 (below the resolution)."""
    path, often, split, never = taught
    facts = often + split + never
    root = Path(tempfile.mkdtemp(dir=path.parent))
    (root / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    margins = []
    for method in ("likelihood", "sample"):
        conf = {**PROBE, "method": method, "samples": 3, "templates": 7}
        scored, _ = run_probe("tiny", conf, facts, path, root / "cache", TEMPLATES_FILE, root / "facts.jsonl")
        score = {r["fact_id"]: r["score"] for r in scored}
        mean = {name: statistics.mean(score[f["fact_id"]] for f in group)
                for name, group in (("often", often), ("split", split), ("never", never))}
        margins += [tiny.at_least(f"{method}: mean score of the often-taught facts", mean["often"], 0.6),
                    tiny.at_least(f"{method}: often - split mean score", mean["often"] - mean["split"], 0.05),
                    tiny.at_least(f"{method}: split - never mean score", mean["split"] - mean["never"], 0.05),
                    tiny.at_least(f"{method}: least score of an often-taught fact (level >= 3 above 0.5)",
                                  min(score[f["fact_id"]] for f in often), 0.5 + 1e-9),
                    tiny.at_most(f"{method}: most score of a never-taught fact (level 0 below 1/21)",
                                 max(score[f["fact_id"]] for f in never), 1 / 21 - 1e-9)]
    return margins


def test_probe_scores_follow_how_often_the_answer_was_taught(taught):
    tiny.require(probe_scores_follow_teaching(taught))


def greedy_labels_ignore_batch_size(taught: tuple) -> list[tiny.Margin]:
    path, often, split, never = taught
    model, tokenizer = _load(path)
    facts = often[:3] + split[:3] + never[:3]
    conf = {**PROBE, "method": "sample", "temperature": 0.0, "templates": 5}
    one = score_facts(model, tokenizer, facts, {**conf, "batch_size": 1}, "sample", seed=0)
    many = score_facts(model, tokenizer, facts, {**conf, "batch_size": 7}, "sample", seed=0)
    assert one == many
    return [tiny.at_least("greedy probe: summed score (known facts found)", sum(r["score"] for r in one), 0.2)]


def test_greedy_probe_labels_do_not_depend_on_batch_size(taught):
    tiny.require(greedy_labels_ignore_batch_size(taught))


def test_sampling_is_reproducible_for_the_same_params(taught):
    path, often, _, _ = taught
    model, tokenizer = _load(path)
    prompts = ["Kalomi was born in", "The birthplace of Kalomi is"]
    first = generate(model, tokenizer, prompts, max_new_tokens=6, num_samples=4, temperature=1.0, seed=3)
    again = generate(model, tokenizer, prompts, max_new_tokens=6, num_samples=4, temperature=1.0, seed=3)
    other = generate(model, tokenizer, prompts, max_new_tokens=6, num_samples=4, temperature=1.0, seed=4)
    assert first == again and first != other and all(len(s) == 4 for s in first)


def test_killed_probe_resumes_to_the_uninterrupted_result(taught, tmp_path, monkeypatch):
    path, often, split, never = taught
    model, tokenizer = _load(path)
    facts = often + split + never
    conf = {**PROBE, "method": "sample", "samples": 2, "templates": 3, "chunk_size": 4}
    whole, _ = probe_sharded(model, tokenizer, facts, conf, tmp_path / "whole")
    real, calls = probing.score_facts, []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probing, "score_facts", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        probe_sharded(model, tokenizer, facts, conf, tmp_path / "killed")
    assert len(list((tmp_path / "killed").glob("*.jsonl"))) == 2
    monkeypatch.setattr(probing, "score_facts", real)
    assert probe_sharded(model, tokenizer, facts, conf, tmp_path / "killed") == (whole, 2)


@pytest.mark.parametrize(("score", "level"), [(0.0, 0), (0.004, 0), (1 / 210, 1), (0.25, 1), (0.2501, 2),
                                              (0.5, 2), (0.75, 3), (0.76, 4), (1.0, 4)])
def test_level_thresholds_follow_the_paper(score, level):
    assert memory_level(score, [0.25, 0.5, 0.75], resolution=1 / 210) == level


def test_likelihood_level_zero_is_below_sampling_resolution():
    rows = [{"score": 0.004}, {"score": 0.005}]
    add_levels(rows, {"templates": 21, "samples": 10, "level_bounds": [0.25, 0.5, 0.75]})
    assert [r["level"] for r in rows] == [0, 1]


def test_probe_templates_are_21_unique_per_relation_with_one_subject():
    templates = probe_templates(TEMPLATES_FILE)
    relations = yaml.safe_load(RELATIONS_FILE.read_text())
    assert list(templates) == list(relations)
    for relation, items in templates.items():
        assert len(items) == 21 and len({" ".join(t.lower().split()) for t in items}) == 21, relation
        for template in items:
            assert template.count("{subject}") == 1 and template == template.strip(), template
            assert not template.endswith("?")


def _load(path):
    from memqa.models import load_model

    model, tokenizer = load_model(path, "float32")
    torch.manual_seed(0)
    return model, tokenizer


def test_probe_fingerprint_ignores_materialisation_time_but_not_params(taught, tmp_path):
    path, *_ = taught
    facts, templates = tmp_path / "facts.jsonl", tmp_path / "templates.yaml"
    facts.write_text("{}\n")
    templates.write_text("P19: []\n")
    first = probing.fingerprint(PROBE, path, facts, templates)
    info = json.loads((path / "memqa_model.json").read_text())
    (path / "memqa_model.json").write_text(json.dumps({**info, "wall_s": 99.0}))
    assert probing.fingerprint(PROBE, path, facts, templates) == first
    assert probing.fingerprint({**PROBE, "samples": 5}, path, facts, templates) != first


def test_probe_fingerprint_covers_scoring_code_and_weights(taught, tmp_path, monkeypatch):
    path, *_ = taught
    facts, templates = tmp_path / "facts.jsonl", tmp_path / "templates.yaml"
    facts.write_text("{}\n")
    templates.write_text("P19: []\n")
    first = probing.fingerprint(PROBE, path, facts, templates)
    code = [tmp_path / p.name for p in probing.SCORING_CODE]
    for src, dst in zip(probing.SCORING_CODE, code, strict=True):
        dst.write_bytes(src.read_bytes())
    monkeypatch.setattr(probing, "SCORING_CODE", tuple(code))
    assert probing.fingerprint(PROBE, path, facts, templates) == first
    matching = next(p for p in code if p.name == "matching.py")
    matching.write_text(matching.read_text() + "\n# one more line\n")
    assert probing.fingerprint(PROBE, path, facts, templates) != first
    assert {p.name for p in probing.SCORING_CODE} == {"engine.py", "matching.py", "models.py", "probing.py",
                                                      "prompts.py"}  # config, levels, IO: not scoring code


def test_probe_fingerprint_changes_when_weights_are_retrained_in_place(taught, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path, *_ = taught
    model_dir = tmp_path / "model"
    shutil.copytree(path, model_dir)
    facts, templates = tmp_path / "facts.jsonl", tmp_path / "templates.yaml"
    facts.write_text("{}\n")
    templates.write_text("P19: []\n")
    first = probing.fingerprint(PROBE, model_dir, facts, templates)
    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert probing.fingerprint(PROBE, model_dir, facts, templates) != first


def test_crosscheck_is_keyed_by_its_own_facts_and_wall_time_counts_reused_shards(taught, tmp_path):
    path, often, split, never = taught
    facts = often + split + never
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    conf = {**PROBE, "templates": 3, "samples": 2, "max_new_tokens": 4}
    args = (path, tmp_path / "cache", TEMPLATES_FILE, tmp_path / "facts.jsonl")
    _, first = run_probe("tiny", {**conf, "crosscheck_facts": 3}, facts, *args)
    _, second = run_probe("tiny", {**conf, "crosscheck_facts": 6}, facts, *args)
    assert first["crosscheck"]["facts"] == 3 and second["crosscheck"]["facts"] == 6
    assert first["shards_reused"] == 0 and second["shards_reused"] == second["shards"] > 0
    assert second["wall_s"] > 0


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(root, seed)).
MARGINS = [probe_scores_follow_teaching, greedy_labels_ignore_batch_size]
