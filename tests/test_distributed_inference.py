"""Probe and evaluate under `accelerate launch`: 2 CPU processes (gloo) write byte for byte what 1 process writes,
and only the main process writes the stage's outputs (the probe's other processes write their cache shards).

Each test runs the stage in a tiny project folder through tests/distributed_stage.py, which records every write
per process. Measured on the shared 2-core CPU (other jobs running): sample probe ~25 s, likelihood probe with
a resume ~35 s, evaluate ~25 s.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from memqa import paths
from memqa.config import Evaluate, Probe, Sft
from memqa.distributed import free_port
from memqa.evaluation import evaluate_cell
from memqa.io import read_json, read_jsonl, write_json, write_jsonl
from memqa.probe import run_probe, shard_plan
from memqa.prompts import qa_prompt
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "distributed_stage.py"
DDP = str(REPO / "configs" / "accelerate" / "ddp.yaml")
PROBE = {"method": "sample", "templates": 3, "samples": 3, "temperature": 0.7, "max_new_tokens": 6,
         "matcher": "contains", "level_bounds": [0.25, 0.5, 0.75], "batch_size": 8, "chunk_size": 2, "seed": 0,
         "dtype": "float32", "save_completions": True, "crosscheck_facts": 0, "rb_samples": 2}
EVALUATE = {"max_new_tokens": 6, "batch_size": 3, "matcher": "contains"}
CELL = "L4-n8-s0"


def all_facts() -> list[dict]:
    """16 facts in four probe shards groups (chunk_size 2: 9 shards): in-domain train (two relations), in-domain
    and out-of-domain test."""
    return (tiny.synthetic_facts(6, "P19") + tiny.synthetic_facts(4, "P20", start=6)
            + tiny.synthetic_facts(3, "P19", split="test", start=10)
            + tiny.synthetic_facts(3, "P26", split="test", domain="ood", start=13))


def build(root: Path, seed: int = 0) -> Path:
    """A tiny Llama taught half of the facts, as probe statements and as QA pairs; saved under root."""
    facts = all_facts()
    taught = facts[::2]
    texts = [s for f in taught for s in tiny.statements(f, 5)] + [qa_prompt(f["question"]) + " " + f["answers"][0]
                                                                  for f in taught] * 2
    corpus = [s for f in facts for s in tiny.statements(f, 5)] + [qa_prompt(f["question"]) for f in facts]
    tokenizer = tiny.make_tokenizer(corpus + texts, 600)
    model = tiny.make_model(tokenizer, hidden=64, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=200, lr=5e-3, seed=seed)
    return tiny.save(model, tokenizer, root / "model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny"))


def probe_finds_some_facts(rows: list[dict]) -> list[tiny.Margin]:
    """The sample probe (3 templates x 3 samples) finds taught facts and not the others."""
    total = sum(r["score"] for r in rows)
    return [tiny.at_least("sample probe: summed R of the 16 facts (taught ones found)", total, 1 / 9),
            tiny.at_most("sample probe: summed R of the 16 facts (not all found)", total, len(rows) - 1 / 9)]


def evaluation_answers_some_facts(rows: list[dict]) -> list[tiny.Margin]:
    correct = sum(r["correct"] for r in rows)
    return [tiny.at_least("evaluate: correct answers of the 16 (taught ones)", correct, 1),
            tiny.at_most("evaluate: correct answers of the 16 (not all)", correct, len(rows) - 1)]


def stages_in_one_process(model_dir: Path) -> list[tiny.Margin]:
    """The benchmark's way to the same margins: what the probe and evaluate stages compute on one process,
    computed in this one (no launcher, no DVC), from the same project folder."""
    project = make_project(Path(tempfile.mkdtemp(dir=model_dir.parent)) / "project", model_dir, PROBE)
    rows, _ = run_probe("tiny", Probe(**PROBE), all_facts(), model_dir, project / paths.PROBE_CACHE,
                        paths.TEMPLATES_FILE, project / paths.FACTS)
    facts = [f for d in ("id", "ood") for f in read_jsonl(project / paths.test_set("tiny", d))]
    sft = Sft.model_validate(yaml.safe_load((project / "params.yaml").read_text())["sft"])
    predictions = evaluate_cell(facts, project / paths.sft_dir("tiny", CELL), model_dir, Evaluate(**EVALUATE), sft,
                                5)[0]
    return probe_finds_some_facts(rows) + evaluation_answers_some_facts(predictions)


def make_project(root: Path, model_dir: Path, probe: dict) -> Path:
    """A project folder: params, facts, the model, and for evaluate a trained cell (full weights) and test sets."""
    root.mkdir(parents=True)
    (root / "data" / "models").mkdir(parents=True)
    (root / "data" / "models" / "tiny").symlink_to(model_dir)
    facts = all_facts()
    write_jsonl(root / paths.FACTS, facts)
    levels = [{**f, "level": i % 5} for i, f in enumerate(facts)]
    write_jsonl(root / paths.test_set("tiny", "id"), [f for f in levels if f["domain"] == "id"])
    write_jsonl(root / paths.test_set("tiny", "ood"), [f for f in levels if f["domain"] == "ood"])
    cell = root / paths.sft_dir("tiny", CELL)
    cell.mkdir(parents=True)
    for item in model_dir.iterdir():
        (cell / item.name).symlink_to(item)
    write_json(cell / "train_info.json", {"method": "full", "facts": 8, "skipped": False})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(models={"tiny": {"source": "data/tiny-model", "dtype": "float32"}}, probe=probe,
                  evaluate=EVALUATE)
    params["sft"] = {**params["sft"], "method": "full", "compute_dtype": "bfloat16"}  # bf16: the shape-sensitive case
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run(arguments: list[str], cwd: Path, processes: int = 1, relaunch: bool = False) -> None:
    """The stage through the recording helper: 1 process, `accelerate launch` of 2, or (relaunch) plain python
    with $MEMQA_ACCELERATE, as DVC runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HOME": str(cwd / ".hf"),
           "CUDA_VISIBLE_DEVICES": ""}  # gloo CPU processes, also on a GPU machine (not both ranks on cuda:0)
    env.pop("MEMQA_ACCELERATE", None)
    launcher = ["--config_file", DDP, "--num_processes", str(processes), "--main_process_port", str(free_port())]
    command = [sys.executable, str(HELPER), *arguments]
    if processes > 1 and relaunch:
        env["MEMQA_ACCELERATE"] = " ".join(launcher)
    elif processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, *command[1:]]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def writes(project: Path, rank: str) -> list[str]:
    return (project / f"writes-{rank}.log").read_text().splitlines()


def shard_files(project: Path) -> dict[str, str]:
    root = project / paths.PROBE_CACHE
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.jsonl"))}


def probe_outputs(project: Path) -> tuple[str, dict]:
    metrics = read_json(project / paths.probe_metrics("tiny"))
    return (project / paths.scores("tiny")).read_text(), {k: v for k, v in metrics.items()
                                                          if k not in ("wall_s", "processes")}


def check_probe_writes(project: Path, method: str) -> list[str]:
    """Each process wrote exactly its shards (shard i: process i % 2); only process 0 wrote the outputs."""
    names = [name for name, _ in shard_plan(all_facts(), PROBE["chunk_size"])]
    assert len(names) == 9
    shards = {rank: sorted(line.rsplit("/", 1)[1].removesuffix(".jsonl") for line in writes(project, rank)
                           if "data/cache/probe/" in line) for rank in ("0", "1")}
    assert shards == {"0": sorted(names[0::2]), "1": sorted(names[1::2])}
    assert all(line.startswith("write data/cache/probe/tiny/") and f"/{method}/" in line
               for line in writes(project, "1")), writes(project, "1")
    outputs = sorted(line for line in writes(project, "0") if "data/cache/" not in line)
    assert outputs == ["write data/probe/tiny/scores.jsonl", "write metrics/tiny/probe.json"]
    return names


def test_sample_probe_on_two_processes_writes_what_one_process_writes(tmp_path, model_dir):
    one = make_project(tmp_path / "one", model_dir, PROBE)
    run(["probe", "--model", "tiny"], one)
    two = make_project(tmp_path / "two", model_dir, PROBE)
    run(["probe", "--model", "tiny"], two, processes=2)

    assert probe_outputs(two) == probe_outputs(one)
    assert shard_files(two) == shard_files(one)
    assert read_json(two / paths.probe_metrics("tiny"))["processes"] == 2
    rows = read_jsonl(one / paths.scores("tiny"))
    assert len(rows) == 16
    tiny.require(probe_finds_some_facts(rows))
    assert all(len(r["completions"]) == 3 and len(r["completions"][0]) == 3 for r in rows)
    check_probe_writes(two, "sample")


def test_likelihood_probe_on_two_processes_matches_one_and_resumes(tmp_path, model_dir):
    conf = {**PROBE, "method": "likelihood", "templates": 5, "save_completions": False}
    one = make_project(tmp_path / "one", model_dir, conf)
    run(["probe", "--model", "tiny"], one)
    two = make_project(tmp_path / "two", model_dir, conf)
    run(["probe", "--model", "tiny"], two, processes=2)
    assert probe_outputs(two) == probe_outputs(one) and shard_files(two) == shard_files(one)
    names = check_probe_writes(two, "likelihood")

    # A killed run: one shard of each process is missing, and so are the outputs. The rerun (relaunched through
    # $MEMQA_ACCELERATE, as DVC runs it) scores only those two, one on each process, and gives the same result.
    shards = {Path(name).stem: two / paths.PROBE_CACHE / name for name in shard_files(two)}
    for name in (names[2], names[5]):
        shards[name].unlink()
    (two / paths.scores("tiny")).unlink()
    (two / paths.probe_metrics("tiny")).unlink()
    run(["probe", "--model", "tiny"], two, processes=2, relaunch=True)
    (scores, metrics), (ref_scores, ref) = probe_outputs(two), probe_outputs(one)
    assert scores == ref_scores and shard_files(two) == shard_files(one)
    assert (metrics.pop("shards_reused"), ref.pop("shards_reused")) == (7, 0) and metrics == ref
    assert read_json(two / paths.probe_metrics("tiny"))["processes"] == 2
    assert [line.rsplit("/", 1)[1] for line in writes(two, "0") if "cache" in line] == [f"{names[2]}.jsonl"]
    assert [line.rsplit("/", 1)[1] for line in writes(two, "1")] == [f"{names[5]}.jsonl"]
    assert writes(two, "outer") == []  # the process DVC starts only relaunched the stage


def test_evaluate_on_two_processes_writes_what_one_process_writes(tmp_path, model_dir):
    arguments = ["evaluate", "--model", "tiny", "--level", "4", "--size", "8", "--seed", "0"]
    one = make_project(tmp_path / "one", model_dir, PROBE)
    run(arguments, one)
    two = make_project(tmp_path / "two", model_dir, PROBE)
    run(arguments, two, processes=2, relaunch=True)  # python stages/evaluate.py with $MEMQA_ACCELERATE, as in DVC

    predictions = (one / paths.predictions("tiny", CELL)).read_text()
    assert (two / paths.predictions("tiny", CELL)).read_text() == predictions
    rows = read_jsonl(one / paths.predictions("tiny", CELL))
    assert [r["fact_id"] for r in rows] == [f["fact_id"] for d in ("id", "ood") for f in all_facts()
                                            if f["domain"] == d]  # the test sets' order
    tiny.require(evaluation_answers_some_facts(rows))
    ref, metrics = (read_json(p / paths.eval_metrics("tiny", CELL)) for p in (one, two))
    assert (ref.pop("processes"), metrics.pop("processes")) == (1, 2) and metrics == ref
    # 16 test facts in batches of 3: 6 batches, 3 on each process; only process 0 wrote, each output once
    assert writes(two, "1") == [] and writes(two, "outer") == []
    assert sorted(writes(two, "0")) == [f"write data/eval/tiny/{CELL}.jsonl", f"write metrics/eval/tiny/{CELL}.json"]


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(root, seed)).
MARGINS = [stages_in_one_process]
