"""Coverage of the verdicts' 95% interval by simulation, against the seed-and-fact bootstrap it replaced.

    .venv/bin/python benchmarks/interval_coverage.py            # ~2 min on 2 cores

Synthetic studies (memqa.simulate: known effect; seed, fact and interaction variance) at 3 and 5 seeds, in
regimes from the default run's measured components to seed-heavy and interaction-heavy ones. For each: the share
of studies whose t interval (memqa.inference) covers the true effect, its mean width, and the same for the
percentile bootstrap over seeds and facts (memqa.stats.bootstrap, 200 replicates, on fewer studies). Writes
benchmarks/results/interval_coverage.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from memqa.inference import estimate
from memqa.simulate import Design, study
from memqa.stats import Arm, bootstrap

REGIMES = {  # name -> design changes (memqa.simulate.Design defaults: as measured on the default run)
    "as-measured": {},
    "seed-heavier": {"pi": 0.2, "pi_sd": 0.15},
    "seed-heavy": {"pi": 0.3, "pi_sd": 0.25},
    "interaction-heavy (no fact effect)": {"kappa": 0.0, "pi": 0.15, "pi_sd": 0.1},
}
OUT = Path(__file__).parent / "results" / "interval_coverage.json"


def t_interval(design: Design, studies: int, rng: np.random.Generator) -> dict:
    hits, widths = 0, []
    for _ in range(studies):
        e = estimate(study(design, rng))
        hits += e.low <= design.effect <= e.high
        widths.append(e.high - e.low)
    return {"studies": studies, "coverage": hits / studies, "mean_width": round(float(np.mean(widths)), 2)}


def seed_fact_bootstrap(design: Design, studies: int, rng: np.random.Generator) -> dict:
    hits, widths = 0, []
    for _ in range(studies):
        c = study(design, rng)
        e = bootstrap([Arm(c.d)], c.strata, lambda m, test_levels, w=c.weights: float(m.mean(axis=0) @ w),
                      replicates=200, seed=int(rng.integers(1 << 30)))
        hits += e.low <= design.effect <= e.high
        widths.append(e.high - e.low)
    return {"studies": studies, "coverage": hits / studies, "mean_width": round(float(np.mean(widths)), 2)}


def main() -> None:
    start, rows = time.time(), []
    for name, change in REGIMES.items():
        for seeds in (3, 5):
            design = Design(seeds=seeds, **change)
            rng = np.random.default_rng(seeds)
            rows.append({"regime": name, "design": asdict(design), "effect": round(design.effect, 3),
                         "t_interval": t_interval(design, 2000, rng),
                         "bootstrap": seed_fact_bootstrap(design, 300, rng)})
            print(rows[-1]["regime"], seeds, rows[-1]["t_interval"], rows[-1]["bootstrap"], flush=True)
    OUT.write_text(json.dumps({"rows": rows, "wall_s": round(time.time() - start, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
