"""The paper's claims, each a pre-specified contrast with a t interval, a p-value and a Holm-adjusted verdict.

Every claim is a linear contrast of training arms at the same seed over the same test facts (memqa.inference):
the design pairs by seed (a seed's cells share training randomness and nested sets) and by fact. Rivals are
fixed before the data are seen: the diagonal compares training on level i with the mean of the other training
levels; "best level differs" picks each model's best level on one half of the test facts and tests it on the
other. The training levels compared were trained on the same per-relation counts (split.relation_mix: matched),
so a relation effect cannot pass for a level effect. Verdicts: reproduced (the 95% interval lies on the claim's
side of its threshold), contradicted (wholly on the other side), inconclusive; each row also gets the verdict
after Holm's adjustment over the report's family of distinct contrasts (`verdict_holm`), which REPORT leads with.
"""
from __future__ import annotations

import zlib

import numpy as np

from memqa.accuracy import levels_left_out
from memqa.config import Report
from memqa.inference import ALPHA, Contrast, Estimate, estimate, holm
from memqa.study import Study


def _row(claim: str, study: Study, statistic: str, est: Estimate | None, threshold: float = 0.0,
         higher_is_claim: bool = True, note: str = "", sensitivity: dict | None = None,
         in_family: bool = True) -> dict:
    return {"claim": claim, "model": study.model, "domain": study.domain, "statistic": statistic,
            "verdict": _verdict(est, threshold, higher_is_claim), "effect": None if est is None else est.as_dict(),
            "threshold": threshold, "higher_is_claim": higher_is_claim, "note": note, "sensitivity": sensitivity,
            "in_family": in_family and est is not None and not np.isnan(est.p)}


def _verdict(est: Estimate | None, threshold: float, higher_is_claim: bool) -> str:
    if est is None or np.isnan(est.low):
        return "inconclusive"
    low, high = (est.low, est.high) if higher_is_claim else (-est.high, -est.low)
    limit = threshold if higher_is_claim else -threshold
    return "reproduced" if low > limit else "contradicted" if high < limit else "inconclusive"


def headline_weights(study: Study, min_facts: int) -> np.ndarray:
    """Per test fact, its weight in the headline: 1 / (kept levels x facts of its level); 0 in a left-out level."""
    counts = study.level_counts()
    kept = [lv for lv in range(study.n_levels) if lv not in levels_left_out(counts, min_facts)]
    return np.array([1 / (len(kept) * counts[lv]) if lv in kept else 0.0 for lv in study.levels])


def slope_weights(study: Study, min_facts: int) -> np.ndarray | None:
    """Per test fact, its weight in the least-squares slope of accuracy over the kept test levels."""
    counts = study.level_counts()
    kept = [lv for lv in range(study.n_levels) if lv not in levels_left_out(counts, min_facts)]
    if len(kept) < 2:
        return None
    x = np.array(kept, dtype=float)
    slope = dict(zip(kept, (x - x.mean()) / ((x - x.mean()) ** 2).sum(), strict=True))
    return np.array([slope[lv] / counts[lv] if lv in slope else 0.0 for lv in study.levels])


def contrast(study: Study, terms: list[tuple[float, int, list[str] | None]], weights: np.ndarray) -> Contrast | None:
    """sum of coefficient x arm(level, sizes) at each seed every term ran, in points; None without 2 such seeds."""
    arms = [(coef, study.arm(level, sizes)) for coef, level, sizes in terms]
    seeds = sorted(set.intersection(*(set(a) for _, a in arms))) if arms else []
    if not seeds:
        return None
    d = np.vstack([100.0 * sum(coef * a[s] for coef, a in arms) for s in seeds])
    return Contrast(d, weights, study.levels)


def _estimate(c: Contrast | None, threshold: float = 0.0) -> Estimate | None:
    return None if c is None else estimate(c, threshold)


def _numeric(size: str) -> float:
    return float("inf") if size == "all" else float(size)


def sixty_suffice(study: Study, report: Report) -> dict:
    """Non-inferiority: headline(n=60) - headline(largest size), mean over training levels run at both."""
    margin = report.margin
    name, stat = "60 points suffice", f"headline(n=60) - headline(largest n), non-inferiority margin {margin:g}"
    sizes = sorted({size for _, size in study.cells}, key=_numeric)
    if "60" not in sizes or len(sizes) < 2:
        return _row(name, study, stat, None, note=f"not run: sizes {sizes} (needs 60 and a larger one)")
    largest = sizes[-1]
    levels = [lv for lv in study.train_levels() if (lv, "60") in study.cells and (lv, largest) in study.cells]
    terms = [t for lv in levels for t in ((1 / len(levels), lv, ["60"]), (-1 / len(levels), lv, [largest]))]
    c = contrast(study, terms, headline_weights(study, report.min_level_facts))
    return _row(name, study, stat, _estimate(c, -margin), -margin,
                note=f"n=60 vs n={largest}, training levels {levels}")


def higher_memory_answered_better(study: Study, report: Report) -> dict:
    """Trend: slope of accuracy over test levels (points per level), every trained cell of a seed averaged; with
    a sensitivity row leaving out the test facts whose gold sits in the subject (an echo scores there)."""
    name, stat = "higher-memory test facts are answered better", "slope of accuracy over test levels (points/level)"
    weights = slope_weights(study, report.min_level_facts)
    if weights is None:
        return _row(name, study, stat, None, note=f"fewer than two test levels with >= {report.min_level_facts} facts")
    levels = study.train_levels()
    terms = [(1 / len(levels), lv, None) for lv in levels]
    sensitivity = None
    if study.echo is not None and study.echo.any():
        clean = study.subset(~study.echo)
        clean_weights = slope_weights(clean, report.min_level_facts)
        est = None if clean_weights is None else _estimate(contrast(clean, terms, clean_weights))
        sensitivity = {"label": "without facts whose gold is in the subject",
                       "effect": None if est is None else est.as_dict()}
    return _row(name, study, stat, _estimate(contrast(study, terms, weights)), sensitivity=sensitivity)


def _diagonal_at(study: Study, test_level: int, report: Report) -> dict | None:
    """Accuracy on test level i after training on level i minus the mean over the other training levels."""
    others = [lv for lv in study.train_levels() if lv != test_level]
    if (test_level not in study.train_levels() or not others
            or test_level in levels_left_out(study.level_counts(), report.min_level_facts)):
        return None
    on_level = study.levels == test_level
    weights = np.where(on_level, 1.0 / max(1, on_level.sum()), 0.0)
    terms = [(1.0, test_level, None)] + [(-1.0 / len(others), lv, None) for lv in others]
    return _row(f"diagonal: test level {test_level} is answered best after training on level {test_level}",
                study, f"accuracy on test level {test_level}: train {test_level} - mean of other train levels",
                _estimate(contrast(study.subset(on_level), terms, weights[on_level])),
                note=f"rival fixed in advance: the mean of train levels {others}")


def diagonal(study: Study, report: Report) -> list[dict]:
    """Per test level i (a training level too, with enough facts): train i against the other levels' mean."""
    rows = [row for row in (_diagonal_at(study, lv, report) for lv in range(study.n_levels)) if row is not None]
    if not rows:
        rows.append(_row("diagonal", study, "-", None,
                         note=f"no test level with >= {report.min_level_facts} facts was also a training level"))
    return rows


def level0_hurts(study: Study, report: Report) -> dict:
    """headline(train level 0) - the mean of the other training levels' headlines; the claim: it is < 0."""
    name, stat = "level-0 training data hurts", "headline(train 0) - mean headline of the other train levels"
    others = [lv for lv in study.train_levels() if lv != 0]
    if 0 not in study.train_levels() or not others:
        return _row(name, study, stat, None, higher_is_claim=False, note="needs training level 0 and another level")
    terms = [(1.0, 0, None)] + [(-1.0 / len(others), lv, None) for lv in others]
    c = contrast(study, terms, headline_weights(study, report.min_level_facts))
    return _row(name, study, stat, _estimate(c), higher_is_claim=False, note=f"other train levels {others}")


def higher_memory_training_better(study: Study, report: Report) -> dict:
    """Slope of the headline over training levels (points per level). With two training levels, one of them 0,
    it is the level-0 contrast with its sign flipped: reported, but not a second test in the family."""
    name, stat = "higher-memory training data is better", "slope of headline over training levels (points/level)"
    levels = study.train_levels()
    if len(levels) < 2:
        return _row(name, study, stat, None, note="needs two training levels")
    x = np.array(levels, dtype=float)
    coefs = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    c = contrast(study, [(float(k), lv, None) for k, lv in zip(coefs, levels, strict=True)],
                 headline_weights(study, report.min_level_facts))
    duplicate = len(levels) == 2 and 0 in levels
    note = (f"training levels {levels}" + ("; the level-0 contrast with its sign flipped, so not counted again "
                                           "in the multiplicity family" if duplicate else ""))
    return _row(name, study, stat, _estimate(c), note=note, in_family=not duplicate)


BEST_LEVEL = ("the best training level differs between models",
              "headline(own best train level) - headline(rival level), levels chosen on the other half of the facts")


def _best_level(study: Study, report: Report, exclude: int | None = None) -> int:
    """The training level with the highest headline point estimate (on the facts given: the selection half)."""
    weights = headline_weights(study, report.min_level_facts)
    heads = {lv: float(np.mean(list(study.arm(lv).values()), axis=0) @ weights)
             for lv in study.train_levels() if lv != exclude}
    return max(heads, key=heads.get)


def _best_level_row(study: Study, best: dict[str, int], runner_up: int, report: Report) -> dict:
    """Own best vs another model's best (reproduced when it wins), or, where all models share the best level,
    own best vs its runner-up (contradicted when the best wins): on the test half of the facts."""
    test = study.subset(half_of(study.fact_ids) == 1)
    mine = best[study.model]
    rivals = sorted({lv for m, lv in best.items() if m != study.model and lv != mine})
    rival = rivals[0] if rivals else runner_up
    est = _estimate(contrast(test, [(1.0, mine, None), (-1.0, rival, None)],
                             headline_weights(test, report.min_level_facts)))
    row = _row(BEST_LEVEL[0], study, BEST_LEVEL[1], est,
               note=f"best levels on the selection half {best}; {study.model}: {mine} vs "
                    + (f"another model's best {rival}" if rivals else f"its runner-up {rival}"))
    if not rivals and row["verdict"] == "reproduced":
        row["verdict"] = "contradicted"
    elif not rivals:
        row["verdict"] = "inconclusive"
    row["higher_is_claim"] = bool(rivals)
    return row


def best_level_differs(studies: list[Study], report: Report) -> list[dict]:
    """Per model, its best training level (chosen on half 0 of its test facts) against the other models' best,
    tested on half 1. reproduced: the best levels differ and each model's own best wins on its test half;
    contradicted: they agree and the shared best beats each model's runner-up; else inconclusive."""
    why = ("not run: one model (presets/two-models.args adds a second)" if len(studies) < 2
           else "not run: needs two training levels per model" if any(len(s.train_levels()) < 2 for s in studies)
           else "not run: test facts without ids" if any(s.fact_ids is None for s in studies) else None)
    if why:
        return [_row(BEST_LEVEL[0], s, BEST_LEVEL[1], None, note=why) for s in studies]
    selection = {s.model: s.subset(half_of(s.fact_ids) == 0) for s in studies}
    best = {m: _best_level(s, report) for m, s in selection.items()}
    return [_best_level_row(s, best, _best_level(selection[s.model], report, exclude=best[s.model]), report)
            for s in studies]


def all_verdicts(studies: list[Study], report: Report) -> list[dict]:
    """Every claim's test on every study, then Holm's adjustment over the family of distinct contrasts."""
    rows = []
    for study in studies:
        rows.append(sixty_suffice(study, report))
        rows.append(higher_memory_answered_better(study, report))
        rows += diagonal(study, report)
        rows.append(level0_hurts(study, report))
        rows.append(higher_memory_training_better(study, report))
    for domain in sorted({s.domain for s in studies}):
        rows += best_level_differs([s for s in studies if s.domain == domain], report)
    return adjust(rows)


def adjust(rows: list[dict]) -> list[dict]:
    """Each row's Holm-adjusted p-value over the rows in the family, and the verdict that p-value gives."""
    family = [i for i, r in enumerate(rows) if r["in_family"]]
    adjusted = holm([rows[i]["effect"]["p"] for i in family])
    for r in rows:
        r["p_holm"], r["verdict_holm"] = None, "inconclusive" if r["in_family"] else "not tested again"
        if r["effect"] is None:
            r["verdict_holm"] = "inconclusive"
    for i, p in zip(family, adjusted, strict=True):
        rows[i]["p_holm"] = float(f"{p:.4g}")
        if p < ALPHA:
            rows[i]["verdict_holm"] = rows[i]["verdict"]
    return rows


def half_of(fact_ids: np.ndarray) -> np.ndarray:
    """A fixed split of test facts into halves (0, 1) by a hash of the fact id: selection on one, test on the other."""
    return np.array([zlib.crc32(str(f).encode()) % 2 for f in fact_ids])
