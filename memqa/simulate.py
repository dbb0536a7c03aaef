"""Synthetic studies with a known effect, for checking the verdicts' intervals by simulation.

A study compares arm A (e.g. a training level) with arm B at S seeds on F test facts of two test levels. Each
fact has a base correctness near 0 or 1 (small models know a fact or do not; the default run's per-fact
correctness barely varies across seeds), which arm B keeps. Arm A's training moves a fact to a fresh draw: a
share `kappa` of facts in every seed (a fact effect), and each seed s moves another share pi_s of the rest
(pi_s ~ U(pi - pi_sd, pi + pi_sd): the seed effect; which facts it moves: the seed x fact interaction). The true
effect, over new seeds and new facts, is 100 (kappa + (1 - kappa) E[pi_s]) (fresh - base) points. At the defaults
the variance components are close to those measured on the default run's level-0 vs level-1 contrast
(memqa.inference: seed ~3, fact ~6, interaction ~4 points^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memqa.inference import Contrast


@dataclass(frozen=True)
class Design:
    seeds: int = 3
    facts: tuple[int, int] = (215, 35)  # test facts at test levels 0 and 1 (the default run's in-domain shape)
    kappa: float = 0.15  # share of facts arm A's training moves in every seed
    pi: float = 0.15  # mean share of the other facts one seed's training moves
    pi_sd: float = 0.1  # half-width of pi_s's uniform spread over seeds
    base: float = 0.2  # P(correct) of a fact before training (per fact, 0 or 1)
    fresh: float = 0.5  # P(correct) of a moved fact (per fact and seed, 0 or 1)

    @property
    def effect(self) -> float:
        return 100.0 * (self.kappa + (1 - self.kappa) * self.pi) * (self.fresh - self.base)


def study(design: Design, rng: np.random.Generator) -> Contrast:
    """One synthetic study's headline contrast (arm A - arm B, both test levels weighted 1/2)."""
    n0, n1 = design.facts
    facts, levels = n0 + n1, np.repeat([0, 1], [n0, n1])
    base = (rng.random(facts) < design.base).astype(float)
    fresh = (rng.random(facts) < design.fresh).astype(float)
    pis = design.pi + rng.uniform(-design.pi_sd, design.pi_sd, design.seeds)
    moved = (rng.random((design.seeds, facts)) < pis[:, None]) | (rng.random(facts) < design.kappa)[None, :]
    arm_a = np.where(moved, fresh, base)
    d = 100.0 * (arm_a - base[None, :])
    weights = np.where(levels == 0, 0.5 / n0, 0.5 / n1)
    return Contrast(d, weights, levels)
