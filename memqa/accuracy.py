"""Accuracy per test memory level, and the headline.

The headline and its min-facts rule are defined here and nowhere else: the paper's unweighted mean of the
per-level accuracies, taken over the test levels holding at least `report.min_level_facts` test facts (a level of
one or two facts would swing it by tens of points); the levels left out are listed beside it. The per-cell
metrics, the grid's bootstrap (memqa.stats.headline_of) and every verdict read the rule from here.
"""
from __future__ import annotations

from collections.abc import Sequence

DOMAINS = ("id", "ood")


def _kept(facts: int, min_facts: int) -> bool:
    """The min-facts rule: a test level counts when it holds at least min_facts test facts (and at least one)."""
    return facts >= max(1, min_facts)


def levels_left_out(counts: Sequence[int], min_facts: int) -> list[int]:
    """The test levels the min-facts rule leaves out of the headline and the verdicts."""
    return [level for level, n in enumerate(counts) if not _kept(n, min_facts)]


def kept_accuracies(accuracies: Sequence[float | None], counts: Sequence[int],
                    min_facts: int) -> list[float | None]:
    """Each test level's accuracy, None for a level the min-facts rule leaves out: what the headline averages
    and the trend over test levels fits."""
    return [a if _kept(n, min_facts) else None for a, n in zip(accuracies, counts, strict=True)]


def headline(accuracies: Sequence[float | None], counts: Sequence[int], min_facts: int) -> float | None:
    """The headline: unweighted mean of the level accuracies over the levels the min-facts rule keeps (an
    accuracy of None is a level without facts); None when it keeps none."""
    present = [a for a in kept_accuracies(accuracies, counts, min_facts) if a is not None]
    return sum(present) / len(present) if present else None


def accuracy_metrics(predictions: list[dict], n_levels: int, min_facts: int = 1) -> dict:
    """Per domain: accuracy per test level, headline (levels with >= min_facts facts) and micro accuracy,
    facts per level ({L0: ..}: scalars, which `dvc metrics show` and `dvc exp show` display), and the levels the
    headline leaves out."""
    metrics = {}
    for domain in DOMAINS:
        rows = [p for p in predictions if p["domain"] == domain]
        n = [sum(p["level"] == lv for p in rows) for lv in range(n_levels)]
        acc = [round(100 * sum(p["correct"] for p in rows if p["level"] == lv) / n[lv], 2) if n[lv] else None
               for lv in range(n_levels)]
        mean = headline(acc, n, min_facts)
        metrics[domain] = {
            "headline": None if mean is None else round(mean, 2),
            "micro": round(100 * sum(p["correct"] for p in rows) / len(rows), 2) if rows else None,
            **{f"L{lv}": acc[lv] for lv in range(n_levels)},
            "n": {f"L{lv}": n[lv] for lv in range(n_levels)},  # scalars: `dvc metrics show` drops lists
            "levels_left_out": levels_left_out(n, min_facts),
        }
    return metrics
