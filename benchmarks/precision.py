"""One cell's SFT and evaluation in fp32 and in bf16 (sft.compute_dtype): wall times, and how far the answers move.

    .venv/bin/python benchmarks/precision.py                           # after `make repro`: cell L1-n120-s0
    .venv/bin/python benchmarks/precision.py --level 0 --size 60 --seed 1 --model gemma3-270m

For each dtype it trains the cell on its training set (params.yaml's `sft`, the dtype swapped) into a temporary
folder, then evaluates that adapter greedily on both test sets as the evaluate stage does (params.yaml's
`evaluate`, synonyms applied). It counts answers whose text, and judgements whose correctness, differ from fp32's.
Writes benchmarks/results/precision-<model>.json. Run it alone: the wall times are the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from memqa import paths
from memqa.accuracy import DOMAINS
from memqa.config import load_params
from memqa.distributed import process_state
from memqa.environment import versions
from memqa.evaluation import predict
from memqa.facts import read_facts
from memqa.matching import with_synonyms
from memqa.models import load_for_eval
from memqa.training import fine_tune

DTYPES = ("float32", "bfloat16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--level", type=int, default=1, help="the cell of the default grid to train")
    parser.add_argument("--size", default="120", help="its training-set size (a number or 'all')")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def timed_cell(train: list[dict], tests: list[dict], params, dtype: str, model: str, seed: int,
               work: Path) -> tuple[dict, list]:
    """Train the cell in dtype and evaluate it: (wall times and loss, the prediction rows)."""
    sft = params.sft.model_copy(update={"compute_dtype": dtype})
    started = time.perf_counter()
    info = fine_tune(train, sft, seed, paths.model_dir(model), work / dtype, work / f"{dtype}.csv")
    sft_s = time.perf_counter() - started
    net, tokenizer = load_for_eval(paths.model_dir(model), work / dtype, sft.method, sft)
    started = time.perf_counter()
    rows = predict(net, tokenizer, tests, params.evaluate, process_state())
    eval_s = time.perf_counter() - started
    return {"sft_wall_s": round(sft_s, 1), "sft_train_wall_s": info["wall_s"], "final_loss": info["final_loss"],
            "eval_wall_s": round(eval_s, 1), "correct": sum(r["correct"] for r in rows)}, rows


def main() -> None:
    args = parse_args()
    params = load_params()
    cell = paths.cell_name(args.level, args.size, args.seed)
    train = read_facts(paths.train_set(args.model, cell), "run `make repro` first")
    tests = with_synonyms([f for domain in DOMAINS
                           for f in read_facts(paths.test_set(args.model, domain), "run `make repro` first")],
                          params.matching)
    result = {"model": args.model, "cell": cell, "method": params.sft.method, "test_facts": len(tests),
              "eval_batch": params.evaluate.batch_size, "threads": torch.get_num_threads(),
              "load_average_1m_start": os.getloadavg()[0], "versions": versions(), "dtypes": {}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            result["dtypes"][dtype], rows[dtype] = timed_cell(train, tests, params, dtype, args.model, args.seed,
                                                              Path(tmp))
            print(dtype, json.dumps(result["dtypes"][dtype]), flush=True)
    pairs = list(zip(rows["float32"], rows["bfloat16"], strict=True))
    result["bfloat16_vs_float32"] = {"outputs_equal": sum(a["output"] == b["output"] for a, b in pairs),
                                     "correct_equal": sum(a["correct"] == b["correct"] for a, b in pairs),
                                     "facts": len(pairs)}
    result["load_average_1m_end"] = os.getloadavg()[0]
    out = Path(f"benchmarks/results/precision-{args.model}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["bfloat16_vs_float32"]), f"wrote {out}")


if __name__ == "__main__":
    main()
