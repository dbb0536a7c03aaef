"""Accuracy per test memory level, and the headline.

The headline is defined here and nowhere else: the paper's unweighted mean of the per-level accuracies,
taken over the test levels holding at least `report.min_level_facts` test facts (a level of one or two facts
would swing it by tens of points); the levels left out are listed beside it.
"""
from __future__ import annotations

from collections.abc import Sequence

DOMAINS = ("id", "ood")


def headline(level_accuracies: Sequence[float | None], counts: Sequence[int] | None = None,
             min_facts: int = 1) -> float | None:
    """The headline: unweighted mean of the level accuracies, over levels with an accuracy (None = no facts)
    and, when counts are given, at least min_facts test facts."""
    counts = counts if counts is not None else [min_facts] * len(level_accuracies)
    present = [a for a, n in zip(level_accuracies, counts, strict=True) if a is not None and n >= min_facts]
    return sum(present) / len(present) if present else None


def accuracy_metrics(predictions: list[dict], n_levels: int, min_facts: int = 1) -> dict:
    """Per domain: accuracy per test level, headline (levels with >= min_facts facts) and micro accuracy,
    facts per level, and the levels the headline leaves out."""
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
            "n": n,
            "levels_left_out": [lv for lv in range(n_levels) if n[lv] < max(1, min_facts)],
        }
    return metrics
