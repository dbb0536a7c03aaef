"""The verdicts' design: relation-matched training sets, seeds as the unit, pre-specified rivals, multiplicity."""
import numpy as np
import pytest

from memqa import paths
from memqa.config import Report, Split
from memqa.splits import build_splits, relation_quota, seed_draw
from memqa.study import Study
from memqa.verdicts import adjust, best_level_differs, diagonal, half_of, level0_hurts

REPORT = Report(reference=str(paths.PUBLISHED_FILE), min_level_facts=5, margin=5.0, bootstrap_replicates=200)
SEEDS = [0, 1, 2]


def _fact(relation: str, i: int, group: str, level: int) -> tuple[dict, dict]:
    fact_id = f"{relation}/{group}/{i}"
    fact = {"fact_id": fact_id, "relation": relation, "question": fact_id, "subject": f"s{fact_id}",
            "answers": [f"a{fact_id}"]}
    return fact, {"fact_id": fact_id, "group": group, "score": float(level), "level": level}


def _pools() -> tuple[list[dict], list[dict]]:
    """Level-1 train facts nearly all of P17 (40 of 41), level-0 ones of P17 and P36 alike (40 + 40)."""
    rows = [_fact("P17", i, "train", 1) for i in range(40)] + [_fact("P36", 0, "train", 1)]
    rows += [_fact("P17", 100 + i, "train", 0) for i in range(40)] + [_fact("P36", 100 + i, "train", 0)
                                                                       for i in range(40)]
    return [f for f, _ in rows], [s for _, s in rows]


def _relation_effect_study(relation_mix: str) -> Study:
    """Training sets from build_splits; a test fact of relation r is answered with probability 0.2 + 0.6 x (the
    share of r in the training set): the whole effect is a relation effect. Level-1 test facts are all P17."""
    facts, scores = _pools()
    conf = Split(levels=[0, 1], sizes=[20], seeds=SEEDS, relation_mix=relation_mix)
    train_sets, _, _ = build_splits(conf, facts, scores, 2)
    levels = np.repeat([0, 0, 1], 100)
    relations = np.repeat(["P17", "P36", "P17"], 100)
    study = Study("m", "id", levels, relations, 2, fact_ids=np.arange(300).astype(str))
    rng = np.random.default_rng(0)
    draws = {seed: rng.random(300) for seed in SEEDS}  # common random numbers: a seed's test facts, every arm
    for level in (0, 1):
        rows = []
        for seed in SEEDS:
            chosen = train_sets[paths.cell_name(level, 20, seed)]
            share = {r: sum(f["relation"] == r for f in chosen) / len(chosen) for r in ("P17", "P36")}
            rows.append((draws[seed] < np.array([0.2 + 0.6 * share[r] for r in relations])).astype(float))
        study.cells[(level, "20")] = np.vstack(rows)
    return study


def _level1_diagonal(study: Study) -> dict:
    return next(r for r in diagonal(study, REPORT) if "test level 1" in r["claim"])


def test_a_pure_relation_effect_gives_no_diagonal_with_relation_matched_training_sets():
    row = _level1_diagonal(_relation_effect_study("matched"))
    assert row["effect"]["value"] == 0.0 and row["verdict"] == "inconclusive"


def test_the_same_relation_effect_reads_as_a_diagonal_with_each_level_balanced_on_its_own_pool():
    """Shows the test bites: the unmatched design turns the relation effect into a 'reproduced' diagonal."""
    row = _level1_diagonal(_relation_effect_study("balanced"))
    assert row["verdict"] == "reproduced" and row["effect"]["value"] > 15


def test_relation_quota_is_even_and_capped_by_the_scarcest_pool():
    from collections import Counter

    pools = [Counter({"P17": 40, "P36": 1}), Counter({"P17": 40, "P36": 40})]
    assert relation_quota(pools, 20) == {"P17": 19, "P36": 1}
    assert relation_quota(pools[1:], 20) == {"P17": 10, "P36": 10}
    assert relation_quota(pools, None) == {"P17": 40, "P36": 1}


def test_an_empty_training_level_does_not_empty_the_matched_sets_of_the_others():
    facts, scores = _pools()
    train_sets, _, metrics = build_splits(Split(levels=[0, 1, 3], sizes=[20], seeds=[0]), facts, scores, 4)
    assert len(train_sets[paths.cell_name(0, 20, 0)]) == 20 and train_sets[paths.cell_name(3, 20, 0)] == []
    assert [c["skipped"] for c in metrics["cells"]] == [False, False, True]


def test_seeds_draw_disjoint_training_sets_where_the_pool_allows():
    pool = [{"fact_id": f"P17/{i}", "relation": "P17"} for i in range(30)]
    sets = [{f["fact_id"] for f in seed_draw(pool, {"P17": 10}, block, 0, seed)} for block, seed in enumerate(SEEDS)]
    assert all(len(s) == 10 for s in sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_split_metrics_report_the_facts_each_cell_shares_with_another_seed():
    facts, scores = _pools()
    _, _, metrics = build_splits(Split(levels=[0, 1], sizes=[20], seeds=SEEDS), facts, scores, 2)
    shared = {(c["level"], c["seed"]): c["shared_with_other_seeds"] for c in metrics["cells"]}
    # both levels take 19 P17 + 1 P36 (level 1's single P36 fact caps the quota): 3 x 19 of 40 P17 facts wrap
    # round, so seeds 0 and 2 share 17; at level 1 every seed also takes the same P36 fact
    assert shared[(0, 0)] == 17 and shared[(0, 1)] == 0
    assert shared[(1, 0)] == 18
    assert metrics["max_shared_between_seeds"] == 18


def test_contrasts_pair_by_seed_so_a_seed_effect_shared_by_both_arms_cancels():
    """Seeds 20/50/80% correct alike in both arms; arm 1 adds 10 points at every seed. Paired by seed the effect
    is exact; resampling each arm's seeds independently would straddle zero."""
    rng = np.random.default_rng(1)
    levels = np.zeros(200, dtype=int)
    study = Study("m", "id", levels, np.array(["P17"] * 200), 1, fact_ids=np.arange(200).astype(str))
    base = np.vstack([(np.arange(200) < 200 * p).astype(float) for p in (0.2, 0.5, 0.8)])
    extra = np.zeros((3, 200))
    for s in range(3):
        extra[s, rng.choice(np.flatnonzero(base[s] == 0), 20, replace=False)] = 1
    study.cells = {(0, "60"): base, (1, "60"): base + extra}
    row = level0_hurts(study, REPORT)
    assert row["effect"]["value"] == pytest.approx(-10.0) and row["verdict"] == "reproduced"


def test_holm_leaves_one_raw_win_among_eight_tests_undecided():
    rows = [{"in_family": True, "verdict": "reproduced", "effect": {"p": 0.015}}]
    rows += [{"in_family": True, "verdict": "inconclusive", "effect": {"p": 0.5}} for _ in range(7)]
    rows.append({"in_family": False, "verdict": "reproduced", "effect": {"p": 0.015}})  # a duplicate contrast
    out = adjust(rows)
    assert out[0]["p_holm"] == pytest.approx(0.12) and out[0]["verdict_holm"] == "inconclusive"
    assert out[-1]["verdict_holm"] == "not tested again"


def _five_level_study(rng: np.random.Generator, advantage: float) -> Study:
    """5 training x 5 test levels, 3 seeds, 40 test facts per level. Each training run moves a share of facts to
    correct (seed-dependent, 0.1-0.3); training on level i moves `advantage` more of test level i's facts."""
    levels = np.repeat(np.arange(5), 40)
    study = Study("m", "id", levels, np.array(["P17"] * 200), 5, fact_ids=np.arange(200).astype(str))
    base = (rng.random(200) < 0.3).astype(float)
    for train in range(5):
        rows = []
        for _ in SEEDS:
            share = rng.uniform(0.1, 0.3) + advantage * (levels == train)
            rows.append(np.maximum(base, rng.random(200) < share))
        study.cells[(train, "60")] = np.vstack(rows)
    return study


def test_diagonal_with_a_fixed_rival_is_contradicted_at_most_2_5_percent_under_the_null_and_has_power():
    rng = np.random.default_rng(2)
    null = [r["verdict"] for _ in range(300) for r in diagonal(_five_level_study(rng, 0.0), REPORT)]
    own = [r["verdict"] for _ in range(100) for r in diagonal(_five_level_study(rng, 0.25), REPORT)]
    assert len(null) == 1500 and null.count("contradicted") / len(null) <= 0.025
    assert own.count("reproduced") / len(own) > 0.2  # measured 0.40 at 300 studies (3 seeds: t with ~2 df)


def test_best_level_is_chosen_on_one_half_of_the_test_facts_and_tested_on_the_other():
    """Level 0 wins on the selection half, level 1 on the test half: the choice (0) is tested where it loses."""
    levels = np.zeros(400, dtype=int)
    ids = np.array([f"P17/test/{i}" for i in range(400)])
    half = half_of(ids)
    made = []
    for model in ("a", "b"):
        study = Study(model, "id", levels, np.array(["P17"] * 400), 1, fact_ids=ids)
        rng = np.random.default_rng(len(made))
        study.cells = {(0, "60"): (rng.random((3, 400)) < np.where(half == 0, 0.7, 0.2)).astype(float),
                       (1, "60"): (rng.random((3, 400)) < 0.45).astype(float)}
        made.append(study)
    rows = best_level_differs(made, REPORT)
    assert all("{'a': 0, 'b': 0}" in r["note"] for r in rows)
    assert all(r["effect"]["facts"] == int((half == 1).sum()) and r["effect"]["value"] < 0 for r in rows)
