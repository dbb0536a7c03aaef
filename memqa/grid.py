"""The results grid: one row per (model, cell, domain) with accuracy per test level (metrics/grid.csv)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from memqa.accuracy import DOMAINS
from memqa.errors import MemqaError
from memqa.paths import cell_name, size_label

KEYS = ["model", "train_level", "size", "seed", "train_facts", "domain", "headline", "micro"]


def columns(n_levels: int) -> list[str]:
    return KEYS + [f"L{lv}" for lv in range(n_levels)] + [f"n_L{lv}" for lv in range(n_levels)]


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


def grid_rows(metrics_root: Path, cells: list[dict], n_levels: int) -> list[dict]:
    """One row per (cell, domain) for exactly the given cells: a cell dropped from the params is not read,
    one that is asked for but missing is an error. Cells skipped for an empty training set have no row."""
    paths = {(c["model"], c["cell"]): metrics_root / "eval" / c["model"] / f"{c['cell']}.json" for c in cells}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MemqaError(f"{len(missing)} evaluated cells of the current params are missing (first: {missing[0]}): "
                         "run `dvc repro`")
    rows = []
    for cell in cells:
        metrics = json.loads(paths[(cell["model"], cell["cell"])].read_text())
        if metrics.get("skipped"):
            continue
        for domain in DOMAINS:
            rows.append({"model": cell["model"], "train_level": cell["train_level"], "size": cell["size"],
                         "seed": cell["seed"], "train_facts": metrics.get("train_facts", 0), "domain": domain,
                         "headline": metrics[domain].get("headline"), "micro": metrics[domain].get("micro"),
                         **{f"L{lv}": metrics[domain].get(f"L{lv}") for lv in range(n_levels)},
                         **{f"n_L{lv}": n for lv, n in enumerate(metrics[domain]["n"])}})
    return rows


def summary(rows: list[dict]) -> dict:
    """Headline accuracies keyed model -> cell -> domain: what `dvc exp show` and `metrics diff` compare."""
    out: dict = {}
    for row in rows:
        cell = "base" if row["train_level"] == "base" else cell_name(row["train_level"], row["size"], row["seed"])
        out.setdefault(row["model"], {}).setdefault(cell, {})[row["domain"]] = row["headline"]
    return out


def read_grid(path: Path) -> list[dict]:
    """metrics/grid.csv with numbers parsed; the level columns are whatever the file holds."""
    if not path.is_file():
        raise MemqaError(f"{path} not found: run `dvc repro summarize` first")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in list(row):
            if key in ("headline", "micro") or re.fullmatch(r"L\d+", key):
                row[key] = float(row[key]) if row[key] not in ("", None) else None
            elif re.fullmatch(r"n_L\d+", key):
                row[key] = int(row[key] or 0)
    return rows


def grid_levels(rows: list[dict]) -> range:
    """The test levels a grid holds (from its columns)."""
    if not rows:
        return range(0)
    return range(sum(1 for key in rows[0] if re.fullmatch(r"L\d+", key)))
