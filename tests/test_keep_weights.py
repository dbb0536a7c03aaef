"""sft.keep_weights false: a full fine-tuning cell's weights live in data/scratch/ until its evaluation, then go;
adapters stay. DVC runs a cell's sft right before its evaluate, so one cell's weights are on disk at a time."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from memqa.config import Evaluate, Sft
from memqa.errors import MemqaError
from memqa.evaluation import drop_scratch_weights, evaluate_cell
from memqa.io import read_json
from memqa.prompts import qa_prompt
from memqa.training import fine_tune, sort_target_modules
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
SFT = Sft.model_validate({"method": "full", "lr": 1e-3, "lr_full": 3e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1,
       "warmup_ratio": 0.0, "weight_decay": 0.0, "max_length": 48, "lora_r": 4, "lora_alpha": 8,
       "lora_dropout": 0.0, "compute_dtype": "float32", "deterministic": True, "keep_weights": False,
                         "space_before_eos": False, "max_grad_norm": None})
EVAL = Evaluate.model_validate({"max_new_tokens": 4, "batch_size": 8, "matcher": "contains"})
CELL = "L4-n8-s0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    facts = [{**f, "level": 4} for f in tiny.synthetic_facts(10)]
    tokenizer = tiny.make_tokenizer([qa_prompt(f["question"]) + " " + f["answers"][0] for f in facts], 400)
    model_dir = tiny.save(tiny.make_model(tokenizer, hidden=64, layers=2), tokenizer, root / "model")
    return root, model_dir, facts[:8], facts[8:]


def _fine_tune(root: Path, model_dir: Path, facts: list[dict], conf: Sft, name: str):
    out, scratch = root / name / "sft" / "tiny" / CELL, root / name / "scratch" / "tiny" / CELL
    live = root / name / f"{CELL}-live"
    info = fine_tune(facts, conf, 0, model_dir, out, root / name / f"{CELL}.csv", live, scratch)
    return info, out, scratch, live


def test_full_weights_go_to_scratch_are_evaluated_then_deleted(world):
    root, model_dir, train, test = world
    info, out, scratch, _ = _fine_tune(root, model_dir, train, SFT, "drop")
    assert sorted(p.name for p in out.iterdir()) == ["train_info.json"]  # what DVC caches: a few hundred bytes
    assert (scratch / "model.safetensors").is_file() and not scratch.with_name(CELL + ".partial").exists()
    assert info["weights"] == {"kept": False, "dir": str(scratch)} == read_json(out / "train_info.json")["weights"]

    predictions, metrics = evaluate_cell(test, out, model_dir, EVAL, SFT, 5)
    assert len(predictions) == 2 and not metrics["skipped"]
    assert drop_scratch_weights(out) == scratch and not scratch.exists()
    with pytest.raises(MemqaError, match=r"deleted after their evaluation .* `dvc repro --force --downstream "
                                         r"sft@tiny-4-8-0`, or set sft.keep_weights: true"):
        evaluate_cell(test, out, model_dir, EVAL, SFT, 5)


def test_keep_weights_true_and_adapters_keep_their_weights_in_the_sft_output(world):
    root, model_dir, train, _ = world
    _, out, scratch, _ = _fine_tune(root, model_dir, train, SFT.model_copy(update={"keep_weights": True}), "keep")
    assert (out / "model.safetensors").is_file() and not scratch.exists()
    assert drop_scratch_weights(out) is None and (out / "model.safetensors").is_file()
    _, out, scratch, _ = _fine_tune(root, model_dir, train, SFT.model_copy(update={"method": "lora"}), "lora")
    assert (out / "adapter_model.safetensors").is_file() and not scratch.exists()
    assert drop_scratch_weights(out) is None


def test_an_adapter_config_lists_its_target_modules_sorted_whatever_the_hash_seed(world, tmp_path):
    root, model_dir, train, _ = world
    _, out, _, _ = _fine_tune(root, model_dir, train, SFT.model_copy(update={"method": "lora"}), "sorted")
    modules = read_json(out / "adapter_config.json")["target_modules"]
    assert len(modules) > 3 and modules == sorted(modules)  # peft's set order: 1 in len! runs without the sort
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"r": 4, "target_modules": ["v_proj", "down_proj", "q_proj"]}, indent=2))
    sort_target_modules(config)
    assert config.read_text() == json.dumps({"r": 4, "target_modules": ["down_proj", "q_proj", "v_proj"]},
                                            indent=2, sort_keys=True)


def test_an_empty_training_set_still_writes_every_declared_output(world):
    root, model_dir, _, _ = world
    info, out, scratch, live = _fine_tune(root, model_dir, [], SFT, "empty")
    assert info["skipped"] and (out / "train_info.json").is_file()
    assert "weights" not in info and not scratch.exists() and drop_scratch_weights(out) is None
    assert read_json(live / "metrics.json") == {"step": 0, "skipped": True}
    assert (live / "plots" / "metrics" / "loss.tsv").read_text() == "step\tloss\n"
    assert (live / "plots" / "metrics" / "lr.tsv").read_text() == "step\tlr\n"


def test_dvc_runs_each_cells_sft_right_before_its_evaluate(tmp_path):
    """With sft.keep_weights false only one cell's full weights are on disk because DVC plans a depth-first
    post-order over dvc.yaml's stages in file order: the evaluate stanza comes before sft, so every evaluate
    pulls in its own sft just before it (with sft first, DVC would train every cell before evaluating any)."""
    import shutil
    import subprocess

    import yaml
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["models"] = {"a": params["models"][next(iter(params["models"]))]}
    params["split"].update(levels=[0, 1], sizes=[60], seeds=[0, 1])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(str(tmp_path))
    with Repo(str(tmp_path)) as repo:
        order = [s.name for s in plan_repro(get_active_graph(repo.index.graph))]
    grid = [s for s in order if s.startswith(("sft@", "evaluate@"))]
    assert len(grid) == 8
    assert all(grid[i].replace("sft@", "evaluate@") == grid[i + 1] for i in range(0, len(grid), 2)), grid
