"""The grid's bootstrap (known answers on synthetic data), the headline rule, and each claim's test: a synthetic
grid where the claim holds, one where it fails, and one with too few facts or seeds (inconclusive)."""
import numpy as np
import pytest

from memqa import paths
from memqa.accuracy import headline
from memqa.config import Report
from memqa.stats import Arm, Estimate, bootstrap, headline_of, level_slope, verdict
from memqa.study import Study
from memqa.verdicts import (
    best_level_differs,
    diagonal,
    higher_memory_answered_better,
    higher_memory_training_better,
    level0_hurts,
    sixty_suffice,
)

RNG = np.random.default_rng(0)


def _report(min_facts: int = 5, replicates: int = 2000) -> Report:
    return Report(reference=str(paths.PUBLISHED_FILE), min_level_facts=min_facts, margin=5.0,
                  bootstrap_replicates=replicates)


MIN5, MIN1 = _report(5), _report(1)


def _correct(p: float | np.ndarray, seeds: int, facts: int) -> np.ndarray:
    return (RNG.random((seeds, facts)) < p).astype(float)


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    facts = 2000
    matrix = np.zeros((1, facts))
    matrix[0, : facts * 3 // 10] = 1  # exactly 30% correct
    levels = np.zeros(facts, dtype=int)
    est = bootstrap([Arm(matrix)], levels, lambda m, test_levels: 100 * m.mean(), replicates=2000)
    half_width = 1.96 * 100 * np.sqrt(0.3 * 0.7 / facts)  # 2.0 points
    assert est.value == pytest.approx(30.0)
    assert est.low == pytest.approx(30 - half_width, abs=0.4) and est.high == pytest.approx(30 + half_width, abs=0.4)


def test_bootstrap_resamples_seeds_too():
    levels = np.zeros(400, dtype=int)
    same = np.vstack([np.r_[np.ones(200), np.zeros(200)]] * 3)
    spread = np.vstack([np.r_[np.ones(k), np.zeros(400 - k)] for k in (40, 200, 360)])
    width = [bootstrap([Arm(m)], levels, lambda m, test_levels: 100 * m.mean()) for m in (same, spread)]
    assert width[0].value == width[1].value == 50.0
    assert (width[1].high - width[1].low) > 3 * (width[0].high - width[0].low)


def test_bootstrap_of_a_constant_difference_has_a_zero_width_interval():
    levels = np.array([0, 0, 1, 1])
    a, b = np.ones((2, 4)), np.zeros((2, 4))
    est = bootstrap([Arm(a), Arm(b)], levels, lambda x, y, test_levels: 100 * (x.mean() - y.mean()))
    assert (est.value, est.low, est.high) == (100.0, 100.0, 100.0)


def test_headline_is_the_mean_over_levels_with_enough_facts():
    assert headline([10.0, None, 50.0, 90.0], [20, 0, 20, 2], min_facts=5) == 30.0
    assert headline([None, 40.0], [0, 2], min_facts=5) is None


def test_headline_of_a_correctness_matrix_leaves_out_the_thin_level():
    levels = np.array([0] * 10 + [1] * 10 + [2])
    correct = np.r_[np.zeros(10), np.ones(10), np.ones(1)][None, :]
    assert headline_of(correct, levels, 3, min_facts=5) == 50.0  # level 2 (one fact) left out
    assert np.isnan(headline_of(correct, levels, 3, min_facts=11))  # no level holds 11 facts


def test_verdict_reads_the_interval_against_the_threshold():
    assert verdict(Estimate(3, 1, 5, 10, 3), 0) == "reproduced"
    assert verdict(Estimate(-3, -5, -1, 10, 3), 0) == "contradicted"
    assert verdict(Estimate(1, -1, 3, 10, 3), 0) == "inconclusive"
    assert verdict(Estimate(-3, -5, -1, 10, 3), 0, higher_is_claim=False) == "reproduced"


def test_level_slope_fits_the_levels_present():
    assert level_slope([10.0, None, 30.0]) == pytest.approx(10.0)
    assert np.isnan(level_slope([None, 30.0, None]))


def _study(n_facts: int, accuracy, sizes=("60", "240"), train_levels=(0, 1, 2), seeds=3, model="m") -> Study:
    """Test facts spread over test levels 0-2; accuracy(train_level, size, test_level) -> probability."""
    levels = np.repeat(np.arange(3), n_facts)
    relations = np.array(["P17", "P36"] * (len(levels) // 2) + ["P17"] * (len(levels) % 2))
    study = Study(model, "id", levels, relations, 3, fact_ids=np.array([f"P17/test/{i}" for i in range(len(levels))]))
    for level in train_levels:
        for size in sizes:
            p = np.array([accuracy(level, size, t) for t in levels])
            study.cells[(level, size)] = _correct(p, seeds, len(levels))
    return study


def test_sixty_suffice_holds_fails_and_is_inconclusive_with_few_facts():
    held = sixty_suffice(_study(300, lambda lv, n, t: 0.5), MIN5)
    failed = sixty_suffice(_study(300, lambda lv, n, t: 0.2 if n == "60" else 0.6), MIN5)
    few = sixty_suffice(_study(6, lambda lv, n, t: 0.45 if n == "60" else 0.5), MIN5)
    assert (held["verdict"], failed["verdict"], few["verdict"]) == ("reproduced", "contradicted", "inconclusive")
    assert failed["effect"]["value"] < -30 and failed["effect"]["seeds"] == 3


def test_higher_memory_test_facts_claim():
    rising = higher_memory_answered_better(_study(200, lambda lv, n, t: 0.1 + 0.3 * t), MIN5)
    falling = higher_memory_answered_better(_study(200, lambda lv, n, t: 0.7 - 0.3 * t), MIN5)
    few = higher_memory_answered_better(_study(3, lambda lv, n, t: 0.1 + 0.3 * t), MIN5)
    assert (rising["verdict"], falling["verdict"], few["verdict"]) == ("reproduced", "contradicted", "inconclusive")


def test_diagonal_claim_per_test_level():
    def diag(lv, n, t):
        return 0.8 if lv == t else 0.3

    def anti(lv, n, t):
        return 0.3 if lv == t else 0.8

    assert {r["verdict"] for r in diagonal(_study(200, diag), MIN5)} == {"reproduced"}
    assert {r["verdict"] for r in diagonal(_study(200, anti), MIN5)} == {"contradicted"}
    assert {r["verdict"] for r in diagonal(_study(3, diag), MIN5)} == {"inconclusive"}
    rows = diagonal(_study(200, diag), MIN5)
    assert len(rows) == 3 and all(r["effect"]["facts"] == 200 for r in rows)


def test_level0_hurts_claim():
    hurts = level0_hurts(_study(200, lambda lv, n, t: 0.2 if lv == 0 else 0.6), MIN5)
    helps = level0_hurts(_study(200, lambda lv, n, t: 0.8 if lv == 0 else 0.4), MIN5)
    few = level0_hurts(_study(2, lambda lv, n, t: 0.45 if lv == 0 else 0.5), MIN1)
    assert (hurts["verdict"], helps["verdict"], few["verdict"]) == ("reproduced", "contradicted", "inconclusive")


def test_higher_memory_training_claim():
    better = higher_memory_training_better(_study(200, lambda lv, n, t: 0.2 + 0.2 * lv), MIN5)
    worse = higher_memory_training_better(_study(200, lambda lv, n, t: 0.7 - 0.2 * lv), MIN5)
    few = higher_memory_training_better(_study(2, lambda lv, n, t: 0.45 + 0.02 * lv), MIN1)
    assert (better["verdict"], worse["verdict"], few["verdict"]) == ("reproduced", "contradicted", "inconclusive")


def test_best_training_level_differs_between_models():
    a = _study(200, lambda lv, n, t: 0.8 if lv == 0 else 0.3, model="a")
    b = _study(200, lambda lv, n, t: 0.8 if lv == 2 else 0.3, model="b")
    same = _study(200, lambda lv, n, t: 0.8 if lv == 0 else 0.3, model="c")
    few_a = _study(2, lambda lv, n, t: 0.5 + 0.01 * lv, model="a")
    few_b = _study(2, lambda lv, n, t: 0.5 - 0.01 * lv, model="b")
    assert {r["verdict"] for r in best_level_differs([a, b], MIN5)} == {"reproduced"}
    assert {r["verdict"] for r in best_level_differs([a, same], MIN5)} == {"contradicted"}
    assert {r["verdict"] for r in best_level_differs([few_a, few_b], MIN1)} == {"inconclusive"}


def test_diagonal_pools_every_size_and_seed_of_a_training_level():
    # train 1 on test level 1: 0% at n=60, 95% at n=240 (mean 47.5) against train 0's 50%: no diagonal there
    def accuracy(lv, n, t):
        return (0.0 if n == "60" else 0.95) if lv == 1 else 0.5

    levels = np.repeat(np.arange(2), 400)
    study = Study("m", "ood", levels, np.array(["P17"] * len(levels)), 2)
    for lv in (0, 1):
        for n in ("60", "240"):
            study.cells[(lv, n)] = _correct(np.array([accuracy(lv, n, t) for t in levels]), 3, len(levels))
    row = next(r for r in diagonal(study, MIN5) if "test level 1" in r["claim"])
    assert row["verdict"] != "reproduced" and row["effect"]["value"] == pytest.approx(-2.5, abs=4)


def test_best_training_level_claim_with_one_model_says_it_was_not_run():
    a = _study(200, lambda lv, n, t: 0.8 if lv == 0 else 0.3, model="a")
    [row] = best_level_differs([a], MIN5)
    assert row["verdict"] == "inconclusive" and row["effect"] is None and "one model" in row["note"]
