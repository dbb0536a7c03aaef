import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("check_metrics", Path(__file__).parents[1] / "ci" / "check_metrics.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_accuracy_move_within_tolerance_passes_and_beyond_fails():
    base = {"eval/tiny/L1-n10-s0.json:id.headline": 40.0}
    assert check.compare(base, {"eval/tiny/L1-n10-s0.json:id.headline": 44.9}) == []
    problems = check.compare(base, {"eval/tiny/L1-n10-s0.json:id.headline": 45.1})
    assert len(problems) == 1 and "40 -> 45.1" in problems[0]


def test_other_metrics_use_relative_tolerance_and_timings_are_ignored():
    flat = check.flatten({"final_loss": 2.0, "wall_s": 10.0, "level_counts": {"train": [3, 4]}})
    assert flat == {"final_loss": 2.0, "level_counts.train.0": 3.0, "level_counts.train.1": 4.0}
    assert check.compare({"sft/a.json:final_loss": 2.0}, {"sft/a.json:final_loss": 2.09}) == []
    assert check.compare({"sft/a.json:final_loss": 2.0}, {"sft/a.json:final_loss": 2.2})


def test_a_metric_that_disappears_is_a_failure():
    assert check.compare({"probe.json:facts": 10.0}, {}) == ["missing in run: probe.json:facts"]
