import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memqa.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _dvc(args: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def make_project(tmp_path: Path, params_update: dict) -> Path:
    """A copy of the repository's pipeline in a fresh git repo, with params overridden."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, project / name)
    # benchmarks/results: the report stage quotes it; presets: it diffs the params against presets/paper.args
    for folder in ("stages", "memqa", "benchmarks/results", "presets"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in params_update.items():
        params[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    return project


def test_download_stage_runs_in_dvc_then_is_a_noop(eq_dir, tmp_path):
    project = make_project(tmp_path, {"download": {"source": "unused-offline", "seed": 0,
                                                   "per_relation": {"train": 3, "dev": 0, "test": 2}}})
    env = {**os.environ, "MEMQA_EQ_SOURCE": str(eq_dir), "PYTHONPATH": str(project),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    _dvc(["init", "-q"], project, env)
    first = _dvc(["repro", "download"], project, env)
    assert "Running stage 'download'" in first
    assert len(read_jsonl(project / "data" / "facts.jsonl")) == 24 * 5
    second = _dvc(["repro", "download"], project, env)
    assert "Running stage" not in second and "didn't change" in second


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_memqa_download_help_lists_the_source_override():
    done = subprocess.run([str(Path(sys.executable).parent / "memqa"), "download", "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "MEMQA_EQ_SOURCE" in done.stdout
