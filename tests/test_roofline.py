"""benchmarks/roofline.py runs end to end on a tiny model: the probe's GFLOP/s per dtype and method, the roofline
it is compared with, and the ops profile."""
import json
import os
import subprocess
import sys
from pathlib import Path

from memqa.io import write_jsonl
from tests import tiny

REPO = Path(__file__).resolve().parents[1]


def test_roofline_reports_the_probe_s_gflops_against_the_matmul_roofline_per_dtype(tmp_path):
    facts = tiny.synthetic_facts(4, "P19")
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "facts.jsonl", facts)
    tokenizer = tiny.make_tokenizer([s for fact in facts for s in tiny.statements(fact, 21)])
    tiny.save(tiny.make_model(tokenizer), tokenizer, tmp_path / "data" / "models" / "tiny")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "roofline.py"), "--model", "tiny", "--facts", "2",
                          "--repeats", "1", "--threads", "1"], cwd=tmp_path, env=env, timeout=600,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "benchmarks" / "results" / "roofline-tiny.json").read_text())
    assert set(result["probe"]) == {"float32", "bfloat16"}
    for runs in result["probe"].values():
        assert all(r["gflops"] > 0 and r["gflop_per_s"] > 0 for r in runs.values())
    assert all(result["roofline"][shape]["bfloat16"] > 0 for shape in ("head_64", "head_210", "square_2048"))
    assert all(result["ops"][dtype] for dtype in result["probe"])
