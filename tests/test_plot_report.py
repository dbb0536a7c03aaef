import csv
import json
import random

import pytest
import yaml

from memqa.grid import columns, read_grid
from memqa.plots import run_plot
from memqa.report import build_report, findings

COLUMNS = columns(5)


def _grid(tmp_path, models=("a", "b")):
    """A synthetic grid with a built-in diagonal: training level i is best on test level i."""
    rng = random.Random(0)
    rows = []
    for model in models:
        for domain in ("id", "ood"):
            rows.append({"model": model, "train_level": "base", "size": "0", "seed": "", "train_facts": 0,
                         "domain": domain, **{f"L{t}": 5.0 * t for t in range(5)},
                         **{f"n_L{t}": 50 for t in range(5)}})
            for level in range(5):
                for size in (60, 240):
                    for seed in (0, 1):
                        accs = {f"L{t}": 10 * t + (30 if t == level else 0) + 4 * seed + rng.random() for t in range(5)}
                        rows.append({"model": model, "train_level": str(level), "size": str(size), "seed": str(seed),
                                     "train_facts": size, "domain": domain, **accs,
                                     **{f"n_L{t}": 50 for t in range(5)}})
    for row in rows:
        row["headline"] = sum(row[f"L{t}"] for t in range(5)) / 5
        row["micro"] = row["headline"]
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
        (tmp_path / "probe" / model).mkdir(parents=True)
        (tmp_path / "probe" / model / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "probe"


def test_plot_writes_every_figure_and_dvc_plot_data(tmp_path):
    agreement = run_plot(["a", "b"], _grid(tmp_path), _scores(tmp_path), tmp_path / "plots", dpi=40, levels=range(5))
    for name in ("acc_vs_size-a.png", "acc_vs_size-b.png", "diagonal-a.png", "levels.png", "cross_model.png"):
        assert (tmp_path / "plots" / "png" / name).stat().st_size > 1000, name
    assert agreement["a~b"]["facts"] == 40 and -1 <= agreement["a~b"]["cohen_kappa"] <= 1
    sizes = list(csv.DictReader((tmp_path / "plots" / "data" / "acc_vs_size.csv").open()))
    assert {r["size"] for r in sizes} == {"60", "240"} and len(sizes) == 2 * 2 * 5 * 2
    assert all(float(r["seed_std"]) > 0 for r in sizes)


def test_findings_detect_a_built_in_diagonal(tmp_path):
    lines = findings(read_grid(_grid(tmp_path)), ["a", "b"], [60, 240])
    diagonal = [line for line in lines if "diagonal" in line]
    assert diagonal and all("reproduced (10/10" in line for line in diagonal)
    assert any("higher-memory test facts**: reproduced" in line for line in lines)
    assert any("60 points suffice**: reproduced" in line for line in lines)


def test_findings_say_not_tested_with_one_size(tmp_path):
    lines = findings(read_grid(_grid(tmp_path)), ["a"], [60])
    assert any("60 points suffice**: not tested" in line for line in lines)


@pytest.mark.parametrize("model_count", [1, 2])
def test_report_lists_deviations_grid_and_published_numbers(tmp_path, model_count):
    models = ["a", "b"][:model_count]
    params = yaml.safe_load(open("params.yaml"))
    params["models"] = {m: {"source": "x"} for m in models}
    reference = yaml.safe_load(open("memqa/resources/published-results.yaml"))
    text = build_report(params, read_grid(_grid(tmp_path, models)), tmp_path, tmp_path / "plots", reference)
    assert "| `probe.method` | likelihood | sample |" in text
    assert "| 2 | 57.5 | 53.7 |" in text  # published llama-3-8b train-2 headlines (id, ood), then ours
    assert text.count("| a | 4 | 240 | 1 |") == 2


def test_findings_ignore_test_levels_with_too_few_facts(tmp_path):
    rows = read_grid(_grid(tmp_path, ["a"]))
    for row in rows:
        row["n_L4"] = 1  # level 4 holds one test fact: it must not vote
    diagonal = [line for line in findings(rows, ["a"], [60, 240]) if "diagonal" in line]
    assert "(8/8 test-level" in diagonal[0]


def test_diagonal_verdict_aggregates_every_size_and_seed_of_a_training_level():
    def row(train_level, size, l0, l1):
        return {"model": "a", "train_level": train_level, "size": size, "seed": "0", "train_facts": int(size),
                "domain": "id", "headline": None, "micro": None, "L0": l0, "L1": l1, "n_L0": 20, "n_L1": 20}

    # train-1 on test-1: 0 at n=60 and 95 at n=240, mean 47.5, below train-0's 50; the last row alone says 95
    rows = [row("0", "60", 50.0, 50.0), row("0", "240", 50.0, 50.0),
            row("1", "60", 40.0, 0.0), row("1", "240", 40.0, 95.0)]
    diagonal = [line for line in findings(rows, ["a"], [60, 240]) if "diagonal" in line]
    assert "not reproduced (1/2 test-level" in diagonal[0]
