"""The paper's claims, each a named test with a stated statistic, an interval and a verdict.

Verdicts: reproduced (the 95% interval lies on the claim's side), contradicted (wholly on the other side),
inconclusive (it straddles, or too few facts or cells). Every test reads a model's `Study`: per cell group
(training level, size) a correctness matrix [seeds x test facts] over the same test facts, so comparisons
are paired over facts and aggregate every size and seed explicitly.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from memqa.accuracy import levels_left_out
from memqa.config import Report
from memqa.stats import Arm, Estimate, bootstrap, headline_of, kept_level_accuracies, level_slope, verdict
from memqa.study import Study


def _row(claim: str, study: Study, statistic: str, estimate: Estimate | None, result: str, note: str = "",
         restricted: Estimate | None = None, threshold: float = 0.0) -> dict:
    return {"claim": claim, "model": study.model, "domain": study.domain, "statistic": statistic,
            "verdict": result, "effect": None if estimate is None else estimate.as_dict(), "threshold": threshold,
            "restricted_to_shared_relations": None if restricted is None else restricted.as_dict(), "note": note}


def facts_to_decide(row: dict) -> float | None:
    """For an inconclusive verdict: how many times its test facts would narrow the 95% interval enough to
    clear the threshold, if the effect stayed at its point estimate (an interval's width shrinks as one over
    the square root of the facts). None when the verdict is decided or there is no estimate; inf when the
    point estimate sits on the threshold."""
    effect = row.get("effect")
    if row["verdict"] != "inconclusive" or effect is None or effect["low"] is None:
        return None
    half_width = (effect["high"] - effect["low"]) / 2
    distance = abs(effect["value"] - row.get("threshold", 0.0))
    if math.isnan(half_width) or distance < 1e-9:  # no interval, or an effect on the threshold
        return float("inf")
    return (half_width / distance) ** 2


def _numeric(size: str) -> float:
    return float("inf") if size == "all" else float(size)


def _bootstrap(arms: list[Arm], levels: np.ndarray, statistic, report: Report):
    return bootstrap(arms, levels, statistic, replicates=report.bootstrap_replicates)


def _headline(study: Study, report: Report):
    """The headline statistic of one correctness matrix on this study's test levels."""
    return partial(headline_of, n_levels=study.n_levels, min_facts=report.min_level_facts)


def sixty_suffice(study: Study, report: Report) -> dict:
    """Non-inferiority: headline(n=60) - headline(largest size), mean over training levels run at both."""
    margin = report.margin
    name, stat = "60 points suffice", f"headline(n=60) - headline(largest n), non-inferiority margin {margin:g}"
    sizes = sorted({size for _, size in study.cells}, key=_numeric)
    if "60" not in sizes or len(sizes) < 2:
        return _row(name, study, stat, None, "inconclusive", f"not run: sizes {sizes} (needs 60 and a larger one)")
    largest = sizes[-1]
    levels = [lv for lv in study.train_levels() if (lv, "60") in study.cells and (lv, largest) in study.cells]
    arms = [Arm(study.cells[(lv, size)]) for lv in levels for size in ("60", largest)]
    head = _headline(study, report)

    def statistic(*matrices, test_levels):
        diffs = [head(matrices[2 * i], test_levels) - head(matrices[2 * i + 1], test_levels)
                 for i in range(len(levels))]
        return float(np.mean(diffs))

    estimate = _bootstrap(arms, study.levels, statistic, report)
    return _row(name, study, stat, estimate, verdict(estimate, -margin),
                f"n=60 vs n={largest}, training levels {levels}", threshold=-margin)


def higher_memory_answered_better(study: Study, report: Report) -> dict:
    """Trend: slope of accuracy over test levels (points per level), all trained cells pooled."""
    name, stat = "higher-memory test facts are answered better", "slope of accuracy over test levels (points/level)"
    min_facts = report.min_level_facts
    pooled = [study.pooled(lv) for lv in study.train_levels()]
    pooled = [m for m in pooled if m is not None]
    present = [a for a in kept_level_accuracies(np.vstack(pooled), study.levels, study.n_levels, min_facts)
               if a is not None] if pooled else []
    if len(present) < 2:
        return _row(name, study, stat, None, "inconclusive", f"fewer than two test levels with >= {min_facts} facts")

    def statistic(matrix, test_levels):
        return level_slope(kept_level_accuracies(matrix, test_levels, study.n_levels, min_facts))

    estimate = _bootstrap([Arm(np.vstack(pooled))], study.levels, statistic, report)
    return _row(name, study, stat, estimate, verdict(estimate, 0.0))


def _restricted(study: Study, train_levels: list[int]) -> np.ndarray:
    """Test facts of relations every one of the training levels' sets holds (in-domain only)."""
    shared = set.intersection(*(study.train_relations.get(lv, set()) for lv in train_levels))
    return np.isin(study.relations, sorted(shared))


def _paired(study: Study, first: np.ndarray, second: np.ndarray, statistic, report: Report,
            mask: np.ndarray | None = None):
    if mask is None:
        return _bootstrap([Arm(first), Arm(second)], study.levels, statistic, report)
    if mask.sum() == 0:
        return None
    return _bootstrap([Arm(first[:, mask]), Arm(second[:, mask])], study.levels[mask], statistic, report)


def _difference(a, b, test_levels):
    return 100.0 * (float(a.mean()) - float(b.mean()))


def _diagonal_at(study: Study, test_level: int, report: Report) -> dict | None:
    """Accuracy on test level i after training on level i minus after the best other training level."""
    name = f"diagonal: test level {test_level} is answered best after training on level {test_level}"
    stat = f"accuracy on test level {test_level}: train {test_level} - best other train level"
    on_level = study.levels == test_level
    own = study.pooled(test_level)
    others = {lv: study.pooled(lv) for lv in study.train_levels() if lv != test_level}
    if own is None or not others or test_level in levels_left_out(study.level_counts(), report.min_level_facts):
        return None
    rival = max(others, key=lambda lv: float(others[lv][:, on_level].mean()))
    # only the test level's facts enter: effect and n are about them
    level_study = Study(study.model, study.domain, study.levels[on_level], study.relations[on_level],
                        study.n_levels, train_relations=study.train_relations)
    mine, theirs = own[:, on_level], others[rival][:, on_level]
    estimate = _paired(level_study, mine, theirs, _difference, report)
    restricted = (_paired(level_study, mine, theirs, _difference, report,
                          _restricted(level_study, [test_level, rival])) if study.domain == "id" else None)
    return _row(name, study, stat, estimate, verdict(estimate, 0.0), f"best other: train level {rival}", restricted)


def diagonal(study: Study, report: Report) -> list[dict]:
    """Per test level i: accuracy on level i after training on level i minus after the best other training
    level (chosen on the point estimate), paired over the level's test facts, all sizes and seeds."""
    rows = [row for row in (_diagonal_at(study, lv, report) for lv in range(study.n_levels)) if row is not None]
    if not rows:
        rows.append(_row("diagonal", study, "-", None, "inconclusive",
                         f"no test level with >= {report.min_level_facts} facts was also a training level"))
    return rows


def level0_hurts(study: Study, report: Report) -> dict:
    """headline(train level 0) - headline(all other training levels pooled); the claim is that it is < 0."""
    name, stat = "level-0 training data hurts", "headline(train 0) - headline(other train levels)"
    zero, others = study.pooled(0), [study.pooled(lv) for lv in study.train_levels() if lv != 0]
    if zero is None or not others:
        return _row(name, study, stat, None, "inconclusive", "needs training level 0 and another level")
    rest = np.vstack(others)
    head = _headline(study, report)

    def statistic(a, b, test_levels):
        return head(a, test_levels) - head(b, test_levels)

    estimate = _paired(study, zero, rest, statistic, report)
    restricted = (_paired(study, zero, rest, statistic, report, _restricted(study, study.train_levels()))
                  if study.domain == "id" else None)
    return _row(name, study, stat, estimate, verdict(estimate, 0.0, higher_is_claim=False), "", restricted)


def higher_memory_training_better(study: Study, report: Report) -> dict:
    """Slope of the headline over training levels (points per level), every size and seed of each level."""
    name, stat = "higher-memory training data is better", "slope of headline over training levels (points/level)"
    levels = study.train_levels()
    if len(levels) < 2:
        return _row(name, study, stat, None, "inconclusive", "needs two training levels")
    arms = [Arm(study.pooled(lv)) for lv in levels]
    head = _headline(study, report)

    def statistic(*matrices, test_levels):
        heads = [head(m, test_levels) for m in matrices]
        return float(np.polyfit(np.array(levels, dtype=float), np.array(heads), 1)[0])

    estimate = _bootstrap(arms, study.levels, statistic, report)
    restricted = None
    if study.domain == "id":
        mask = _restricted(study, levels)
        if mask.sum():
            restricted = _bootstrap([Arm(a.correct[:, mask]) for a in arms], study.levels[mask], statistic, report)
    return _row(name, study, stat, estimate, verdict(estimate, 0.0), f"training levels {levels}", restricted)


def _best_levels(studies: list[Study], report: Report) -> dict[str, int]:
    """model -> its best training level on the point estimate of the headline."""
    best = {}
    for s in studies:
        heads = {lv: _headline(s, report)(s.pooled(lv), s.levels) for lv in s.train_levels()}
        best[s.model] = max(heads, key=heads.get)
    return best


BEST_LEVEL = ("the best training level differs between models",
              "headline(own best train level) - headline(rival level)")  # the claim's name and statistic


def _best_level_row(s: Study, best: dict[str, int], report: Report) -> dict:
    head = _headline(s, report)

    def statistic(a, b, test_levels):
        return head(a, test_levels) - head(b, test_levels)

    mine = best[s.model]
    rivals = sorted({lv for m, lv in best.items() if m != s.model and lv != mine and lv in s.train_levels()})
    if not rivals:  # same best level: compare with this model's runner-up
        heads = {lv: head(s.pooled(lv), s.levels) for lv in s.train_levels() if lv != mine}
        rival = max(heads, key=heads.get)
        estimate = _paired(s, s.pooled(mine), s.pooled(rival), statistic, report)
        result = "contradicted" if verdict(estimate, 0.0) == "reproduced" else "inconclusive"
        note = f"best levels {best}; {s.model}: best {mine} vs runner-up {rival}"
    else:
        rival = rivals[0]
        estimate = _paired(s, s.pooled(mine), s.pooled(rival), statistic, report)
        result = "reproduced" if verdict(estimate, 0.0) == "reproduced" else "inconclusive"
        note = f"best levels {best}; {s.model}: own best {mine} vs another model's best {rival}"
    return _row(BEST_LEVEL[0], s, BEST_LEVEL[1], estimate, result, note)


def best_level_differs(studies: list[Study], report: Report) -> list[dict]:
    """Per model, its best training level (point estimate) against the other models' best, paired bootstrap.

    reproduced: the models' best levels differ and each model's best beats the others' best on its own facts;
    contradicted: they agree and each beats its runner-up; else inconclusive."""
    if len(studies) < 2 or any(len(s.train_levels()) < 2 for s in studies):
        why = ("not run: one model (presets/two-models.args adds a second)" if len(studies) < 2
               else "not run: needs two training levels per model")
        return [_row(BEST_LEVEL[0], s, BEST_LEVEL[1], None, "inconclusive", why) for s in studies]
    best = _best_levels(studies, report)
    return [_best_level_row(s, best, report) for s in studies]


def all_verdicts(studies: list[Study], report: Report) -> list[dict]:
    """Every claim's test on every study, under report.min_level_facts, margin and bootstrap_replicates."""
    rows = []
    for study in studies:
        rows.append(sixty_suffice(study, report))
        rows.append(higher_memory_answered_better(study, report))
        rows += diagonal(study, report)
        rows.append(level0_hurts(study, report))
        rows.append(higher_memory_training_better(study, report))
    for domain in sorted({s.domain for s in studies}):
        rows += best_level_differs([s for s in studies if s.domain == domain], report)
    return rows
