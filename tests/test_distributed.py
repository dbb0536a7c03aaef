"""SFT under `accelerate launch`: 2 CPU processes (gloo) train exactly like 1 process on the same global batch,
and only the main process writes."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from memqa.config import Sft
from memqa.distributed import PORT_OPTION, free_port, relaunch_command
from memqa.errors import MemqaError
from memqa.io import read_json, read_jsonl, write_jsonl
from memqa.prompts import qa_prompt
from memqa.sft_batches import per_device_batch
from memqa.training import fine_tune
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "distributed_sft.py"
CELL = "L4-n14-s0"
SFT = Sft.model_validate({"method": "full", "lr": 1e-3, "lr_full": 3e-3, "epochs": 2, "batch_size": 8, "grad_accum": 1,
       "warmup_ratio": 0.25, "weight_decay": 0.0, "max_length": 48, "lora_r": 8, "lora_alpha": 16,
       "lora_dropout": 0.0, "compute_dtype": "float32", "deterministic": True, "keep_weights": True,
                         "space_before_eos": False, "max_grad_norm": None})
ARGS = ["--model", "tiny", "--level", "4", "--size", "14", "--seed", "0"]


def build(root: Path, seed: int = 0) -> Path:
    """A tiny random Llama and its tokenizer, built here; saved under root."""
    facts = tiny.synthetic_facts(14)
    tokenizer = tiny.make_tokenizer([qa_prompt(f["question"]) + " " + f["answers"][0] for f in facts], 400)
    return tiny.save(tiny.make_model(tokenizer, hidden=64, layers=2, seed=seed), tokenizer, root / "model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny"))


def loss_falls(curve: list[dict]) -> list[tiny.Margin]:
    return [tiny.at_least("SFT loss, first - last of 4 steps (it trained)", curve[0]["loss"] - curve[-1]["loss"],
                          0.05)]


def sft_in_one_process(model_dir: Path) -> list[tiny.Margin]:
    """The benchmark's way to the same margin: the one-process SFT of the test, run in this process."""
    project = make_project(Path(tempfile.mkdtemp(dir=model_dir.parent)) / "project", model_dir, SFT)
    facts = read_jsonl(project / "data" / "splits" / "tiny" / f"train-{CELL}.jsonl")
    fine_tune(facts, SFT, 0, model_dir, project / "sft" / CELL, project / "metrics" / "sft" / "tiny" / f"{CELL}.csv")
    return loss_falls(loss_curve(project))


def make_project(root: Path, model_dir: Path, sft: Sft) -> Path:
    root.mkdir(parents=True)
    (root / "data" / "models").mkdir(parents=True)
    (root / "data" / "models" / "tiny").symlink_to(model_dir)
    write_jsonl(root / "data" / "splits" / "tiny" / f"train-{CELL}.jsonl",
                [{**f, "level": 4} for f in tiny.synthetic_facts(14)])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "sft": sft.model_dump()}, sort_keys=False))
    return root


def run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HOME": str(cwd / ".hf"),
           "CUDA_VISIBLE_DEVICES": ""}  # gloo CPU processes, also on a GPU machine (not both ranks on cuda:0)
    env.pop("MEMQA_ACCELERATE", None)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def loss_curve(project: Path) -> list[dict]:
    with (project / "metrics" / "sft" / "tiny" / f"{CELL}.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def outputs(project: Path) -> set[str]:
    skip = ("params.yaml", "writes-", "data/models", "data/splits", ".hf")
    return {str(p.relative_to(project)) for p in project.rglob("*")
            if p.is_file() and not str(p.relative_to(project)).startswith(skip)}


def test_two_processes_match_one_process_and_only_the_main_one_writes(tmp_path, model_dir):
    one = make_project(tmp_path / "one", model_dir, SFT)
    run([sys.executable, str(HELPER), *ARGS], one)
    # 2 processes x grad_accum 2 x 2 examples = the same global batch of 8; 14 facts: the last step of each
    # epoch holds 6 facts, so process 1 gets a blank example there (no loss), never a repeated fact.
    two = make_project(tmp_path / "two", model_dir, SFT.model_copy(update={"grad_accum": 2}))
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"),
         "--num_processes", "2", "--main_process_port", str(free_port()), str(HELPER), *ARGS], two)

    ref, curve = loss_curve(one), loss_curve(two)
    assert len(ref) == 4 == len(curve)  # 2 epochs x ceil(14 / 8) steps
    for a, b in zip(ref, curve, strict=True):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-4, (ref, curve)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    tiny.require(loss_falls(ref))

    info = read_json(two / "metrics" / "sft" / "tiny" / f"{CELL}.json")
    assert (info["processes"], info["per_device_batch"], info["global_batch"], info["grad_accum"]) == (2, 2, 8, 2)
    ref_info = read_json(one / "metrics" / "sft" / "tiny" / f"{CELL}.json")
    assert (ref_info["processes"], ref_info["per_device_batch"], ref_info["global_batch"]) == (1, 8, 8)

    # One copy of every output: the same files as the 1-process run, nothing left staged, and rank 1 wrote,
    # removed, renamed and saved nothing while rank 0 did each once.
    assert outputs(two) == outputs(one)
    assert not [p for p in outputs(two) if ".partial" in p]
    assert {f"data/sft/tiny/{CELL}/train_info.json", f"data/sft/tiny/{CELL}/model.safetensors",
            f"metrics/sft/tiny/{CELL}-live/metrics.json",
            f"metrics/sft/tiny/{CELL}-live/plots/metrics/loss.tsv"} <= outputs(two)
    assert (two / "writes-1.log").read_text() == ""
    actions = (two / "writes-0.log").read_text().splitlines()
    assert max(Counter(actions).values()) == 1, actions
    assert {f"write metrics/sft/tiny/{CELL}.csv", f"write metrics/sft/tiny/{CELL}.json",
            f"write data/sft/tiny/{CELL}.partial/train_info.json", f"save_model data/sft/tiny/{CELL}.partial",
            f"rename data/sft/tiny/{CELL}.partial", f"live metrics/sft/tiny/{CELL}-live"} <= set(actions)
    live = (two / "metrics" / "sft" / "tiny" / f"{CELL}-live" / "plots" / "metrics" / "loss.tsv").read_text()
    assert [float(line.split("\t")[1]) for line in live.splitlines()[1:]] == [row["loss"] for row in curve]


def test_batch_size_is_global_and_must_split_evenly():
    assert per_device_batch(8, 1, 1) == 8 and per_device_batch(8, 4, 1) == 2 and per_device_batch(8, 2, 2) == 2
    with pytest.raises(MemqaError, match=r"multiple of processes \(3\) x sft.grad_accum \(1\) = 3: set -S "
                                         r"sft.batch_size=9"):
        per_device_batch(8, 3, 1)


def test_memqa_accelerate_relaunches_the_stage_under_accelerate_once_on_a_free_port():
    """Launches side by side (one `dvc exp run --temp` per GPU set) would all rendezvous on accelerate's 29500:
    without a port in $MEMQA_ACCELERATE, the relaunch takes one that is free; a port given is kept."""
    argv = ["stages/sft.py", "--model", "m"]
    options = "--config_file configs/accelerate/fsdp.yaml --num_processes 8"
    assert relaunch_command(argv, {}) is None
    assert relaunch_command(argv, {"MEMQA_ACCELERATE": options, "LOCAL_RANK": "0"}) is None  # already launched
    command = relaunch_command(argv, {"MEMQA_ACCELERATE": options})
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml",
              "--num_processes", "8"]
    assert command[:7] == launch and command[7] == PORT_OPTION and command[9:] == argv
    port = int(command[8])
    with socket.socket() as sock:  # free: it can be bound
        sock.bind(("127.0.0.1", port))
    assert port != 29500
    given = relaunch_command(argv, {"MEMQA_ACCELERATE": options + " --main_process_port 29611"})
    assert given == [*launch, "--main_process_port", "29611", *argv]


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    if name == "fsdp":
        assert config.distributed_type == "FSDP" and config.mixed_precision == "bf16"
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    else:
        assert config.distributed_type == "MULTI_GPU"


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(root, seed)).
MARGINS = [sft_in_one_process]
