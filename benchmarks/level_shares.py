"""Memory-level shares of the same facts under memqa's templates and the paper's, with and without the synonym table.

    nice -n 19 .venv/bin/python benchmarks/level_shares.py --project .

--project: a project after `make repro` on params.yaml (probe.template_set published, matching.synonyms
published): its data/probe/<model>/scores.jsonl is run C. This script probes the same facts with the same probe
params twice more, into a cache of its own: run A with template_set authored and synonyms none, run B with
template_set authored and the project's synonyms; so B vs C is the templates' effect and A vs B the synonyms'.
--before: read run A's scores from that scores.jsonl instead of probing it. Writes
benchmarks/results/level_shares-<model>.json: level counts per probe group of each run, its probe method, and the
facts whose level moved, by transition.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from memqa import paths
from memqa.config import Params, load_params
from memqa.facts import read_facts
from memqa.io import read_jsonl
from memqa.matching import with_synonyms
from memqa.probe import run_probe

GROUPS = ("train", "test_id", "test_ood")


def run_authored(params: Params, project: Path, model: str, cache: Path, synonyms: bool) -> tuple[list[dict], float]:
    """The project's probe with memqa's own templates, with the project's synonym table or with none."""
    conf = params.probe.model_copy(update={"template_set": "authored"})
    matching = params.matching if synonyms else params.matching.model_copy(update={"synonyms": "none"})
    facts = with_synonyms(read_facts(project / paths.FACTS), matching)
    rows, metrics = run_probe(model, conf, facts, project / paths.model_dir(model), cache,
                              project / "memqa/resources/probe_templates.yaml", project / paths.FACTS)
    return rows, metrics["wall_s"]


def moved(before: list[dict], after: list[dict]) -> dict:
    old, new = ({r["fact_id"]: r["level"] for r in rows} for rows in (before, after))
    changes = Counter((old[f], new[f]) for f in old if old[f] != new[f])
    return {"facts": sum(changes.values()), "of": len(old),
            "transitions": {f"{a}->{b}": n for (a, b), n in sorted(changes.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--before", type=Path, help="run A's scores.jsonl (default: probe run A here)")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--cache", type=Path, default=Path("data/cache/level_shares"))
    args = parser.parse_args()
    params = load_params(args.project / "params.yaml")
    a_rows, wall_a = (read_jsonl(args.before), None) if args.before else run_authored(
        params, args.project, args.model, args.cache, synonyms=False)
    b_rows, wall_b = run_authored(params, args.project, args.model, args.cache, synonyms=True)
    runs = {"A_authored_no_synonyms": a_rows, "B_authored_synonyms": b_rows,
            "C_published_synonyms": read_jsonl(args.project / paths.scores(args.model))}
    result = {"model": args.model, "probe_method": params.probe.method, "probe_dtype": params.probe.dtype,
              "probe_wall_s_A": wall_a, "probe_wall_s_B": wall_b,
              "level_counts": {name: {g: [sum(r["group"] == g and r["level"] == lv for r in rows) for lv in range(5)]
                                      for g in GROUPS} for name, rows in runs.items()},
              "moved_by_synonyms_A_to_B": moved(runs["A_authored_no_synonyms"], b_rows),
              "moved_by_templates_B_to_C": moved(b_rows, runs["C_published_synonyms"])}
    out = paths.BENCHMARK_RESULTS / f"level_shares-{args.model}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
