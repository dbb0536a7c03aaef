"""The study model the grid and the verdicts read: the current params' evaluated cells, and per model and test
domain a `Study` (the test facts and each cell group's correctness matrix over them, in the same fact order, so
comparisons are paired over facts)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memqa import paths
from memqa.accuracy import DOMAINS
from memqa.artifacts import gold_in_subject
from memqa.config import Params, Split
from memqa.errors import MemqaError
from memqa.io import read_jsonl


@dataclass
class Study:
    """One model and test domain: test facts (levels, relations) and each cell group's correctness."""

    model: str
    domain: str
    levels: np.ndarray  # test level per fact
    relations: np.ndarray  # relation per test fact
    n_levels: int
    cells: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # (train level, size) -> [seeds x facts]
    base: np.ndarray | None = None  # the untrained model's correctness [1 x facts]
    train_facts: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (level or base, size) -> per seed
    seeds: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (level, size) -> each row's seed
    fact_ids: np.ndarray | None = None  # per test fact
    echo: np.ndarray | None = None  # per test fact: a gold form sits inside the subject (memqa.artifacts)

    def seeds_of(self, key: tuple[int, str]) -> list[int]:
        """The seed of each row of a cell group (0, 1, ... where the study was built without them)."""
        return self.seeds.get(key, list(range(self.cells[key].shape[0])))

    def arm(self, train_level: int, sizes: list[str] | None = None) -> dict[int, np.ndarray]:
        """seed -> correctness over the test facts, the mean over the training level's sizes (all, or `sizes`)
        run at that seed: the unit the verdicts pair on (a seed's cells share training randomness)."""
        rows: dict[int, list[np.ndarray]] = {}
        for (level, size), matrix in sorted(self.cells.items()):
            if level == train_level and (sizes is None or size in sizes):
                for seed, row in zip(self.seeds_of((level, size)), matrix, strict=True):
                    rows.setdefault(seed, []).append(row)
        return {seed: np.mean(r, axis=0) for seed, r in sorted(rows.items())}

    def subset(self, mask: np.ndarray) -> Study:
        """The same study on the test facts the mask keeps."""
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[mask]

        return Study(self.model, self.domain, self.levels[mask], self.relations[mask], self.n_levels,
                     {k: m[:, mask] for k, m in self.cells.items()},
                     None if self.base is None else self.base[:, mask], self.train_facts, self.seeds,
                     pick(self.fact_ids), pick(self.echo))

    def train_levels(self) -> list[int]:
        return sorted({level for level, _ in self.cells})

    def level_counts(self) -> list[int]:
        """Test facts per test level."""
        return [int((self.levels == level).sum()) for level in range(self.n_levels)]


def current_cells(models: list[str], split: Split) -> list[dict]:
    """The cells the current params ask for: per model the untrained base, then levels x sizes x seeds."""
    cells = []
    for model in models:
        cells.append({"model": model, "cell": "base", "train_level": "base", "size": "0", "seed": ""})
        for level in split.levels:
            for size in split.sizes:
                for seed in split.seeds:
                    cells.append({"model": model, "cell": paths.cell_name(level, size, seed), "train_level": str(level),
                                  "size": paths.size_label(size), "seed": str(seed)})
    return cells


def _metrics_file(metrics_root: Path, cell: dict) -> Path:
    return metrics_root / paths.eval_metrics(cell["model"], cell["cell"]).relative_to(paths.METRICS)


def read_cells(metrics_root: Path, eval_root: Path, cells: list[dict]) -> list[dict]:
    """Each current cell with its metrics and per-fact predictions: exactly these cells, never a glob, and a
    cell in the params without metrics is an error. Cells skipped for an empty training set are dropped."""
    missing = [c for c in cells if not _metrics_file(metrics_root, c).is_file()]
    if missing:
        raise MemqaError(f"{len(missing)} evaluated cells of the current params are missing (first: "
                         f"{_metrics_file(metrics_root, missing[0])}): run `dvc repro`")
    found = []
    for cell in cells:
        metrics = json.loads(_metrics_file(metrics_root, cell).read_text())
        if metrics.get("skipped"):
            continue
        predictions = eval_root / paths.predictions(cell["model"], cell["cell"]).relative_to(paths.EVAL_DATA)
        found.append({**cell, "metrics": metrics, "predictions": read_jsonl(predictions)})
    return found


def _correctness(cell: dict, order: dict[str, int]) -> np.ndarray:
    """A cell's correctness over the study's test facts, in their order."""
    row = np.zeros(len(order))
    for p in cell["predictions"]:
        if p["fact_id"] in order:
            row[order[p["fact_id"]]] = float(p["correct"])
    return row


def _echo(facts: list[dict]) -> np.ndarray | None:
    """Per test fact, whether a gold form sits in the subject (None for predictions that do not name both)."""
    if not all("subject" in p and "gold" in p for p in facts):
        return None
    return np.array([gold_in_subject({**p, "answers": p["gold"]}) for p in facts], dtype=bool)


def _study(model: str, domain: str, facts: list[dict], mine: list[dict], n_levels: int) -> Study:
    order = {p["fact_id"]: i for i, p in enumerate(facts)}
    study = Study(model, domain, np.array([p["level"] for p in facts]), np.array([p["relation"] for p in facts]),
                  n_levels, fact_ids=np.array([p["fact_id"] for p in facts]),
                  echo=_echo(facts))
    groups: dict[tuple[str, str], list[np.ndarray]] = {}
    for cell in mine:
        groups.setdefault((cell["train_level"], cell["size"]), []).append(_correctness(cell, order))
        if cell["train_level"] != "base":
            study.seeds.setdefault((int(cell["train_level"]), cell["size"]), []).append(int(cell["seed"]))
        study.train_facts.setdefault((cell["train_level"], cell["size"]), []).append(
            cell["metrics"].get("train_facts", 0))
    study.cells = {(int(level), size): np.vstack(rows) for (level, size), rows in groups.items() if level != "base"}
    study.base = np.vstack(groups[("base", "0")]) if ("base", "0") in groups else None
    return study


def studies(cells: list[dict], n_levels: int) -> list[Study]:
    """Per model and domain: the test facts (in the base's order) and each cell group's correctness matrix."""
    out = []
    for model in dict.fromkeys(c["model"] for c in cells):
        mine = [c for c in cells if c["model"] == model]
        base = next((c for c in mine if c["cell"] == "base"), mine[0])
        for domain in DOMAINS:
            facts = [p for p in base["predictions"] if p["domain"] == domain]
            if facts:
                out.append(_study(model, domain, facts, mine, n_levels))
    return out


def load_studies(params: Params, metrics_root: Path = paths.METRICS, eval_root: Path = paths.EVAL_DATA) -> list[Study]:
    """The studies of the current params' cells (models x split.levels x sizes x seeds and each base)."""
    cells = read_cells(metrics_root, eval_root, current_cells(list(params.models), params.split))
    return studies(cells, params.probe.n_levels)
