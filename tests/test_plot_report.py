import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from memqa import paths
from memqa.config import PARAMS_FILE, ModelSpec, Params, load_params
from memqa.grid import columns, read_grid
from memqa.io import read_jsonl, write_jsonl
from memqa.overrides import preset_overrides
from memqa.plots import run_plot
from memqa.report import build_report
from memqa.stats import cohen_kappa

COLUMNS = columns(5)
REPO = Path(__file__).resolve().parents[1]


def _params(models=("a", "b"), sets: tuple[str, ...] = ()) -> Params:
    """The repository's params.yaml (with `-S`-style sets), its models replaced by the given ones."""
    params = load_params(REPO / PARAMS_FILE, sets=sets)
    return params.model_copy(update={"models": {m: ModelSpec(source="x") for m in models}})


def _reference() -> dict:
    return yaml.safe_load(paths.PUBLISHED_FILE.read_text())


def _grid(tmp_path, models=("a", "b")):
    """A synthetic grid.csv in the summarize format: means with intervals per (model, level, size, domain)."""
    rng = random.Random(0)
    rows = []
    for model in models:
        for domain in ("id", "ood"):
            groups = [("base", "0")] + [(str(level), str(size)) for level in range(5) for size in (60, 240)]
            for level, size in groups:
                row = {"model": model, "train_level": level, "size": size, "domain": domain, "seeds": 3,
                       "train_facts": int(size), "levels_left_out": ""}
                for t in range(5):
                    value = 10 * t + (30 if level == str(t) else 0) + rng.random()
                    row.update({f"L{t}": value, f"L{t}_low": value - 5, f"L{t}_high": value + 5, f"n_L{t}": 50})
                row["headline"] = sum(row[f"L{t}"] for t in range(5)) / 5
                row["micro"] = row["headline"]
                for key in ("headline", "micro"):
                    row[f"{key}_low"], row[f"{key}_high"] = row[key] - 3, row[key] + 3
                rows.append(row)
    path = tmp_path / "grid.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _scores(tmp_path, models=("a", "b")):
    rng = random.Random(1)
    for model in models:
        rows = [{"fact_id": f"P17/train/{i}", "group": "train", "level": rng.randrange(5)} for i in range(40)]
        write_jsonl(tmp_path / "probe" / model / "scores.jsonl", rows)
    return tmp_path / "probe"


def test_plot_writes_every_figure_and_dvc_plot_data_with_intervals(tmp_path):
    run_plot(_params(sets=("plot.dpi=40",)), tmp_path / "plots", _grid(tmp_path), _scores(tmp_path))
    for name in ("acc_vs_size-a.png", "acc_vs_size-b.png", "diagonal-a.png", "levels.png", "cross_model.png"):
        assert (tmp_path / "plots" / "png" / name).stat().st_size > 1000, name
    sizes = list(csv.DictReader((tmp_path / "plots" / "data" / "acc_vs_size.csv").open()))
    assert {r["size"] for r in sizes} == {"60", "240"} and len(sizes) == 2 * 2 * 5 * 2
    assert all(float(r["low"]) < float(r["headline"]) < float(r["high"]) for r in sizes)
    cells = list(csv.DictReader((tmp_path / "plots" / "data" / "diagonal.csv").open()))
    assert all(r["n"] == "50" and float(r["low"]) < float(r["accuracy"]) for r in cells)


def test_plot_cross_model_agreement_is_cohen_kappa_over_the_facts_both_models_scored(tmp_path):
    probe = _scores(tmp_path)
    a, b = (read_jsonl(probe / m / "scores.jsonl") for m in ("a", "b"))
    write_jsonl(probe / "b" / "scores.jsonl", b[:30])  # b scored 30 of a's 40 facts
    agreement = run_plot(_params(sets=("plot.dpi=40",)), tmp_path / "plots", _grid(tmp_path), probe)
    expected = cohen_kappa([r["level"] for r in a[:30]], [r["level"] for r in b[:30]])
    assert agreement["a~b"]["facts"] == 30 and agreement["a~b"]["cohen_kappa"] == expected


VERDICTS = [{"claim": "60 points suffice", "model": "a", "domain": "id", "statistic": "headline(60) - headline(240)",
             "verdict": "reproduced", "verdict_holm": "reproduced", "p_holm": 0.02, "threshold": -5.0,
             "effect": {"value": -1.0, "low": -3.5, "high": 1.2, "facts": 150, "seeds": 3, "p": 0.01},
             "sensitivity": None, "note": ""}]


def _report(tmp_path, params: Params, verdicts=VERDICTS) -> str:
    return build_report(params, read_grid(_grid(tmp_path, list(params.models))), verdicts, tmp_path,
                        tmp_path / "plots", _reference(), tmp_path / "results")


@pytest.mark.parametrize("model_count", [1, 2])
def test_report_opens_with_verdicts_and_shows_the_grid_and_published_numbers(tmp_path, model_count):
    text = _report(tmp_path, _params(["a", "b"][:model_count]))
    assert text.index("## Verdicts") < text.index("## What was run")
    assert ("| 60 points suffice | a | id | **reproduced** | reproduced | -1.0 [-3.5, 1.2] | 0.01 / 0.02 | - | 150 "
            "| 3 |") in text
    assert "| 2 | 57.5 | 53.7 |" in text  # published llama-3-8b train-2 headlines (id, ood), then ours
    assert text.count("| a | 4 | 240 | 3 |") == 2


def _deviations(text: str) -> dict[str, tuple[str, str]]:
    table = text.split("Params that differ from the paper's protocol:")[1].split("## Memory levels")[0]
    rows = [line.strip("|").split(" | ") for line in table.splitlines() if line.startswith("| `")]
    return {key.strip().strip("`"): (ours, paper.strip()) for key, ours, paper in rows}


def test_report_lists_each_knob_of_the_paper_preset_that_this_run_sets_otherwise(tmp_path):
    # probe.templates as the paper (21); sft.max_length 64 against the preset's 128; sft.lora_r is not a knob of
    # the preset, so whatever this run sets it to is no deviation
    params = _params(["a"], sets=("probe.templates=21", "sft.max_length=64", "evaluate.max_new_tokens=8",
                                  "sft.lora_r=8"))
    deviations = _deviations(_report(tmp_path, params))
    assert deviations["sft.max_length"] == ("64", "128") and deviations["evaluate.max_new_tokens"] == ("8", "16")
    assert deviations["probe.method"] == ("rao_blackwell", "sample")
    assert "probe.templates" not in deviations and "sft.lora_r" not in deviations
    preset_knobs = {item.split("=")[0] for item in preset_overrides(REPO / paths.PAPER_PRESET)}
    assert set(deviations) <= preset_knobs


def test_report_lists_no_deviation_for_a_run_with_the_paper_preset_applied(tmp_path):
    params = load_params(REPO / PARAMS_FILE, preset=REPO / paths.PAPER_PRESET)
    params = params.model_copy(update={"models": {"a": ModelSpec(source="x")}})
    assert _deviations(_report(tmp_path, params)) == {}


def test_report_projects_the_test_facts_an_inconclusive_claim_needs_and_quotes_the_estimator_agreement(tmp_path):
    params = _params(["a"], sets=("probe.method=likelihood", "probe.dtype=float32"))
    variance = {"seed": 0.0, "fact": 4.0, "interaction": 0.0, "fact_df": 100_000, "interaction_df": 200_000}
    undecided = {**VERDICTS[0], "verdict": "inconclusive", "verdict_holm": "inconclusive", "threshold": -5.0,
                 "effect": {"value": -3.0, "low": -6.9, "high": 0.9, "facts": 150, "seeds": 3, "p": 0.3,
                            "variance": variance}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "probe_crosscheck-a.json").write_text(json.dumps({
        "selection": {"report": 50, "facts": 100},
        "summary": {"likelihood": {"spearman_report": 0.84, "kappa_report": 0.62, "kappa_report_raw": 0.39,
                                   "kappa_report_raw_ci": [0.2, 0.6],
                                   "calibration": "threshold", "gflops_vs_sample": 23.2}},
        "sampling_noise_ceiling": {"spearman_ceiling_report": 0.89, "kappa_median": 0.9}}))
    text = _report(tmp_path, params, [undecided])
    # all fact variance: half-width 1.96 x 2 at distance 2 from the margin: (1.96 x 2 / 2)^2 = 3.8x the facts
    assert "about 3.8x the test facts at 3 seeds" in text
    assert "Decided here (after Holm): 0 of 1 claim rows." in text
    # the levels the pipeline made (level 0 below the resolution) apart from those a fitted threshold would make
    assert ("- a: Spearman 0.84; Cohen's kappa of the levels as made here (level 0 below 1/210) 0.39 [0.2, 0.6], "
            "with a level-0 threshold and calibration (threshold) fitted on the FIT half 0.62; on 50 held-out facts "
            "(100 scored)") in text
    assert "facts the probe labels" not in text  # a crosscheck that predates the population weighting


def test_report_quotes_the_population_weighted_kappa_when_the_crosscheck_measured_it(tmp_path):
    params = _params(["a"], sets=("probe.method=likelihood", "probe.dtype=float32"))
    (tmp_path / "results").mkdir()
    population = {"facts": 1200, "kappa": 0.71, "kappa_ci": [0.5, 0.85]}
    (tmp_path / "results" / "probe_crosscheck-a.json").write_text(json.dumps({
        "selection": {"report": 50, "facts": 100},
        "summary": {"likelihood": {"spearman_report": 0.84, "kappa_report": 0.62, "kappa_report_raw": 0.39,
                                   "calibration": "threshold", "gflops_vs_sample": 23.2,
                                   "population_report_raw": population}},
        "sampling_noise_ceiling": {}}))
    text = _report(tmp_path, params)
    assert "Weighted to the 1200 facts the probe labels (post-stratified): kappa 0.71 [0.5, 0.85]." in text


def test_report_quotes_the_screened_bf16_estimator_and_its_screens_misses(tmp_path):
    params = _params(["a"], sets=("probe.method=rao_blackwell", "probe.rb_samples=1", "probe.rb_max_new_tokens=16",
                                  "probe.rb_screen_cut=0.001", "probe.dtype=bfloat16"))
    (tmp_path / "results").mkdir()
    row = {"spearman_report": 0.9, "kappa_report": 0.85, "kappa_report_raw": 0.84, "calibration": "threshold",
           "gflops_vs_sample": 30.0, "population_report_raw": {"facts": 1200, "kappa": 0.88, "kappa_ci": [0.7, 1.0]}}
    (tmp_path / "results" / "probe_crosscheck-a.json").write_text(json.dumps({
        "dtype": "float32", "selection": {"report": 50, "facts": 100},
        "summary": {"screened_rao_blackwell_k1_h16": {**row, "kappa_report_raw": 0.5},
                    "screened_rao_blackwell_k1_h16_bf16": row},
        "screens": {"screened_rao_blackwell_k1_h16_bf16": {
            "cut": 0.001, "missed_facts_report": 1, "above_level0_report": 20, "missed_above_level0_report": 0.031,
            "population_template_share_sampled": 0.366}},
        "sampling_noise_ceiling": {}}))
    text = _report(tmp_path, params)
    assert "on the templates a likelihood screen sends on (`probe.rb_screen_cut: 0.001`" in text
    assert "(level 0 below 1/210) 0.84," in text  # the bf16 estimator's row, not the float32 one's
    assert "kappa 0.88 [0.7, 1.0]." in text
    assert "samples 36.6% of the templates" in text
    assert "left 1 of the 20 REPORT facts above level 0 unsampled (3.1% weighted)" in text


def test_report_precision_reads_only_the_current_grids_cells_not_leftover_files(tmp_path):
    params = _params(["a"], sets=("probe.dtype=float32",))
    cell = paths.cell_name(params.split.levels[0], params.split.sizes[0], params.split.seeds[0])
    (tmp_path / "sft" / "a").mkdir(parents=True)
    (tmp_path / "sft" / "a" / f"{cell}.json").write_text('{"precision": "float32 weights"}')
    (tmp_path / "sft" / "a" / "L4-n999-s7.json").write_text('{"precision": "bfloat16 weights"}')  # a dropped cell
    text = _report(tmp_path, params)
    line = next(x for x in text.splitlines() if x.startswith("Precision each stage ran in"))
    assert "a: SFT `float32 weights`" in line and "bfloat16" not in line


def test_plot_survives_a_domain_without_any_headline(tmp_path):
    """Too few test facts per level (the paper preset on a tiny subsample): every ood headline is empty, and
    the accuracy-vs-size panel must say so instead of failing on an empty log-scaled axis."""
    path = _grid(tmp_path, ["a"])
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        if row["domain"] == "ood":
            for key in ("headline", "headline_low", "headline_high"):
                row[key] = ""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    run_plot(_params(["a"], sets=("plot.dpi=40",)), tmp_path / "plots", path, _scores(tmp_path, ["a"]))
    assert (tmp_path / "plots" / "png" / "acc_vs_size-a.png").stat().st_size > 1000


def test_report_states_the_matching_artifacts_of_the_split_and_the_untrained_base(tmp_path):
    params = _params(["a"])
    (tmp_path / "a").mkdir(parents=True, exist_ok=True)
    (tmp_path / "a" / "split.json").write_text(json.dumps({
        "level_counts": {"train": [5] * 5, "test_id": [5] * 5, "test_ood": [5] * 5},
        "cells": [], "train_test_overlap": {"dropped": True, "facts": 0, "per_relation": {}},
        "matching_artifacts": {"gold_in_subject": {"train": 0.1, "test_id": 0.094, "test_ood": 0.0},
                               "cross_relation_leaks": {"id": 3, "ood": 0}}}))
    (tmp_path / "eval" / "a").mkdir(parents=True, exist_ok=True)
    (tmp_path / "eval" / "a" / "base.json").write_text(json.dumps({"id": {
        "micro": 20.0, "exact_micro": 4.0, "headline": 18.0, "headline_without_gold_in_subject": 12.5,
        "correct_crossing_a_word_boundary": 0.05}}))
    text = _report(tmp_path, params)
    section = text[text.index("## Matching artifacts"):]
    assert "gold inside the subject: train 10.0%, test_id 9.4%, test_ood 0.0%" in section
    assert "{'id': 3, 'ood': 0}" in section
    assert "containment micro 20.0, first-line exact match 4.0; headline 18.0, without the gold-in-subject facts 12.5" \
        in section


def test_report_states_the_facts_seeds_share_and_the_relation_mix(tmp_path):
    params = _params(["a"])
    (tmp_path / "a").mkdir(parents=True, exist_ok=True)
    cells = [{"level": 1, "size": "120", "seed": s, "actual": 118, "shared_with_other_seeds": 118} for s in (0, 1)]
    cells += [{"level": 0, "size": "60", "seed": 0, "actual": 60, "shared_with_other_seeds": 0}]
    cells = [{**c, "shortfall": 0, "skipped": False, "per_relation": {}} for c in cells]
    (tmp_path / "a" / "split.json").write_text(json.dumps({
        "level_counts": {"train": [5] * 5, "test_id": [5] * 5, "test_ood": [5] * 5}, "cells": cells,
        "relation_mix": "matched", "max_shared_between_seeds": 118,
        "train_test_overlap": {"dropped": True, "facts": 0, "per_relation": {}}}))
    text = _report(tmp_path, params)
    assert ("a: training sets on `split.relation_mix: matched`; seeds draw distinct sets where the pool allows: at "
            "most 118 facts shared with another seed's set (highest share: level 1, n=120, 118 of 118") in text
