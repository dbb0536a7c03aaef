"""Memory levels (Ye et al. 2024): which probe groups facts fall in, and score R -> level, from the bounds.

The number of levels is len(level_bounds) + 2 (level 0 = below the probe's resolution, then one level per
bin): memqa.config.Probe.n_levels.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memqa.config import Probe

GROUPS = ("train", "test_id", "test_ood")


def probe_group(fact: dict) -> str | None:
    """train = the in-domain train pool; test_id / test_ood = the test split by domain; dev is not probed."""
    if fact["split"] == "train":
        return "train" if fact["domain"] == "id" else None
    if fact["split"] == "test":
        return f"test_{fact['domain']}"
    return None


def resolution(templates: int, samples: int) -> float:
    """The sampling protocol's smallest nonzero R: one hit in templates x samples completions."""
    return 1.0 / (templates * samples)


def memory_level(score: float, bounds: Sequence[float], resolution: float) -> int:
    """0 when the score is below the protocol's resolution (R == 0 for sampling), else 1..len(bounds)+1.

    bounds [0.25, 0.5, 0.75] give the paper's levels: 1 = (0, .25], 2 = (.25, .5], 3 = (.5, .75], 4 = (.75, 1].
    """
    if score < resolution:
        return 0
    return bisect.bisect_left(list(bounds), score) + 1


def add_levels(rows: list[dict], conf: Probe) -> None:
    """Label each scored row with its level under the probe params (templates, samples, level_bounds)."""
    floor = resolution(conf.templates, conf.samples)
    for row in rows:
        row["level"] = memory_level(row["score"], conf.level_bounds, floor)


def level_counts(rows: list[dict], n_levels: int) -> dict[str, list[int]]:
    """Facts per level in each probe group."""
    counts = {g: [0] * n_levels for g in GROUPS}
    for row in rows:
        counts[row["group"]][row["level"]] += 1
    return counts
