"""Population-weighted agreement (memqa.agreement): exact on an enumerated toy population, intervals that cover."""
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from memqa.agreement import assign, kappa, population_weights, stratum_bounds, weighted_kappa_interval
from memqa.errors import MemqaError

# A toy population: stratum -> {(sampling level, estimator level): facts}. Level 0 dominates the bottom stratum,
# where the two agree; the top stratum disagrees often.
POPULATION = {0: {(0, 0): 540, (0, 1): 30, (1, 0): 30}, 1: {(1, 1): 60, (1, 2): 20, (2, 1): 20},
              2: {(2, 2): 10, (3, 2): 20, (2, 3): 20, (3, 3): 10}}
SAMPLE_SHARE = {0: 1 / 30, 1: 1 / 5, 2: 1 / 2}  # upper strata oversampled, composition kept exactly


def expand(cells: dict, share: float = 1.0) -> list[tuple[int, int]]:
    return [pair for pair, count in cells.items() for _ in range(round(count * share))]


def arrays(pairs_by_stratum: dict[int, list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    strata = np.array([k for k, pairs in pairs_by_stratum.items() for _ in pairs])
    truth, predicted = np.array([p for pairs in pairs_by_stratum.values() for p in pairs]).T
    return truth, predicted, strata


def test_weighted_kappa_of_a_stratified_sample_equals_the_population_kappa_exactly():
    truth, predicted, _ = arrays({k: expand(c) for k, c in POPULATION.items()})
    population_kappa = cohen_kappa_score(truth, predicted)
    s_truth, s_predicted, s_strata = arrays({k: expand(c, SAMPLE_SHARE[k]) for k, c in POPULATION.items()})
    population_strata = np.repeat(list(POPULATION), [sum(c.values()) for c in POPULATION.values()])
    weights = population_weights(s_strata, population_strata, len(POPULATION))
    assert kappa(s_truth, s_predicted, weights, 4) == pytest.approx(population_kappa, abs=1e-12)
    assert abs(cohen_kappa_score(s_truth, s_predicted) - population_kappa) > 0.05  # the unweighted one is off


def test_kappa_matches_sklearn_with_sample_weights():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, 80), rng.integers(0, 5, 80)
    predicted[:40] = truth[:40]
    weights = rng.random(80) + 0.1
    expected = cohen_kappa_score(truth, predicted, labels=list(range(5)), sample_weight=weights)
    assert kappa(truth, predicted, weights, 5) == pytest.approx(expected, abs=1e-12)


def test_tied_stratum_bounds_merge_and_scores_are_placed_by_value():
    bounds = stratum_bounds([[0.0, 0.0], [0.0, 0.0], [0.1, 0.4], [0.5, 0.9]])
    assert bounds.tolist() == [0.0, 0.4, 0.9]
    assert assign([0.0, 0.05, 0.4, 0.41, 3.0], bounds).tolist() == [0, 1, 1, 2, 2]


def test_a_population_stratum_without_sampled_facts_is_an_error():
    with pytest.raises(MemqaError, match="no sampled fact"):
        population_weights(np.array([0, 0, 2]), np.array([0, 1, 2, 2]), 3)


def realistic_population(rng: np.random.Generator) -> dict[int, np.ndarray]:
    """10 strata of a cheap score, as the crosscheck's, over 2,400 facts: the lower ones mostly level 0 on both
    sides, the upper ones spread over levels 1-4 with the estimator one level off for 30% of the facts."""
    population = {}
    for k, share in enumerate([.15, .15, .15, .15, .1, .1, .05, .05, .05, .05]):
        n = int(share * 2400)
        truth = np.clip(rng.poisson(k * 0.35, n), 0, 4) if k > 3 else (rng.random(n) < 0.1 * k).astype(int)
        off = rng.random(n) < (0.03 if k < 3 else 0.3)
        predicted = np.clip(truth + np.where(off, rng.choice([-1, 1], n), 0), 0, 4)
        population[k] = np.stack([truth, predicted], axis=1)
    return population


def test_weighted_kappa_interval_covers_the_population_kappa_at_5_sampled_facts_per_stratum():
    rng = np.random.default_rng(5)
    population = realistic_population(rng)
    every = np.concatenate(list(population.values()))
    target = kappa(every[:, 0], every[:, 1], np.ones(len(every)), 5)
    population_strata = np.repeat(list(population), [len(v) for v in population.values()])
    covered, studies = 0, 300
    for study in range(studies):  # the crosscheck's REPORT half: 50 facts, 5 per stratum
        drawn = np.concatenate([v[rng.choice(len(v), 5, replace=False)] for v in population.values()])
        weights = population_weights(np.repeat(np.arange(10), 5), population_strata, 10)
        low, high = weighted_kappa_interval(drawn[:, 0], drawn[:, 1], weights, 5, seed=study, draws=400)
        covered += low <= target <= high
    assert 0.90 <= covered / studies <= 0.99
