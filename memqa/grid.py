"""The results grid (metrics/grid.csv): per model, training level, size and domain, accuracy per test level,
headline and micro accuracy, each a mean with its 95% interval over seeds and test facts."""
from __future__ import annotations

import csv
import json
import math
import re
from functools import partial
from pathlib import Path

import numpy as np

from memqa.accuracy import DOMAINS
from memqa.errors import MemqaError
from memqa.io import read_jsonl
from memqa.paths import cell_name, size_label, train_set
from memqa.stats import Arm, bootstrap, headline_of, micro_of
from memqa.verdicts import Study

KEYS = ["model", "train_level", "size", "domain", "seeds", "train_facts", "headline", "headline_low", "headline_high",
        "micro", "micro_low", "micro_high", "levels_left_out"]


def columns(n_levels: int) -> list[str]:
    per_level = [f"L{lv}{part}" for lv in range(n_levels) for part in ("", "_low", "_high")]
    return KEYS + per_level + [f"n_L{lv}" for lv in range(n_levels)]


def current_cells(models: list[str], split_conf: dict) -> list[dict]:
    """The cells the current params ask for: per model the untrained base, then levels x sizes x seeds."""
    cells = []
    for model in models:
        cells.append({"model": model, "cell": "base", "train_level": "base", "size": "0", "seed": ""})
        for level in split_conf["levels"]:
            for size in split_conf["sizes"]:
                for seed in split_conf["seeds"]:
                    cells.append({"model": model, "cell": cell_name(level, size, seed), "train_level": str(level),
                                  "size": size_label(size), "seed": str(seed)})
    return cells


def read_cells(metrics_root: Path, eval_root: Path, cells: list[dict]) -> list[dict]:
    """Each current cell with its metrics and per-fact predictions: exactly these cells, never a glob, and a
    cell in the params without metrics is an error. Cells skipped for an empty training set are dropped."""
    found = []
    missing = [c for c in cells if not (metrics_root / "eval" / c["model"] / f"{c['cell']}.json").is_file()]
    if missing:
        first = metrics_root / "eval" / missing[0]["model"] / f"{missing[0]['cell']}.json"
        raise MemqaError(f"{len(missing)} evaluated cells of the current params are missing (first: {first}): "
                         "run `dvc repro`")
    for cell in cells:
        metrics = json.loads((metrics_root / "eval" / cell["model"] / f"{cell['cell']}.json").read_text())
        if metrics.get("skipped"):
            continue
        found.append({**cell, "metrics": metrics,
                      "predictions": read_jsonl(eval_root / cell["model"] / f"{cell['cell']}.jsonl")})
    return found


def training_relations(cells: list[dict]) -> dict[str, dict[int, set[str]]]:
    """model -> training level -> the relations its training sets (every size and seed) hold."""
    out: dict[str, dict[int, set[str]]] = {}
    for cell in cells:
        if cell["cell"] != "base":
            rows = read_jsonl(train_set(cell["model"], cell["cell"]))
            out.setdefault(cell["model"], {}).setdefault(int(cell["train_level"]), set()).update(
                r["relation"] for r in rows)
    return out


def studies(cells: list[dict], train_relations: dict[str, dict[int, set[str]]], n_levels: int) -> list[Study]:
    """Per model and domain: the test facts (in the base's order) and each cell group's correctness matrix."""
    out = []
    for model in dict.fromkeys(c["model"] for c in cells):
        mine = [c for c in cells if c["model"] == model]
        base = next((c for c in mine if c["cell"] == "base"), mine[0])
        for domain in DOMAINS:
            facts = [p for p in base["predictions"] if p["domain"] == domain]
            if not facts:
                continue
            order = {p["fact_id"]: i for i, p in enumerate(facts)}
            study = Study(model, domain, np.array([p["level"] for p in facts]),
                          np.array([p["relation"] for p in facts]), n_levels)
            groups: dict[tuple[str, str], list[np.ndarray]] = {}
            for cell in mine:
                row = np.zeros(len(facts))
                for p in cell["predictions"]:
                    if p["fact_id"] in order:
                        row[order[p["fact_id"]]] = float(p["correct"])
                groups.setdefault((cell["train_level"], cell["size"]), []).append(row)
            study.cells = {(int(level), size): np.vstack(rows) for (level, size), rows in groups.items()
                           if level != "base"}
            study.base = np.vstack(groups[("base", "0")]) if ("base", "0") in groups else None
            study.train_relations = train_relations.get(model, {})
            out.append(study)
    return out


def grid_rows(all_studies: list[Study], cells: list[dict], min_facts: int, replicates: int) -> list[dict]:
    """One row per (model, training level, size, domain), base included: mean and 95% interval over seeds and
    test facts of the headline, micro accuracy and every test level's accuracy."""
    rows = []
    for study in all_studies:
        groups = ([("base", "0", study.base)] if study.base is not None else []) + [
            (str(level), size, matrix) for (level, size), matrix in sorted(study.cells.items())]
        for level, size, matrix in groups:
            train_facts = [c["metrics"].get("train_facts", 0) for c in cells
                           if c["model"] == study.model and c["train_level"] == level and c["size"] == size]
            arm = [Arm(matrix)]
            head = bootstrap(arm, study.levels, partial(headline_of, n_levels=study.n_levels, min_facts=min_facts),
                             replicates=replicates)
            micro = bootstrap(arm, study.levels, partial(micro_of, n_levels=study.n_levels, min_facts=min_facts),
                              replicates=replicates)
            row = {"model": study.model, "train_level": level, "size": size, "domain": study.domain,
                   "seeds": matrix.shape[0], "train_facts": round(float(np.mean(train_facts)), 1) if train_facts else 0,
                   "headline": head.value, "headline_low": head.low, "headline_high": head.high,
                   "micro": micro.value, "micro_low": micro.low, "micro_high": micro.high,
                   "levels_left_out": " ".join(str(lv) for lv in range(study.n_levels)
                                               if (study.levels == lv).sum() < min_facts)}
            for lv in range(study.n_levels):
                on_level = study.levels == lv
                row[f"n_L{lv}"] = int(on_level.sum())
                if on_level.any():
                    est = bootstrap([Arm(matrix[:, on_level])], study.levels[on_level],
                                    lambda m, test_levels: 100.0 * float(m.mean()), replicates=replicates)
                    row.update({f"L{lv}": est.value, f"L{lv}_low": est.low, f"L{lv}_high": est.high})
                else:
                    row.update({f"L{lv}": None, f"L{lv}_low": None, f"L{lv}_high": None})
            # an undefined estimate (no test level with min_facts facts) is an empty cell, never NaN
            rows.append({k: (None if math.isnan(v) else round(v, 2)) if isinstance(v, float) else v
                         for k, v in row.items()})
    return rows


def summary(rows: list[dict]) -> dict:
    """Headline mean and interval keyed model -> cell group -> domain (what `dvc exp show` and `metrics diff`
    compare)."""
    out: dict = {}
    for row in rows:
        group = "base" if row["train_level"] == "base" else f"L{row['train_level']}-n{row['size']}"
        out.setdefault(row["model"], {}).setdefault(group, {})[row["domain"]] = {
            "headline": row["headline"], "low": row["headline_low"], "high": row["headline_high"],
            "micro": row["micro"]}
    return out


def read_grid(path: Path) -> list[dict]:
    """metrics/grid.csv with numbers parsed; the level columns are whatever the file holds."""
    if not path.is_file():
        raise MemqaError(f"{path} not found: run `dvc repro summarize` first")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in list(row):
            if re.fullmatch(r"(headline|micro|L\d+)(_low|_high)?|train_facts", key):
                row[key] = float(row[key]) if row[key] not in ("", None) else None
            elif re.fullmatch(r"n_L\d+|seeds", key):
                row[key] = int(row[key] or 0)
    return rows


def grid_levels(rows: list[dict]) -> range:
    """The test levels a grid holds (from its columns)."""
    if not rows:
        return range(0)
    return range(sum(1 for key in rows[0] if re.fullmatch(r"n_L\d+", key)))
