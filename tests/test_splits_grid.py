import json

import pytest

from memqa.accuracy import accuracy_metrics
from memqa.errors import MemqaError
from memqa.grid import columns, current_cells, grid_rows, read_cells, studies
from memqa.io import write_jsonl
from memqa.memory import level_counts, n_levels
from memqa.splits import build_splits

SPLIT = {"levels": [0, 1], "sizes": [4], "seeds": [0], "short_pool": "use", "drop_test_overlap": True}


def _fact(i, split, question, relation="P36", domain="id"):
    return {"fact_id": f"{relation}/{split}/{i}", "relation": relation, "split": split, "domain": domain,
            "question": question, "answers": [f"A{i}"], "subject": f"S{i}"}


def _world():
    facts = [_fact(i, "train", f"What is the capital of S{i}?") for i in range(8)]
    facts += [_fact(100, "test", "What is the capital of S3?"), _fact(101, "test", "What is the capital of T?")]
    scores = [{"fact_id": f["fact_id"], "group": "train" if f["split"] == "train" else "test_id",
               "score": 0.0, "level": i % 2} for i, f in enumerate(facts)]
    return facts, scores


def test_training_sets_never_hold_a_test_question():
    facts, scores = _world()
    train_sets, _, metrics = build_splits(SPLIT, facts, scores, [0.25, 0.5, 0.75])
    trained = {f["question"] for rows in train_sets.values() for f in rows}
    assert "What is the capital of S3?" not in trained
    assert metrics["train_test_overlap"] == {"dropped": True, "facts": 1, "per_relation": {"P36": 1}}


def test_test_overlap_can_be_kept_by_param():
    facts, scores = _world()
    train_sets, _, metrics = build_splits({**SPLIT, "drop_test_overlap": False}, facts, scores, [0.25, 0.5, 0.75])
    assert "What is the capital of S3?" in {f["question"] for rows in train_sets.values() for f in rows}
    assert metrics["train_test_overlap"]["dropped"] is False


def test_number_of_levels_follows_the_bounds():
    bounds = [0.5, 0.9]
    assert n_levels(bounds) == 4 and columns(4)[-4:] == ["n_L0", "n_L1", "n_L2", "n_L3"]
    rows = [{"group": "train", "level": 3}, {"group": "test_id", "level": 0}]
    assert level_counts(rows, bounds)["train"] == [0, 0, 0, 1]
    preds = [{"domain": "id", "level": 3, "correct": True}, {"domain": "id", "level": 0, "correct": False}]
    metrics = accuracy_metrics(preds, n_levels(bounds))["id"]
    assert metrics["n"] == [1, 0, 0, 1] and metrics["L3"] == 100.0 and "L4" not in metrics
    facts, scores = _world()
    assert len(build_splits(SPLIT, facts, scores, bounds)[2]["level_counts"]["train"]) == 4


def _write_eval(root, model, cell, correct):
    path = root / "eval" / model / f"{cell}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    level = {"headline": 100.0 * correct, "micro": 100.0 * correct, "L0": 100.0 * correct, "n": [1]}
    path.write_text(json.dumps({"skipped": False, "train_facts": 4, "id": level, "ood": level}))
    write_jsonl(root / "predictions" / model / f"{cell}.jsonl",
                [{"fact_id": "P36/test/1", "domain": "id", "level": 0, "relation": "P36", "correct": correct}])


CURRENT = {"levels": [0], "sizes": [4], "seeds": [0]}


def test_grid_reads_exactly_the_current_cells_not_leftovers(tmp_path):
    for cell in ("base", "L0-n4-s0", "L0-n4-s1"):  # s1: a seed dropped from the params, its files left behind
        _write_eval(tmp_path, "m", cell, cell != "L0-n4-s1")
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))
    assert [c["cell"] for c in cells] == ["base", "L0-n4-s0"]
    study = studies(cells, {}, 1)[0]
    rows = grid_rows([study], cells, min_facts=1, replicates=100)
    assert [(r["train_level"], r["seeds"], r["headline"]) for r in rows] == [("base", 1, 100.0), ("0", 1, 100.0)]


def test_grid_names_a_missing_cell(tmp_path):
    _write_eval(tmp_path, "m", "base", True)
    with pytest.raises(MemqaError, match="1 evaluated cells .* missing .*L0-n4-s0.json"):
        read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))


def test_grid_leaves_the_headline_empty_not_nan_when_no_level_has_enough_facts(tmp_path):
    for cell in ("base", "L0-n4-s0"):
        _write_eval(tmp_path, "m", cell, True)
    cells = read_cells(tmp_path, tmp_path / "predictions", current_cells(["m"], CURRENT))
    rows = grid_rows([studies(cells, {}, 1)[0]], cells, min_facts=2, replicates=50)  # one test fact: too few
    assert all(r[key] is None for r in rows for key in ("headline", "headline_low", "headline_high"))
    assert rows[0]["L0"] == 100.0  # the level's own accuracy is still there
