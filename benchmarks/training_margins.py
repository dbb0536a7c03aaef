"""Margins of the tests' assertions on what a trained tiny model learned, across seeds, threads and CPU kernels.

    nice -n 19 .venv/bin/python benchmarks/training_margins.py            # both kernel sets: 10 min on 2 cores
    nice -n 19 .venv/bin/python benchmarks/training_margins.py --kernels native --seeds 2   # a quick look

The rule (docs/development.md, "The rule for tests that train"): a test that trains a model asserts only what holds
with margin wherever float rounding differs. Each test module that trains lists its assertions on what training
learned in MARGINS: functions of the module's taught model (built by its `build(seed)` or `build(root, seed)`, the
fixture's function) that return the tests.tiny.Margin values its tests assert. This script builds each module's
model for every seed (the model's init and the teaching order) under 1 and 2 torch threads, here (this CPU's
kernels) and in a child process on AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2: the code
path of an AVX2-only CPU such as CI's AMD EPYC, where the tests once failed), and writes
benchmarks/results/training_margins.json: per assertion the threshold, every run's value and the smallest margin
seen (negative: a run in which the assertion fails). The tests themselves run seed 0 on 1 thread.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' progress bars, one per model (the probe's stays)
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")  # deprecation warnings of the libraries, once per model built
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "results" / "training_margins.json"
MODULES = ["tests.test_estimators", "tests.test_sft_evaluate", "tests.test_probe", "tests.test_engine",
           "tests.test_distributed_inference", "tests.test_distributed"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def run_module(name: str, seed: int, threads: int, kernels: str) -> list[dict]:
    """Build the module's taught model for this seed and run each of its MARGINS functions on it."""
    module = importlib.import_module(name)
    run = {"seed": seed, "threads": threads, "kernels": kernels}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        takes_root = "root" in inspect.signature(module.build).parameters
        world = module.build(Path(tmp), seed) if takes_root else module.build(seed)
        records = []
        for check in module.MARGINS:
            key = {"module": name.removeprefix("tests."), "check": check.__name__}
            try:
                margins = check(world)
            except AssertionError as error:  # a guarantee the check asserts outright: recorded, not raised
                line = traceback.extract_tb(error.__traceback__)[-1].line
                records.append({**key, **run, "name": "(assertion)", "error": f"{line} {str(error)[:300]}"})
                continue
            records += [{**key, **run, "name": m.name, "value": m.value, "margin": m.margin,
                         "threshold": None if math.isnan(m.threshold) else m.threshold,
                         "at_least": m.at_least} for m in margins]
        print(f"{kernels} threads={threads} seed={seed} {name}: {time.time() - started:.0f} s", flush=True)
    return records


def run_all(seeds: int, kernels: str) -> list[dict]:
    records = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the thread count changes float summation order, hence the weights
        for seed in range(seeds):
            for name in MODULES:
                records += run_module(name, seed, threads, kernels)
    return records


def in_child(seeds: int, kernels: str) -> list[dict]:
    """The same runs in a fresh process: the CPU kernel set is chosen when torch loads."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--seeds", str(seeds), "--child", out.name],
                       env={**os.environ, **AVX2}, check=True)
        return json.loads(Path(out.name).read_text())


def summarize(records: list[dict]) -> list[dict]:
    """One row per assertion: threshold, smallest margin and the run it came from, every run's value."""
    rows: dict[tuple, dict] = {}
    for r in records:
        row = rows.setdefault((r["module"], r["check"], r["name"]), {
            "module": r["module"], "check": r["check"], "assertion": r["name"], "threshold": None, "kind": None,
            "smallest_margin": None, "worst_run": None, "range": None, "errors": 0, "runs": []})
        run = {k: r[k] for k in ("seed", "threads", "kernels")}
        if "error" in r:
            row["errors"] += 1
            row["runs"].append({**run, "error": r["error"]})
            continue
        row["threshold"] = r["threshold"]
        row["kind"] = "observed" if r["threshold"] is None else "at_least" if r["at_least"] else "at_most"
        row["runs"].append({**run, "value": round(r["value"], 6)})
        if r["threshold"] is not None and (row["smallest_margin"] is None or r["margin"] < row["smallest_margin"]):
            row["smallest_margin"], row["worst_run"] = round(r["margin"], 6), run
    for row in rows.values():
        values = [run["value"] for run in row["runs"] if "value" in run]
        row["range"] = [min(values), max(values)] if values else None
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kernels", choices=["both", "native", "avx2"], default="both")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: write the records here
    args = parser.parse_args()
    if args.child:
        Path(args.child).write_text(json.dumps(run_all(args.seeds, "avx2")))
        return
    started, load = time.time(), os.getloadavg()
    records = run_all(args.seeds, "native") if args.kernels != "avx2" else []
    records += in_child(args.seeds, "avx2") if args.kernels != "native" else []
    rows = summarize(records)
    result = {"command": " ".join(["benchmarks/training_margins.py", *sys.argv[1:]]), "seeds": args.seeds,
              "threads": [1, 2], "kernels": {"native": torch.backends.cpu.get_cpu_capability(), "avx2": AVX2},
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "load_average_at_start": [round(x, 2) for x in load], "wall_s": round(time.time() - started, 1),
              "failing": [r["assertion"] for r in rows if (r["smallest_margin"] or 0) < 0 or r["errors"]],
              "assertions": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("| module | assertion | threshold | smallest margin | worst run |\n|---|---|---:|---:|---|")
    for r in rows:
        worst = r["worst_run"] and f"seed {r['worst_run']['seed']}, {r['worst_run']['threads']} thr, " \
                                   f"{r['worst_run']['kernels']}"
        shown = r["smallest_margin"] if r["kind"] != "observed" else f"observed {r['range']}"
        print(f"| {r['module']} | {r['assertion']} | {r['threshold']} | {shown} | {worst} |")
    print(f"{OUT} in {result['wall_s']} s; failing: {result['failing']}")


if __name__ == "__main__":
    main()
