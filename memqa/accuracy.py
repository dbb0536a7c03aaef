"""Accuracy per test memory level, and the headline.

The headline is defined here and nowhere else: the unweighted mean of the per-level accuracies over the
test levels that hold facts (the paper's mean of five when all are present).
"""
from __future__ import annotations

from collections.abc import Sequence

DOMAINS = ("id", "ood")


def headline(level_accuracies: Sequence[float | None]) -> float | None:
    """The paper's headline: unweighted mean of the accuracies of the levels present (None = no facts)."""
    present = [a for a in level_accuracies if a is not None]
    return sum(present) / len(present) if present else None


def accuracy_metrics(predictions: list[dict], n_levels: int) -> dict:
    """Per domain: accuracy per test level, headline and micro accuracy, facts per level, levels missing."""
    metrics = {}
    for domain in DOMAINS:
        rows = [p for p in predictions if p["domain"] == domain]
        n = [sum(p["level"] == lv for p in rows) for lv in range(n_levels)]
        acc = [round(100 * sum(p["correct"] for p in rows if p["level"] == lv) / n[lv], 2) if n[lv] else None
               for lv in range(n_levels)]
        mean = headline(acc)
        metrics[domain] = {
            "headline": None if mean is None else round(mean, 2),
            "micro": round(100 * sum(p["correct"] for p in rows) / len(rows), 2) if rows else None,
            **{f"L{lv}": acc[lv] for lv in range(n_levels)},
            "n": n,
            "levels_missing": [lv for lv in range(n_levels) if not n[lv]],
        }
    return metrics
