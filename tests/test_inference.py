"""The verdicts' interval: variance components on known inputs, coverage by simulation, Holm's adjustment."""
import numpy as np
import pytest

from memqa.inference import Contrast, components, estimate, holm, what_decides
from memqa.simulate import Design, study


def _coverage(design: Design, studies: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(studies):
        e = estimate(study(design, rng))
        hits += e.low <= design.effect <= e.high
    return hits / studies


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("pi, pi_sd", [(0.15, 0.1), (0.2, 0.15)], ids=["as-measured", "seed-heavier"])
def test_t_interval_covers_the_true_effect_in_93_to_97_percent_of_1000_synthetic_studies(seeds, pi, pi_sd):
    assert 0.93 <= _coverage(Design(seeds=seeds, pi=pi, pi_sd=pi_sd), 1000) <= 0.97


def test_components_of_a_pure_seed_effect_are_all_seed():
    d = np.repeat(np.array([[0.0], [10.0], [20.0]]), 50, axis=1)  # every fact moves with the seed
    parts = components(Contrast(d, np.full(50, 1 / 50), np.zeros(50, dtype=int)))
    assert parts.seed == pytest.approx(100.0) and parts.fact == pytest.approx(0.0)
    assert parts.interaction == pytest.approx(0.0)


def test_components_of_a_pure_fact_effect_are_all_fact():
    row = np.r_[np.zeros(25), np.full(25, 100.0)]
    parts = components(Contrast(np.vstack([row] * 4), np.full(50, 1 / 50), np.zeros(50, dtype=int)))
    assert parts.seed == pytest.approx(0.0) and parts.interaction == pytest.approx(0.0)
    assert parts.fact == pytest.approx(50 * np.var(row / 50, ddof=1))


def test_interval_with_three_seeds_uses_t_with_two_degrees_of_freedom_when_seeds_dominate():
    d = np.repeat(np.array([[0.0], [10.0], [20.0]]), 50, axis=1)
    e = estimate(Contrast(d, np.full(50, 1 / 50), np.zeros(50, dtype=int)))
    assert e.df == pytest.approx(2.0)
    assert e.high - e.value == pytest.approx(4.303 * 10 / np.sqrt(3), rel=1e-3)


def test_p_value_is_against_the_threshold():
    d = np.repeat(np.array([[0.0], [10.0], [20.0]]), 50, axis=1)
    c = Contrast(d, np.full(50, 1 / 50), np.zeros(50, dtype=int))
    assert estimate(c, threshold=10.0).p == pytest.approx(1.0)
    assert estimate(c, threshold=-40.0).p < 0.05


def test_holm_multiplies_the_smallest_p_by_the_family_size_and_keeps_order_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan")])[0] == 0.5 and np.isnan(holm([0.5, float("nan")])[1])


def _effect(seed: float, fact: float, value: float = 3.0) -> dict:
    return {"value": value, "seeds": 3, "variance": {"seed": seed, "fact": fact, "interaction": 0.0,
                                                     "fact_df": 100_000, "interaction_df": 200_000}}


def test_what_decides_a_fact_limited_effect_is_more_facts():
    need = what_decides(_effect(seed=0.0, fact=4.0), threshold=0.0)  # half-width 1.96 x 2 at distance 3
    assert need["facts_factor"] == pytest.approx((1.96 * 2 / 3) ** 2, rel=1e-2)


def test_what_decides_says_no_number_of_facts_decides_when_the_seed_part_alone_is_too_wide():
    need = what_decides(_effect(seed=12.0, fact=1.0), threshold=0.0)  # t(2) x sqrt(12 / 3) = 8.6 > 3
    assert need["facts_factor"] is None and need["half_width_at_max_facts"] == pytest.approx(8.61, abs=0.05)
    assert need["seeds"] is not None and need["seeds"] > 3
