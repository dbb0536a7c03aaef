"""benchmarks/probe_crosscheck.py: the estimator is chosen on FIT alone, agreement is weighted to the population the
default probe labels, and the script runs end to end (on a tiny model taught half its facts)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memqa.io import write_jsonl
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import probe_crosscheck  # noqa: E402


def estimator(fit_kappa: float, report_kappa: float, gflops: float) -> dict:
    raw = {"population_fit": {"all": {"kappa": fit_kappa}}, "population_report": {"all": {"kappa": report_kappa}},
           "kappa_report": report_kappa, "kappa_report_ci": None}
    return {"calibrations": {"raw": raw}, "cost": {"gflops": gflops}, "cost_vs_sample": {}}


def test_the_estimator_is_chosen_on_fit_agreement_not_on_report():
    analysis = {"fit_best": estimator(0.8, 0.5, 10.0), "report_best": estimator(0.7, 0.95, 1.0)}
    assert probe_crosscheck.choose_on_fit(analysis)["estimator"] == "fit_best"


def test_a_tie_on_fit_goes_to_the_cheaper_estimator():
    analysis = {"dear": estimator(0.8, 0.9, 10.0), "cheap": estimator(0.8, 0.5, 1.0)}
    assert probe_crosscheck.choose_on_fit(analysis)["estimator"] == "cheap"


def taught_project(root: Path) -> list[dict]:
    """data/facts.jsonl (in-domain train and test facts, out-of-domain test facts) and data/models/tiny, a tiny
    model taught the first half of the train facts with every template, so sampling's R spans levels."""
    train = tiny.synthetic_facts(24, "P19")
    facts = [*train, *tiny.synthetic_facts(6, "P19", "test", start=100),
             *tiny.synthetic_facts(10, "P106", "test", "ood", start=200)]
    (root / "data").mkdir()
    write_jsonl(root / "data" / "facts.jsonl", facts)
    texts = [s for fact in train[:12] for s in tiny.statements(fact, 21)]
    tokenizer = tiny.make_tokenizer(texts + [f"{f['subject']} {f['answers'][0]}" for f in facts])
    model = tiny.make_model(tokenizer)
    tiny.teach(model, tokenizer, texts, steps=150)
    tiny.save(model, tokenizer, root / "data" / "models" / "tiny")
    return facts


@pytest.mark.filterwarnings("ignore")
def test_crosscheck_weights_its_agreement_to_every_fact_the_default_probe_labels(tmp_path):
    facts = taught_project(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "paper.args").write_text((REPO / "presets" / "paper.args").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "probe_crosscheck.py"), "--model", "tiny",
                          "--facts", "12", "--pool", "24", "--strata", "3", "--chunk", "6", "--threads", "1"],
                         cwd=tmp_path, env=env, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "benchmarks" / "results" / "probe_crosscheck-tiny.json").read_text())
    assert result["population"]["facts"] == len(facts)  # train, in- and out-of-domain test: not the pool alone
    assert result["population"]["train_facts"] == 24
    chosen = result["chosen_on_fit"]
    fit = {name: a["calibrations"]["raw"]["population_fit"]["all"].get("kappa") or -1.0
           for name, a in result["estimators"].items()}
    assert fit[chosen["estimator"]] == max(fit.values())
    assert "kappa" in chosen["report_population"]["all"]  # every post-stratum was represented, so it weighted
    screens = result["screens"]
    assert set(screens) == {"screened_rao_blackwell_k1_h16", "screened_rao_blackwell_k1_h16_bf16",
                            "screened_rao_blackwell_k1_bf16"}
    assert "missed_facts_report" in screens["screened_rao_blackwell_k1_bf16"]
    assert set(screens) <= set(result["summary"])


def test_a_screened_estimator_keeps_each_templates_likelihood_below_the_fit_cut_and_samples_above():
    import numpy as np

    truth = np.array([1, 0, 1, 0])
    half = np.array([True, True, False, False])  # FIT: the first two
    data = probe_crosscheck.Facts([f"f{i}" for i in range(4)], half, ~half, truth * 0.2, truth,
                                  np.array(["P17"] * 4), np.zeros(4))
    start = [[1e-3, 1e-8], [1e-8, 1e-8], [2e-5, 1e-3], [1e-6, 1e-8]]  # per template
    sampled = [[0.5, 0.2], [0.3, 0.0], [0.6, 0.4], [0.1, 0.2]]
    rows = {run: {f"f{i}": {"template_prob": v, "score": float(np.mean(v))} for i, v in enumerate(values)}
            for run, values in (("likelihood", start), ("rao_blackwell_h16", sampled))}
    score, kept = probe_crosscheck.screened_scores(data, rows, "likelihood", "rao_blackwell_h16", 1e-5)
    assert kept.tolist() == [[True, False], [False, False], [True, True], [False, False]]
    assert score.tolist() == pytest.approx([(0.5 + 1e-8) / 2, 1e-8, 0.5, (1e-6 + 1e-8) / 2])
