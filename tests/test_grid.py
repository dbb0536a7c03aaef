"""The study model (exactly the current cells, read once) and the grid rows made from it; the summarize stage end
to end on a small synthetic project (report.bootstrap_replicates reaches the grid and the verdicts)."""
import csv
import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from memqa import paths
from memqa.accuracy import accuracy_metrics
from memqa.config import PARAMS_FILE, Report, Split, read_params
from memqa.errors import MemqaError
from memqa.grid import grid_rows
from memqa.io import read_json, write_jsonl
from memqa.study import current_cells, read_cells, studies
from stages.summarize import main as summarize

REPO = Path(__file__).resolve().parents[1]
CURRENT = Split(levels=[0], sizes=[4], seeds=[0])


def _report(min_facts: int = 1, replicates: int = 100) -> Report:
    return Report(reference=str(paths.PUBLISHED_FILE), min_level_facts=min_facts, bootstrap_replicates=replicates)


def _write_cell(metrics_root, eval_root, model, cell, predictions, train_facts=4):
    path = metrics_root / paths.eval_metrics(model, cell).relative_to(paths.METRICS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"skipped": False, "train_facts": 0 if cell == "base" else train_facts}))
    write_jsonl(eval_root / paths.predictions(model, cell).relative_to(paths.EVAL_DATA), predictions)


def _one_fact(correct):
    return [{"fact_id": "P36/test/1", "domain": "id", "level": 0, "relation": "P36", "correct": correct}]


def test_grid_reads_exactly_the_current_cells_not_leftovers(tmp_path):
    for cell in ("base", "L0-n4-s0", "L0-n4-s1"):  # s1: a seed dropped from the params, its files left behind
        _write_cell(tmp_path, tmp_path / "predictions", "m", cell, _one_fact(cell != "L0-n4-s1"))
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))
    assert [c["cell"] for c in cells] == ["base", "L0-n4-s0"]
    rows = grid_rows(studies(cells, 1), _report())
    assert [(r["train_level"], r["seeds"], r["headline"]) for r in rows] == [("base", 1, 100.0), ("0", 1, 100.0)]


def test_grid_names_a_missing_cell(tmp_path):
    _write_cell(tmp_path, tmp_path / "predictions", "m", "base", _one_fact(True))
    with pytest.raises(MemqaError, match="1 evaluated cells .* missing .*L0-n4-s0.json"):
        read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))


def test_grid_leaves_the_headline_empty_not_nan_when_no_level_has_enough_facts(tmp_path):
    for cell in ("base", "L0-n4-s0"):
        _write_cell(tmp_path, tmp_path / "predictions", "m", cell, _one_fact(True))
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))
    rows = grid_rows(studies(cells, 1), _report(min_facts=2))  # one test fact: too few
    assert all(r[key] is None for r in rows for key in ("headline", "headline_low", "headline_high"))
    assert rows[0]["L0"] == 100.0  # the level's own accuracy is still there


def test_grid_train_facts_is_the_mean_over_the_groups_seeds(tmp_path):
    split = Split(levels=[0], sizes=[4], seeds=[0, 1])
    _write_cell(tmp_path, tmp_path / "predictions", "m", "base", _one_fact(True))
    for seed, facts in ((0, 4), (1, 3)):  # a short pool: seed 1's training set holds one fact less
        _write_cell(tmp_path, tmp_path / "predictions", "m", f"L0-n4-s{seed}", _one_fact(True), train_facts=facts)
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], split))
    assert [r["train_facts"] for r in grid_rows(studies(cells, 1), _report())] == [0.0, 3.5]


def test_cell_metrics_and_grid_leave_out_the_same_thin_levels_of_the_headline(tmp_path):
    """A cell's evaluate metrics and its grid row apply one min-facts rule: the same headline and the same levels
    left out (level 1 holds one fact, level 2 none, min_level_facts 2)."""
    facts = [{"fact_id": f"P36/test/{i}", "domain": "id", "level": level, "relation": "P36", "correct": correct}
             for i, (level, correct) in enumerate([(0, 1), (0, 0), (0, 1), (0, 1), (1, 1), (3, 1), (3, 0)])]
    for cell in ("base", "L0-n4-s0"):
        _write_cell(tmp_path, tmp_path / "predictions", "m", cell, facts)
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))
    row = grid_rows(studies(cells, 4), _report(min_facts=2))[1]
    metrics = accuracy_metrics(facts, 4, min_facts=2)["id"]
    assert row["headline"] == metrics["headline"] == 62.5  # (75 + 50) / 2: level 1's one fact left out
    assert row["levels_left_out"] == " ".join(map(str, metrics["levels_left_out"])) == "1 2"


def _project(root, replicates: int) -> None:
    """A one-model project of 2 training levels x 2 seeds over 60 test facts of levels 0-2, and its params."""
    params = read_params(REPO / PARAMS_FILE)
    params["models"] = {"m": {"source": "x"}}
    params["split"].update(levels=[0, 1], sizes=[4], seeds=[0, 1])
    params["report"].update(min_level_facts=5, bootstrap_replicates=replicates)
    (root / PARAMS_FILE).write_text(yaml.safe_dump(params))
    rng = random.Random(0)
    for cell in current_cells(["m"], Split(levels=[0, 1], sizes=[4], seeds=[0, 1])):
        p = 0.3 if cell["cell"] == "base" else 0.3 + 0.2 * int(cell["train_level"])
        facts = [{"fact_id": f"P36/test/{i}", "domain": "id", "level": i % 3, "relation": "P36",
                  "correct": rng.random() < p + 0.1 * (i % 3)} for i in range(60)]
        _write_cell(root / paths.METRICS, root / paths.EVAL_DATA, "m", cell["cell"], facts)
        if cell["cell"] != "base":
            write_jsonl(root / paths.train_set("m", cell["cell"]), [{"relation": "P36"}] * 4)


def test_summarize_bootstraps_the_grid_with_report_bootstrap_replicates(tmp_path, monkeypatch):
    """The old stage bootstrapped with 2,000 replicates whatever the params said (the verdicts now use t
    intervals, memqa.inference; the grid's per-cell intervals are still bootstrapped)."""
    monkeypatch.chdir(tmp_path)
    intervals = {}
    for replicates in (100, 400):
        _project(tmp_path, replicates)
        result = CliRunner().invoke(summarize, ["--params", PARAMS_FILE])
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(paths.GRID.open()))
        intervals[replicates] = [(r["headline"], r["headline_low"], r["headline_high"]) for r in rows]
    assert len(intervals[100]) >= 3
    assert [i[0] for i in intervals[100]] == [i[0] for i in intervals[400]]  # same point estimates
    assert [i[1:] for i in intervals[100]] != [i[1:] for i in intervals[400]]


def test_summarize_writes_holm_adjusted_verdicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _project(tmp_path, 100)
    assert CliRunner().invoke(summarize, ["--params", PARAMS_FILE]).exit_code == 0
    rows = read_json(paths.VERDICTS)
    tested = [v for v in rows if v["in_family"]]
    assert tested and all(v["p_holm"] >= v["effect"]["p"] for v in tested)
