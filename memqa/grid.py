"""The results grid (metrics/grid.csv): per model, training level, size and domain, accuracy per test level,
headline and micro accuracy, each a mean with its 95% interval over seeds and test facts."""
from __future__ import annotations

import csv
import math
import re
from functools import partial
from pathlib import Path

import numpy as np

from memqa.accuracy import levels_left_out
from memqa.config import Report
from memqa.errors import MemqaError
from memqa.stats import Arm, bootstrap, headline_of, micro_of
from memqa.study import Study

KEYS = ["model", "train_level", "size", "domain", "seeds", "train_facts", "headline", "headline_low", "headline_high",
        "micro", "micro_low", "micro_high", "levels_left_out"]


def columns(n_levels: int) -> list[str]:
    per_level = [f"L{lv}{part}" for lv in range(n_levels) for part in ("", "_low", "_high")]
    return KEYS + per_level + [f"n_L{lv}" for lv in range(n_levels)]


def _estimates(study: Study, matrix: np.ndarray, report: Report) -> dict:
    """Headline, micro accuracy and every test level's accuracy of one cell group, each with its interval."""
    arm, min_facts, replicates = [Arm(matrix)], report.min_level_facts, report.bootstrap_replicates
    head = bootstrap(arm, study.levels, partial(headline_of, n_levels=study.n_levels, min_facts=min_facts),
                     replicates=replicates)
    micro = bootstrap(arm, study.levels, partial(micro_of, n_levels=study.n_levels, min_facts=min_facts),
                      replicates=replicates)
    counts = study.level_counts()
    row = {"headline": head.value, "headline_low": head.low, "headline_high": head.high,
           "micro": micro.value, "micro_low": micro.low, "micro_high": micro.high,
           "levels_left_out": " ".join(str(lv) for lv in levels_left_out(counts, min_facts))}
    for lv in range(study.n_levels):
        on_level = study.levels == lv
        row[f"n_L{lv}"] = counts[lv]
        if on_level.any():
            est = bootstrap([Arm(matrix[:, on_level])], study.levels[on_level],
                            lambda m, test_levels: 100.0 * float(m.mean()), replicates=replicates)
            row.update({f"L{lv}": est.value, f"L{lv}_low": est.low, f"L{lv}_high": est.high})
        else:
            row.update({f"L{lv}": None, f"L{lv}_low": None, f"L{lv}_high": None})
    return row


def grid_rows(studies: list[Study], report: Report) -> list[dict]:
    """One row per (model, training level, size, domain), base included: mean and 95% interval over seeds and
    test facts of the headline, micro accuracy and every test level's accuracy."""
    rows = []
    for study in studies:
        groups = ([("base", "0", study.base)] if study.base is not None else []) + [
            (str(level), size, matrix) for (level, size), matrix in sorted(study.cells.items())]
        for level, size, matrix in groups:
            train_facts = study.train_facts.get((level, size), [])
            row = {"model": study.model, "train_level": level, "size": size, "domain": study.domain,
                   "seeds": matrix.shape[0], "train_facts": round(float(np.mean(train_facts)), 1) if train_facts else 0,
                   **_estimates(study, matrix, report)}
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
