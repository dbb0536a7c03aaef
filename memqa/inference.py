"""Inference for the verdicts: seeds and test facts as two crossed random factors, a t interval, Holm.

Every claim's statistic is linear in the correctness of (training arm, seed, test fact): a contrast. Per seed s
and test fact f the claim's arms combine into d[s, f] (e.g. train level 0 minus the mean of the other levels, at
the same seed: the design pairs by seed, through the shared training randomness and nested sets), and the
statistic is T = sum_f w[f] * mean_s d[s, f], with weights w fixed by the test levels (the headline weighs each
kept level's facts 1 / (levels x facts in it)). The estimand is T's expectation over new seeds and new test facts
of the same levels. Under d[s, f] = mu + a[s] + b[f] + c[s, f] (a: seed, b: fact, c: their interaction),

    Var(T) = Var_seed + Var_fact - Var_int,
    Var_seed = var_s(sum_f w d[s, f]) / S             estimates (sigma_a^2 + sum w^2 sigma_c^2) / S
    Var_fact = sum_levels F_l var_l(w[f] mean_s d)    estimates sum w^2 (sigma_b^2 + sigma_c^2 / S)
    Var_int  = sum_f w^2 sigma_c^2 / S                (two-way residuals within each test level)

(the interaction is in both of the first two terms once too often). The interval is T +- t_q(df) sqrt(Var) with
Satterthwaite's df: with 3 seeds and a seed-dominated variance df is near 2 and t_q 4.3, not 1.96. Coverage is
measured by simulation (tests/test_inference.py; benchmarks/interval_coverage.py against the old bootstrap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from memqa import stats
from memqa.stats import CONFIDENCE

ALPHA = 1 - CONFIDENCE  # the family-wise error rate Holm's adjustment holds


@dataclass(frozen=True)
class Contrast:
    """A claim's statistic: sum_f weights[f] * mean_s d[s, f] (points), facts grouped by strata (test levels)."""

    d: np.ndarray  # seeds x facts, the arms' contrast per seed (0/1 correctness combined, x 100 for points)
    weights: np.ndarray  # facts
    strata: np.ndarray  # facts: the test level of each fact (facts are resampled within it)

    @property
    def value(self) -> float:
        return float(self.d.mean(axis=0) @ self.weights)


@dataclass(frozen=True)
class Components:
    """The variance of a contrast's statistic split into what more seeds and what more facts would shrink."""

    seed: float  # sigma_a^2 (does not shrink with facts), per seed: divide by S
    fact: float  # sum_f w^2 sigma_b^2 at these facts: shrinks as 1/facts
    interaction: float  # sum_f w^2 sigma_c^2 at these facts: shrinks as 1/(facts x seeds)
    seeds: int
    fact_df: int
    interaction_df: int

    def variance(self, seeds: int | None = None, facts_factor: float = 1.0) -> float:
        """Var(T) at `seeds` seeds and facts_factor times the test facts (each level scaled alike)."""
        s = self.seeds if seeds is None else seeds
        return self.seed / s + self.fact / facts_factor + self.interaction / (s * facts_factor)

    def df(self, seeds: int | None = None, facts_factor: float = 1.0) -> float:
        """Satterthwaite's degrees of freedom of the variance at that design, taken over the mean squares the
        variance is computed from (the per-seed one holds the interaction too, with only seeds - 1 df)."""
        s, k = self.seeds if seeds is None else seeds, facts_factor
        per_seed = (self.seed + self.interaction / k) / s
        per_fact = self.fact / k + self.interaction / (s * k)
        residual = self.interaction / (s * k)
        parts = [(per_seed, s - 1), (per_fact, self.fact_df * k), (residual, (s - 1) * self.fact_df * k)]
        denominator = sum(v * v / n for v, n in parts if v > 0 and n > 0)
        return float("inf") if denominator == 0 else self.variance(s, k) ** 2 / denominator


def _within_levels(values: np.ndarray, strata: np.ndarray) -> float:
    """Variance of the sum of values under resampling of facts within each stratum."""
    total = 0.0
    for level in np.unique(strata):
        v = values[strata == level]
        if len(v) > 1:
            total += len(v) * float(np.var(v, ddof=1))
    return total


def _interaction(c: Contrast) -> tuple[float, int]:
    """sum_f w^2 sigma_c^2 (sigma_c^2 from two-way residuals within each stratum) and its df."""
    seeds = c.d.shape[0]
    total, df = 0.0, 0
    for level in np.unique(c.strata):
        block, w = c.d[:, c.strata == level], c.weights[c.strata == level]
        if seeds < 2 or block.shape[1] < 2:
            continue
        resid = block - block.mean(axis=0) - block.mean(axis=1, keepdims=True) + block.mean()
        k = (seeds - 1) * (block.shape[1] - 1)
        total += float((w ** 2).sum()) * float((resid ** 2).sum()) / k
        df += k
    return total, df


def components(c: Contrast) -> Components:
    """The method-of-moments variance components of a contrast (module docstring)."""
    seeds = c.d.shape[0]
    per_seed = c.d @ c.weights
    var_seed = float(np.var(per_seed, ddof=1)) if seeds > 1 else 0.0  # sigma_a^2 + sum w^2 sigma_c^2
    interaction, interaction_df = _interaction(c)
    var_fact = _within_levels(c.weights * c.d.mean(axis=0), c.strata)  # sum w^2 (sigma_b^2 + sigma_c^2 / S)
    fact_df = sum(max(0, int((c.strata == lv).sum()) - 1) for lv in np.unique(c.strata))
    return Components(seed=max(0.0, var_seed - interaction), fact=max(0.0, var_fact - interaction / seeds),
                      interaction=interaction, seeds=seeds, fact_df=fact_df,
                      interaction_df=interaction_df)


@dataclass(frozen=True)
class Estimate(stats.Estimate):
    """A claim's effect with its 95% t interval and the two-sided p-value against its threshold."""

    se: float = float("nan")
    df: float = float("nan")
    p: float = float("nan")  # H0: effect == threshold
    parts: Components | None = None

    def as_dict(self) -> dict:
        out = {**super().as_dict(), "se": round(self.se, 3), "df": round(self.df, 1),
               "p": None if np.isnan(self.p) else float(f"{self.p:.4g}")}
        if self.parts is not None:
            out["variance"] = {"seed": round(self.parts.seed, 4), "fact": round(self.parts.fact, 4),
                               "interaction": round(self.parts.interaction, 4), "fact_df": self.parts.fact_df,
                               "interaction_df": self.parts.interaction_df}
        return out


def estimate(c: Contrast, threshold: float = 0.0, confidence: float = CONFIDENCE) -> Estimate:
    """The contrast's value, t interval (Satterthwaite df) and p-value; NaN interval with fewer than 2 seeds."""
    seeds, facts = c.d.shape
    value = c.value
    if seeds < 2 or facts < 2:
        return Estimate(value, float("nan"), float("nan"), facts, seeds)
    parts = components(c)
    variance = max(parts.variance(), 0.0)
    se, df = float(np.sqrt(variance)), parts.df()
    if se == 0:
        p = 0.0 if value != threshold else 1.0
        return Estimate(value, value, value, facts, seeds, 0.0, df, p, parts)
    q = float(sps.t.ppf(1 - (1 - confidence) / 2, df))
    p = float(2 * sps.t.sf(abs(value - threshold) / se, df))
    return Estimate(value, value - q * se, value + q * se, facts, seeds, se, df, p, parts)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order; NaN stays NaN."""
    order = [i for i in np.argsort(p_values) if not np.isnan(p_values[i])]
    adjusted = [float("nan")] * len(p_values)
    running, m = 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def half_width(parts: Components, seeds: int, facts_factor: float, confidence: float = CONFIDENCE) -> float:
    """The 95% interval's half-width projected to `seeds` seeds and facts_factor times the test facts."""
    if seeds < 2:
        return float("inf")
    q = float(sps.t.ppf(1 - (1 - confidence) / 2, parts.df(seeds, facts_factor)))
    return q * float(np.sqrt(parts.variance(seeds, facts_factor)))


MAX_SEEDS, MAX_FACTS_FACTOR = 200, 1000.0


def what_decides(effect: dict, threshold: float, confidence: float = CONFIDENCE) -> dict:
    """For an undecided effect, from its variance components, if the effect stayed at its point estimate:
    the facts multiple that decides it at these seeds (None: not within 1,000x, as the seed part does not shrink
    with facts), the seeds that decide it at these facts, and at 4x the facts (None: not within 200 seeds)."""
    v = effect["variance"]
    parts = Components(v["seed"], v["fact"], v["interaction"], effect["seeds"], v["fact_df"], v["interaction_df"])
    distance, seeds = abs(effect["value"] - threshold), effect["seeds"]

    def width(s: int, factor: float) -> float:
        return half_width(parts, s, factor, confidence)

    # the smallest multiple on a grid, not a bisection: the half-width is not monotone in the facts (more facts
    # shrink the fact part, and with it Satterthwaite's df, towards the seed part's seeds - 1)
    grid = np.geomspace(1.0, MAX_FACTS_FACTOR, 241)
    first = next((i for i, k in enumerate(grid) if width(seeds, k) < distance), None)
    facts = None if first is None else float(grid[first])
    if first:  # refine between the grid points around the crossing
        low, high = float(grid[first - 1]), facts
        for _ in range(30):
            mid = (low * high) ** 0.5
            low, high = (low, mid) if width(seeds, mid) < distance else (mid, high)
        facts = high

    def seeds_needed(factor: float) -> int | None:
        return next((s for s in range(2, MAX_SEEDS + 1) if width(s, factor) < distance), None)

    return {"facts_factor": facts, "seeds": seeds_needed(1.0), "seeds_at_4x_facts": seeds_needed(4.0),
            "half_width_at_max_facts": round(width(seeds, MAX_FACTS_FACTOR), 2)}
