"""Intervals and tests for every number REPORT.md states: a bootstrap over seeds and test facts.

The unit of data is a correctness matrix per grid cell group: rows = seeds (independent training sets and
training randomness), columns = test facts (the same facts for every seed and every cell of a model, so
comparisons between cells are paired over facts). A bootstrap replicate resamples seeds with replacement
and, within each test level, facts with replacement (so every level keeps its size and the headline its
definition); the interval is the percentile interval of the replicates (numpy's quantile).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memqa.accuracy import headline, kept_accuracies

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: correctness [seeds x facts] of a cell group on a model's test facts."""

    correct: np.ndarray  # bool or 0/1, shape (seeds, facts)

    @property
    def seeds(self) -> int:
        return self.correct.shape[0]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    facts: int
    seeds: int

    def as_dict(self) -> dict:
        return {"value": round(self.value, 2), "low": round(self.low, 2), "high": round(self.high, 2),
                "facts": self.facts, "seeds": self.seeds}


def level_accuracies(correct: np.ndarray, levels: np.ndarray, n_levels: int) -> tuple[list[float | None], list[int]]:
    """Accuracy (%) per test level, mean over seeds (None for a level without facts), and facts per level."""
    accuracies: list[float | None] = []
    counts = []
    for level in range(n_levels):
        mask = levels == level
        counts.append(int(mask.sum()))
        accuracies.append(100.0 * float(correct[:, mask].mean()) if counts[-1] else None)
    return accuracies, counts


def kept_level_accuracies(correct: np.ndarray, levels: np.ndarray, n_levels: int,
                          min_facts: int) -> list[float | None]:
    """Accuracy (%) per test level, None for a level the min-facts rule (memqa.accuracy) leaves out."""
    return kept_accuracies(*level_accuracies(correct, levels, n_levels), min_facts)


def headline_of(correct: np.ndarray, test_levels: np.ndarray, n_levels: int, min_facts: int) -> float:
    """memqa.accuracy.headline of a correctness matrix, NaN where it is undefined: the bootstrap's statistic."""
    value = headline(*level_accuracies(correct, test_levels, n_levels), min_facts)
    return float("nan") if value is None else value


def micro_of(correct: np.ndarray, test_levels: np.ndarray, n_levels: int, min_facts: int) -> float:
    return 100.0 * float(correct.mean())


def _resample_facts(rng: np.random.Generator, levels: np.ndarray) -> np.ndarray:
    """Fact indices resampled with replacement within each test level."""
    picks = [rng.choice(np.flatnonzero(levels == level), size=int((levels == level).sum()))
             for level in np.unique(levels)]
    return np.concatenate(picks) if picks else np.arange(0)


def bootstrap(arms: Sequence[Arm], levels: np.ndarray, statistic: Callable[..., float], *,
              replicates: int = 2000, seed: int = 0, confidence: float = CONFIDENCE) -> Estimate:
    """statistic(*correctness matrices, test_levels=...) with a percentile interval.

    Each replicate resamples the test facts once (stratified by level) and applies the same fact sample to
    every arm (paired over facts); seeds are resampled independently per arm (their training sets differ).
    """
    levels = np.asarray(levels)
    matrices = [np.asarray(a.correct, dtype=float) for a in arms]
    point = statistic(*matrices, test_levels=levels)
    rng = np.random.default_rng(seed)
    values = np.empty(replicates)
    for b in range(replicates):
        facts = _resample_facts(rng, levels)
        resampled = [m[rng.integers(m.shape[0], size=m.shape[0])][:, facts] for m in matrices]
        values[b] = statistic(*resampled, test_levels=levels[facts])
    values = values[~np.isnan(values)]
    tail = (1 - confidence) / 2
    low, high = (np.quantile(values, [tail, 1 - tail]) if len(values) else (float("nan"), float("nan")))
    return Estimate(float(point), float(low), float(high), int(len(levels)), min(a.seeds for a in arms))


def verdict(estimate: Estimate, threshold: float = 0.0, *, higher_is_claim: bool = True) -> str:
    """reproduced when the whole interval lies on the claim's side of the threshold, contradicted when it lies
    wholly on the other side, inconclusive when it straddles it (or there is no data)."""
    low, high = estimate.low, estimate.high
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    if not higher_is_claim:
        low, high, threshold = -high, -low, -threshold
    if low > threshold:
        return "reproduced"
    if high < threshold:
        return "contradicted"
    return "inconclusive"


def level_slope(accuracies: Sequence[float | None]) -> float:
    """Least-squares slope of accuracy (points) against test level over the levels present: the trend statistic."""
    points = [(level, a) for level, a in enumerate(accuracies) if a is not None]
    if len(points) < 2:
        return float("nan")
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def cohen_kappa(a: Sequence, b: Sequence, labels: Sequence | None = None, weights: str | None = None) -> float | None:
    """Cohen's kappa of two labellings of the same items, to 4 places; None where it is undefined (constant input)."""
    from sklearn.metrics import cohen_kappa_score

    if not len(a):
        return None
    value = cohen_kappa_score(list(a), list(b), labels=None if labels is None else list(labels), weights=weights)
    return None if value != value else round(float(value), 4)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation, to 4 places; None where it is undefined (constant input)."""
    from scipy.stats import spearmanr

    value = spearmanr(list(a), list(b)).statistic
    return None if value != value else round(float(value), 4)
