"""Compare a run's metrics with a committed baseline; exit 1 when a metric moves beyond its tolerance.

    python ci/check_metrics.py ci/tiny/baseline metrics

Tolerances (pinned by tests/test_ci_check.py): accuracies (percent) may move by ACCURACY_POINTS,
other numbers by RELATIVE of their baseline value (at least ABSOLUTE); timings and memory are ignored.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ACCURACY_POINTS = 5.0
RELATIVE = 0.05
ABSOLUTE = 0.02
IGNORED = {"wall_s", "tokens_per_s", "peak_memory_mb", "device", "processes"}
ACCURACY_KEYS = {"headline", "micro", "L0", "L1", "L2", "L3", "L4", "id", "ood"}


def flatten(obj, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key not in IGNORED:
                out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def load_tree(root: Path) -> dict[str, float]:
    values = {}
    for path in sorted(root.rglob("*.json")):
        for key, value in flatten(json.loads(path.read_text())).items():
            values[f"{path.relative_to(root)}:{key}"] = value
    return values


def allowed(key: str, baseline: float) -> float:
    leaf = key.rsplit(".", 1)[-1].split(":")[-1]
    is_accuracy = leaf in ACCURACY_KEYS or "/eval/" in f"/{key}" or key.startswith("summary.json")
    return ACCURACY_POINTS if is_accuracy else max(ABSOLUTE, RELATIVE * abs(baseline))


def compare(baseline: dict[str, float], current: dict[str, float]) -> list[str]:
    """One line per problem: a metric missing on either side, or moved beyond its tolerance."""
    problems = [f"missing in run: {k}" for k in sorted(set(baseline) - set(current))]
    problems += [f"new in run (not in baseline): {k}" for k in sorted(set(current) - set(baseline))]
    for key in sorted(set(baseline) & set(current)):
        old, new = baseline[key], current[key]
        if math.isnan(old) and math.isnan(new):
            continue
        if not abs(new - old) <= allowed(key, old):
            problems.append(f"{key}: {old:g} -> {new:g} (tolerance {allowed(key, old):g})")
    return problems


def main(baseline_root: str, current_root: str) -> int:
    problems = compare(load_tree(Path(baseline_root)), load_tree(Path(current_root)))
    for line in problems:
        print(f"metric check: {line}")
    print(f"metric check: {'FAILED' if problems else 'ok'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
