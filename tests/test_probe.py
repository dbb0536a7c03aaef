import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml

from memqa.config import PROBE_METHOD, Probe
from memqa.memory import add_levels, memory_level
from memqa.paths import RELATIONS_FILE, TEMPLATES_FILE
from memqa.probe import ESTIMATORS, estimators, probe_sharded, run_probe, score_facts, shards
from memqa.prompts import probe_templates
from tests import tiny

PROBE = Probe(method="likelihood", templates=21, samples=10, temperature=0.7, max_new_tokens=8, matcher="contains",
              level_bounds=[0.25, 0.5, 0.75], batch_size=16, chunk_size=4, seed=0, dtype="float32")


def probe(**change) -> Probe:
    """PROBE with some params changed, validated as params.yaml's would be."""
    return Probe.model_validate({**PROBE.model_dump(), **change})


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
        conf = probe(method=method, samples=3, templates=7)
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
    one = score_facts(model, tokenizer, facts, probe(method="sample", temperature=0.0, templates=5, batch_size=1),
                      "sample", seed=0)
    many = score_facts(model, tokenizer, facts, probe(method="sample", temperature=0.0, templates=5, batch_size=7),
                       "sample", seed=0)
    assert one == many
    return [tiny.at_least("greedy probe: summed score (known facts found)", sum(r["score"] for r in one), 0.2)]


def test_greedy_probe_labels_do_not_depend_on_batch_size(taught):
    tiny.require(greedy_labels_ignore_batch_size(taught))


def test_killed_probe_resumes_to_the_uninterrupted_result(taught, tmp_path, monkeypatch):
    path, often, split, never = taught
    model, tokenizer = _load(path)
    facts = often + split + never
    conf = probe(method="sample", samples=2, templates=3, chunk_size=4)
    whole, _ = probe_sharded(model, tokenizer, facts, conf, tmp_path / "whole")
    real, calls = estimators.score_facts, []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(estimators, "score_facts", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        probe_sharded(model, tokenizer, facts, conf, tmp_path / "killed")
    assert len(list((tmp_path / "killed").glob("*.jsonl"))) == 2
    monkeypatch.setattr(estimators, "score_facts", real)
    assert probe_sharded(model, tokenizer, facts, conf, tmp_path / "killed") == (whole, 2)


@pytest.mark.parametrize(("score", "level"), [(0.0, 0), (0.004, 0), (1 / 210, 1), (0.25, 1), (0.2501, 2),
                                              (0.5, 2), (0.75, 3), (0.76, 4), (1.0, 4)])
def test_level_thresholds_follow_the_paper(score, level):
    assert memory_level(score, [0.25, 0.5, 0.75], resolution=1 / 210) == level


def test_likelihood_level_zero_is_below_sampling_resolution():
    rows = [{"score": 0.004}, {"score": 0.005}]
    add_levels(rows, probe(templates=21, samples=10, level_bounds=[0.25, 0.5, 0.75]))
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


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    facts, templates = tmp_path / "facts.jsonl", tmp_path / "templates.yaml"
    facts.write_text("{}\n")
    templates.write_text("P19: []\n")
    return facts, templates


def test_probe_fingerprint_ignores_materialisation_time_but_not_params(taught, tmp_path):
    path, *_ = taught
    model_dir = tmp_path / "model"
    shutil.copytree(path, model_dir)
    facts, templates = _inputs(tmp_path)
    first = shards.fingerprint(PROBE, model_dir, facts, templates)
    info = json.loads((model_dir / "memqa_model.json").read_text())
    (model_dir / "memqa_model.json").write_text(json.dumps({**info, "wall_s": 99.0}))
    assert shards.fingerprint(PROBE, model_dir, facts, templates) == first
    assert shards.fingerprint(probe(level_bounds=[0.5], crosscheck_facts=3), model_dir, facts, templates) == first
    assert shards.fingerprint(probe(rb_samples=5), model_dir, facts, templates) == first  # rao_blackwell's own
    assert shards.fingerprint(probe(samples=5), model_dir, facts, templates) != first
    accepted = [["United States of America", "USA"]]  # matching.synonyms changes what the probe counts
    assert shards.fingerprint(PROBE, model_dir, facts, templates, accepted=accepted) != first
    rb = probe(method="rao_blackwell")
    assert shards.fingerprint(probe(method="rao_blackwell", rb_samples=5), model_dir, facts, templates) != \
        shards.fingerprint(rb, model_dir, facts, templates)


def test_probe_fingerprint_covers_scoring_code(taught, tmp_path, monkeypatch):
    path, *_ = taught
    facts, templates = _inputs(tmp_path)
    first = shards.fingerprint(PROBE, path, facts, templates)
    code = [tmp_path / p.name for p in shards.SCORING_CODE]
    for src, dst in zip(shards.SCORING_CODE, code, strict=True):
        dst.write_bytes(src.read_bytes())
    monkeypatch.setattr(shards, "SCORING_CODE", tuple(code))
    assert shards.fingerprint(PROBE, path, facts, templates) == first
    matching = next(p for p in code if p.name == "matching.py")
    matching.write_text(matching.read_text() + "\n# one more line\n")
    assert shards.fingerprint(PROBE, path, facts, templates) != first
    package = {p.name for p in (Path(estimators.__file__).parent).glob("*.py")}
    assert {p.name for p in shards.SCORING_CODE} == {"engine.py", "matching.py", "models.py", "prompts.py",
                                                     "teacher_forcing.py"} | package  # not config, levels, IO


def test_probe_rescores_a_model_retrained_in_place_under_a_stale_recorded_digest(taught, tmp_path):
    """A model folder whose memqa_model.json records its weights' digest, retrained in place (the weight file
    rewritten, the record left as it was): the weights' digest is of the files, so the probe rescores every
    shard, and a rerun reuses them (the digest remembered by size and mtime)."""
    from safetensors.torch import load_file, save_file

    from memqa.model_files import weights_sha256

    path, often, split, never = taught
    model_dir = tmp_path / "model"
    shutil.copytree(path, model_dir)
    recorded = weights_sha256(model_dir)
    info = json.loads((model_dir / "memqa_model.json").read_text())
    (model_dir / "memqa_model.json").write_text(json.dumps({**info, "weights_sha256": recorded}))
    facts = often[:4] + never[:4]
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    conf = probe(templates=3)
    args = (tmp_path / "cache", TEMPLATES_FILE, tmp_path / "facts.jsonl")
    before, first = run_probe("tiny", conf, facts, model_dir, *args)
    assert shards.weights_digest(model_dir) == recorded and first["shards_reused"] == 0

    weights = load_file(str(model_dir / "model.safetensors"))
    weights = {name: value.flip(0) if value.dim() == 2 else value for name, value in weights.items()}  # retrained
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((model_dir / "memqa_model.json").read_text())["weights_sha256"] == recorded  # stale
    assert weights_sha256(model_dir) != recorded

    after, second = run_probe("tiny", conf, facts, model_dir, *args)
    assert second["shards_reused"] == 0 and second["shards"] > 0
    fresh, _ = run_probe("tiny", conf, facts, model_dir, tmp_path / "fresh", *args[1:])
    assert after == fresh != before  # the retrained model's scores, not the old ones
    assert run_probe("tiny", conf, facts, model_dir, *args)[1]["shards_reused"] == second["shards"]


def test_crosscheck_is_keyed_by_its_own_facts_and_wall_time_counts_reused_shards(taught, tmp_path):
    path, often, split, never = taught
    facts = often + split + never
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    args = (path, tmp_path / "cache", TEMPLATES_FILE, tmp_path / "facts.jsonl")
    _, first = run_probe("tiny", probe(templates=3, samples=2, max_new_tokens=4, crosscheck_facts=3), facts, *args)
    _, second = run_probe("tiny", probe(templates=3, samples=2, max_new_tokens=4, crosscheck_facts=6), facts, *args)
    assert first["crosscheck"]["facts"] == 3 and second["crosscheck"]["facts"] == 6
    assert first["shards_reused"] == 0 and second["shards_reused"] == second["shards"] > 0
    assert second["wall_s"] > 0


def test_the_estimator_registry_holds_exactly_the_methods_params_allow():
    assert set(ESTIMATORS) == set(get_args(PROBE_METHOD))
    assert all(ESTIMATORS[e.crosscheck] is not e for e in ESTIMATORS.values())  # a method is checked by another
    assert {key for e in ESTIMATORS.values() for key in e.own_params} <= set(Probe.model_fields)


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(root, seed)).
MARGINS = [probe_scores_follow_teaching, greedy_labels_ignore_batch_size]


def test_the_published_template_set_takes_the_papers_templates_first_then_memqas_own():
    from memqa.prompts import published_count, templates_for

    published = templates_for("P17", 21, "published")
    authored = templates_for("P17", 21, "authored")
    assert published[0] == "{subject} is located in" and published_count("P17", 21) == 12
    assert published[12:] == [t for t in authored if t not in published[:12]][:9] and len(set(published)) == 21
    assert templates_for("P136", 21, "published") == templates_for("P136", None, "published")[:21]
    assert published_count("P136", 21) == 21 and published_count("P17", 5) == 5


def test_every_score_row_says_how_many_of_its_templates_are_the_papers(taught):
    from memqa.models import load_model
    from memqa.prompts import published_count

    path, often, *_ = taught
    model, tokenizer = load_model(path, "float32")
    mine = published_count(often[0]["relation"], 21)
    rows = score_facts(model, tokenizer, often[:1], probe(template_set="published"), "likelihood", 0)
    assert 0 < mine < 21 and rows[0]["templates"] == {"published": mine, "authored": 21 - mine}
    rows = score_facts(model, tokenizer, often[:1], probe(), "likelihood", 0)
    assert rows[0]["templates"] == {"published": 0, "authored": 21}
