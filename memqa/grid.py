"""The results grid: one row per (model, cell, domain) with accuracy per test level (metrics/grid.csv)."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from memqa.accuracy import DOMAINS
from memqa.errors import MemqaError
from memqa.paths import cell_name

CELL = re.compile(r"^L(?P<level>\d+)-n(?P<size>\w+)-s(?P<seed>\d+)$")
KEYS = ["model", "train_level", "size", "seed", "train_facts", "domain", "headline", "micro"]


def columns(n_levels: int) -> list[str]:
    return KEYS + [f"L{lv}" for lv in range(n_levels)] + [f"n_L{lv}" for lv in range(n_levels)]


def grid_rows(metrics_root: Path, models: list[str], n_levels: int) -> list[dict]:
    """One row per (model, cell, domain); the base model is train_level 'base', size 0."""
    rows = []
    for model in models:
        for path in sorted((metrics_root / "eval" / model).glob("*.json")):
            metrics = json.loads(path.read_text())
            match = CELL.match(path.stem)
            cell = ({"train_level": "base", "size": "0", "seed": ""} if path.stem == "base" else
                    {"train_level": match["level"], "size": match["size"], "seed": match["seed"]} if match else None)
            if cell is None or metrics.get("skipped"):
                continue
            for domain in DOMAINS:
                rows.append({"model": model, **cell, "train_facts": metrics.get("train_facts", 0), "domain": domain,
                             "headline": metrics[domain].get("headline"), "micro": metrics[domain].get("micro"),
                             **{f"L{lv}": metrics[domain].get(f"L{lv}") for lv in range(n_levels)},
                             **{f"n_L{lv}": n for lv, n in enumerate(metrics[domain]["n"])}})
    return rows


def to_csv(rows: list[dict], n_levels: int) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(n_levels))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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
