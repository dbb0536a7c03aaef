"""Cheap memory-level estimators against the paper's sampling protocol, on the same facts.

    nice -n 19 .venv/bin/python benchmarks/probe_crosscheck.py --model smollm2-135m --facts 100 --threads 1
    nice -n 19 .venv/bin/python benchmarks/probe_crosscheck.py --model gemma3-270m --facts 100 --stop-after 5
    .venv/bin/python benchmarks/probe_crosscheck.py --model gemma3-270m --facts 100 --analyze-only

1. Pool: --pool in-domain train facts (seeded, equally many per relation), scored with the cheapest
   estimator (likelihood). 2. Selection: the pool is cut into 10 equal-count strata by that score and
   --facts are drawn equally from each (so the facts span the estimators' range, not only level 0);
   within each stratum half go to FIT, half to REPORT. 3. Every chosen fact is scored by the paper's
   protocol (method sample: 21 templates x 10 samples, T 0.7, <= 32 new tokens, `contains`, completions
   kept) and by every cheap estimator (likelihood, greedy_containment, rao_blackwell with 1 and 2 samples
   per template: the K=2 estimate is the mean of two independent K=1 runs, its cost their sum; and with 1
   sample decoded only 16 tokens, rb_max_new_tokens 16; likelihood and that last one also with the model in
   bfloat16, "_bf16": how far bf16 moves the levels, as is a full-length K=1 run), in chunks of
   --chunk facts, each cached under data/cache/crosscheck/ (a killed run resumes; --stop-after N stops after
   the chunks that hold the first N facts, to time them). The facts are processed in an order that
   interleaves the strata, so a partial run is itself a stratified sample. 4. Analysis, on the facts done:
   per estimator, on the FIT half, the level-0 threshold (the score below which a fact is called R = 0: the
   one that best matches sampling's R = 0) and a calibration of the score to R (none, a monotone power map
   a * s^g, or isotonic regression), the one kept being the best by 5-fold cross-validated kappa within
   FIT; on the REPORT half only: Spearman of the raw scores, Cohen's kappa of the levels (bounds .25/.5/.75),
   the confusion matrix, agreement per relation; and the cost (wall time, forward tokens, output-layer rows,
   GFLOPs, measured by memqa.meter.ComputeMeter) relative to sampling. Writes
   benchmarks/results/probe_crosscheck-<model>.json (facts, sampled completions, every score, the analysis)
   and benchmarks/results/probe_crosscheck-<model>.png (each estimator against sampling's R).
5. Population: the strata oversample high scores, so a plain kappa describes the sample, not the facts the
   default probe labels (most at level 0). Every probed fact of data/facts.jsonl is scored by likelihood too
   (cached in chunks of 100; ~0.33 s a fact for Gemma on 2 threads, ~7 min for the default facts), placed in
   the strata by that score, and each sampled fact weighted by its stratum's population over sampled count
   (memqa.agreement): "population_report" holds the weighted kappa with a bootstrap interval, for all probed
   facts and for the in-domain train pool. "chosen_on_fit" picks the estimator by its raw levels' weighted
   kappa on FIT alone (ties: fewer GFLOPs) and reports its REPORT agreement, so the choice never sees REPORT.
   The "screened_" estimators are the template screen (probe.rb_screen_cut): a template whose likelihood is
   below the cut keeps it, the others get the rao_blackwell run's value; the cut is the largest of SCREEN_CUTS
   whose FIT kappa is at least the unscreened run's. "screens" gives per screened estimator that cut, the FIT
   kappa at every cut, the share of templates sampled and of facts left unsampled (population-weighted too),
   and the REPORT facts above level 0 it left unsampled.
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cache_archive
import numpy as np
import torch

from memqa.agreement import assign, population_weights, stratum_bounds, weighted_kappa_interval
from memqa.agreement import kappa as agreement_kappa
from memqa.config import Probe, load_params, with_preset
from memqa.errors import MemqaError
from memqa.io import atomic_write_text, read_jsonl
from memqa.memory import memory_level, probe_group, resolution
from memqa.meter import ComputeMeter
from memqa.models import load_model
from memqa.paths import PAPER_PRESET
from memqa.probe import score_facts, weights_digest
from memqa.stats import CONFIDENCE, cohen_kappa, spearman

PROTOCOL = ("templates", "samples", "temperature", "max_new_tokens", "matcher")  # the paper's, from PAPER_PRESET
RUNS = {  # cached run -> (probe.method, probe params it changes)
    "sample": ("sample", {"save_completions": True}),
    "likelihood": ("likelihood", {}),
    "greedy_containment": ("greedy_containment", {}),
    "rao_blackwell_a": ("rao_blackwell", {"rb_samples": 1}),
    "rao_blackwell_b": ("rao_blackwell", {"rb_samples": 1}),
    "rao_blackwell_h16": ("rao_blackwell", {"rb_samples": 1, "rb_max_new_tokens": 16}),
    "likelihood_bf16": ("likelihood", {"dtype": "bfloat16"}),
    "rao_blackwell_h16_bf16": ("rao_blackwell", {"rb_samples": 1, "rb_max_new_tokens": 16, "dtype": "bfloat16"}),
    "rao_blackwell_bf16": ("rao_blackwell", {"rb_samples": 1, "dtype": "bfloat16"}),
}
ESTIMATORS = {  # estimator -> the runs whose scores it averages and whose costs it adds
    "likelihood": ("likelihood",),
    "greedy_containment": ("greedy_containment",),
    "rao_blackwell_k1": ("rao_blackwell_a",),
    "rao_blackwell_k2": ("rao_blackwell_a", "rao_blackwell_b"),
    "rao_blackwell_k1_h16": ("rao_blackwell_h16",),
    "likelihood_bf16": ("likelihood_bf16",),
    "rao_blackwell_k1_h16_bf16": ("rao_blackwell_h16_bf16",),
    "rao_blackwell_k1_bf16": ("rao_blackwell_bf16",),
}
# The template screen's cuts tried on FIT (probe.rb_screen_cut: at most level 0's resolution, 1/210)
SCREEN_CUTS = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
SCREENED = {  # estimator -> (the likelihood run that screens, the rao_blackwell run its sampled templates get)
    "screened_rao_blackwell_k1_h16": ("likelihood", "rao_blackwell_h16"),
    "screened_rao_blackwell_k1_h16_bf16": ("likelihood_bf16", "rao_blackwell_h16_bf16"),
    "screened_rao_blackwell_k1_bf16": ("likelihood_bf16", "rao_blackwell_bf16"),
}
STRATA = 10
CALIBRATIONS = ("threshold", "power", "isotonic")  # each with the level-0 threshold fitted; ties: the simplest
LEVELS = range(5)  # the levels of the bounds .25/.5/.75 (probe.level_bounds of the setup)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=100, help="facts to score with every method")
    parser.add_argument("--pool", type=int, default=250, help="candidate facts scored by likelihood to stratify")
    parser.add_argument("--chunk", type=int, default=5, help="facts per cached chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strata", type=int, default=STRATA,
                        help="likelihood strata the facts are drawn from (each needs >= 2 facts per half to weight)")
    parser.add_argument("--dtype", default=None,
                        help="default: the first run's (data/cache/crosscheck/<model>/setup-*-params.json), else "
                        "probe.dtype of params.yaml; naming one starts a separate run, even when it equals that")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--stop-after", type=int, default=0, help="stop once the first N facts are done (timing)")
    parser.add_argument("--load-cache", type=Path, default=None,
                        help="first add the chunks of this archive (a --save-cache run's) that the cache lacks")
    parser.add_argument("--save-cache", type=Path, default=None,
                        help="after scoring, pack data/cache/crosscheck/<model> into this .tar.gz (resume elsewhere)")
    parser.add_argument("--analyze-only", action="store_true", help="analyse the cached chunks, score nothing")
    parser.add_argument("--redo", nargs="*", default=[], choices=sorted(RUNS), help="drop these runs' caches")
    parser.add_argument("--runs", nargs="*", default=sorted(RUNS), choices=sorted(RUNS),
                        help="score only these runs now (default: all); the analysis needs all of them done")
    return parser.parse_args()


def ensure_inputs(model: str) -> None:
    """data/facts.jsonl and data/models/<model>, made the pipeline's way when missing."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not Path("data/facts.jsonl").is_file():
        env.setdefault("MEMQA_EQ_SOURCE", "/work/shared/data/entityquestions")
        subprocess.run([sys.executable, "stages/download.py"], check=True, env=env)
    if not Path(f"data/models/{model}").is_dir():
        subprocess.run(["nice", "-n", "19", sys.executable, "stages/materialize.py", "--model", model], check=True,
                       env=env)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def chunk_seed(seed: int, run: str, chunk: int) -> int:
    return int(hashlib.sha256(f"{seed}/{run}/{chunk}".encode()).hexdigest()[:8], 16)


def score_population(model, tokenizer, facts: list[dict], conf: Probe, cache: Path) -> dict[str, float]:
    """Likelihood scores of every fact the default probe labels (data/facts.jsonl's probe groups: in-domain train,
    in- and out-of-domain test), in cached chunks of 100: the population the agreement is weighted to."""
    facts = [f for f in facts if probe_group(f)]
    folder = cache / f"population-{digest([[f['fact_id'] for f in facts], conf.model_dump()])}"
    folder.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    for c in range(0, len(facts), 100):
        path = folder / f"{c // 100:04d}.json"
        if not path.is_file():
            started = time.time()
            rows = score_facts(model, tokenizer, facts[c:c + 100], conf, "likelihood", seed=0)
            atomic_write_text(path, json.dumps({r["fact_id"]: r["score"] for r in rows}))
            print(f"population: facts {c + 1}-{c + len(rows)} of {len(facts)} scored by likelihood in "
                  f"{time.time() - started:.0f} s", flush=True)
        scores.update(json.loads(path.read_text()))
    return scores


def pick_pool(facts: list[dict], size: int, seed: int) -> list[str]:
    """A seeded pool of in-domain train facts, equally many per relation."""
    rng = random.Random(seed)
    by_relation: dict[str, list[dict]] = {}
    for fact in facts:
        if probe_group(fact) == "train":
            by_relation.setdefault(fact["relation"], []).append(fact)
    for rows in by_relation.values():
        rng.shuffle(rows)
    pool, k = [], 0
    while len(pool) < size and any(k < len(rows) for rows in by_relation.values()):
        pool += [rows[k]["fact_id"] for _, rows in sorted(by_relation.items()) if k < len(rows)]
        k += 1
    return pool[:size]


def pool_strata(pool: dict[str, float], n: int, strata: int) -> list[list[str]]:
    """The pool's facts in min(strata, n) equal-count strata of their scores (ties broken by fact id)."""
    ranked = sorted(pool, key=lambda i: (pool[i], i))
    return [list(s) for s in np.array_split(ranked, min(strata, n))]


def select(pool: dict[str, float], n: int, seed: int, n_strata: int) -> list[dict]:
    """n facts drawn equally from n_strata equal-count strata of the pool's scores, half FIT and half REPORT within
    each stratum, in an order that interleaves the strata (every prefix is a stratified sample)."""
    rng = random.Random(seed + 1)
    strata = pool_strata(pool, n, n_strata)
    per = [n // len(strata) + (k >= len(strata) - n % len(strata)) for k in range(len(strata))]  # extra: on top
    picked = []
    for k, (stratum, m) in enumerate(zip(strata, per, strict=True)):
        chosen = rng.sample(stratum, m)
        picked.append([{"fact_id": i, "stratum": k, "half": ("fit", "report")[(j + k) % 2],
                        "pool_likelihood": pool[i]} for j, i in enumerate(chosen)])
    order = []
    for j in range(max(per)):
        order += [stratum[j] for stratum in picked if j < len(stratum)]
    return order


def run_chunks(setup: Setup, chosen: list[dict], conf: Probe, args, cache: Path) -> None:
    chunks = [chosen[i:i + args.chunk] for i in range(0, len(chosen), args.chunk)]
    limit = len(chunks) if not args.stop_after else -(-args.stop_after // args.chunk)
    for c, chunk in enumerate(chunks[:limit]):
        rows = [setup.facts[x["fact_id"]] for x in chunk]
        for run, (method, extra) in RUNS.items():
            path = cache / run / f"{c:04d}.json"
            if path.is_file() or run not in args.runs:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            run_conf = conf.model_copy(update=extra)
            model, tokenizer = setup.model(run_conf.dtype)
            started = time.time()
            with ComputeMeter(model) as meter:
                scored = score_facts(model, tokenizer, rows, run_conf, method, chunk_seed(args.seed, run, c))
            wall = time.time() - started
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"facts": [x["fact_id"] for x in chunk], "rows": scored, "wall_s": wall,
                                       **meter.as_dict()}))
            tmp.replace(path)
            print(f"chunk {c + 1}/{limit} {run}: {len(rows)} facts in {wall:.1f} s ({meter.tokens} forward tokens)",
                  flush=True)


def load_runs(chosen: list[dict], args, cache: Path) -> tuple[list[dict], dict, dict]:
    """The facts every run has finished, their rows per run, and each run's summed cost over them."""
    rows: dict[str, dict[str, dict]] = {run: {} for run in RUNS}
    cost: dict[str, dict[str, float]] = {run: {} for run in RUNS}
    done_chunks: dict[str, set[int]] = {run: set() for run in RUNS}
    for run in RUNS:
        for path in sorted((cache / run).glob("*.json")):
            data = json.loads(path.read_text())
            done_chunks[run].add(int(path.stem))
            for row in data["rows"]:
                rows[run][row["fact_id"]] = row
            for key in ("wall_s", "forward_tokens", "head_rows", "gflops"):
                cost[run][key] = cost[run].get(key, 0.0) + data[key]
    common = set.intersection(*done_chunks.values())
    extra = set.union(*done_chunks.values()) - common
    if extra:  # a run got further than the others: count only the chunks all runs finished
        cost = {run: {} for run in RUNS}
        for run in RUNS:
            for c in sorted(common):
                data = json.loads((cache / run / f"{c:04d}.json").read_text())
                for key in ("wall_s", "forward_tokens", "head_rows", "gflops"):
                    cost[run][key] = cost[run].get(key, 0.0) + data[key]
    ids = {i for c in common for i in json.loads((cache / "sample" / f"{c:04d}.json").read_text())["facts"]}
    return [x for x in chosen if x["fact_id"] in ids], rows, cost


# --- analysis ------------------------------------------------------------------------------------------------


def fit_threshold(scores: np.ndarray, zero: np.ndarray) -> float:
    """The level-0 threshold that best matches sampling's R = 0 on these facts: score < threshold <=> R = 0.
    Ties: the geometric middle of the best interval of candidate cuts."""
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] / 2 if values[0] > 0 else -1.0],
                           np.sqrt(np.clip(values[:-1], 1e-12, None) * values[1:]), [values[-1] * 2 + 1e-9]])
    accuracy = np.array([np.mean((scores < c) == zero) for c in cuts])
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(cuts[best[len(best) // 2]])


def fit_calibration(kind: str, scores: np.ndarray, target: np.ndarray):
    """score -> R, fitted on these facts: raw and threshold: identity; power: a * s^g (least squares in log space
    over facts with R > 0); isotonic: monotone step function."""
    if kind in ("raw", "threshold"):
        return lambda s: np.asarray(s, dtype=float)
    if kind == "power":
        keep = (target > 0) & (scores > 0)
        if keep.sum() < 3:
            return lambda s: np.asarray(s, dtype=float)
        slope, intercept = np.polyfit(np.log(scores[keep]), np.log(target[keep]), 1)
        return lambda s: np.clip(np.exp(intercept) * np.clip(np.asarray(s, dtype=float), 1e-12, None) ** slope, 0, 1)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, target)
    return lambda s: iso.predict(np.asarray(s, dtype=float))


def fit_levels(kind: str, scores: np.ndarray, target: np.ndarray, conf: Probe):
    """A function score -> level fitted on (scores, sampling R): threshold for level 0, calibration for 1..4."""
    floor = resolution(conf.templates, conf.samples)
    threshold = floor if kind == "raw" else fit_threshold(scores, target < floor)
    calibrate = fit_calibration(kind, scores, target)
    bounds = conf.level_bounds

    def levels(s: np.ndarray) -> np.ndarray:
        cal = calibrate(s)
        return np.array([0 if x < threshold else bisect.bisect_left(bounds, c) + 1
                         for x, c in zip(s, cal, strict=True)])

    return levels, threshold, calibrate


def kappa(a, b, weights=None) -> float | None:
    """Cohen's kappa of two level labellings (memqa.stats.cohen_kappa over LEVELS); None when both are constant."""
    if len(set(a)) < 2 and len(set(b)) < 2:
        return None
    return cohen_kappa(a, b, labels=LEVELS, weights=weights)


def bootstrap_interval(statistic, *paired: np.ndarray, seed: int, draws: int = 1000) -> list[float] | None:
    """Percentile interval (memqa.stats.CONFIDENCE) of statistic(*paired) over the facts resampled with
    replacement, the same facts for every array (draws where the statistic is undefined, e.g. one level only,
    are left out)."""
    rng = np.random.default_rng(seed)
    n = len(paired[0])
    values = []
    for _ in range(draws):
        picked = rng.integers(0, n, n)
        values.append(statistic(*(array[picked] for array in paired)))
    values = [v for v in values if v is not None and v == v]
    if len(values) < draws // 2:
        return None
    tail = (1 - CONFIDENCE) / 2
    return [round(float(q), 3) for q in np.quantile(values, [tail, 1 - tail])]


def cv_kappa(kind: str, scores: np.ndarray, target: np.ndarray, truth: np.ndarray, conf: Probe, seed: int) -> float:
    """5-fold cross-validated kappa within the FIT half (out-of-fold levels, one kappa over all of them)."""
    folds = np.random.default_rng(seed).permutation(len(scores)) % 5
    predicted = np.zeros(len(scores), dtype=int)
    for k in range(5):
        train, test = folds != k, folds == k
        if test.any():
            levels, _, _ = fit_levels(kind, scores[train], target[train], conf)
            predicted[test] = levels(scores[test])
    return kappa(list(truth), list(predicted)) or 0.0


@dataclass(frozen=True)
class Facts:
    """The facts done, as arrays over them: the halves, sampling's R and levels, the relations."""
    ids: list[str]
    fit: np.ndarray
    report: np.ndarray
    sample_r: np.ndarray
    truth: np.ndarray
    relations: np.ndarray
    pool_score: np.ndarray  # the likelihood score that placed each fact in its stratum

    @classmethod
    def of(cls, done: list[dict], facts: dict, rows: dict, conf: Probe) -> Facts:
        floor = resolution(conf.templates, conf.samples)
        ids = [x["fact_id"] for x in done]
        half = np.array([x["half"] for x in done])
        sample_r = np.array([rows["sample"][i]["score"] for i in ids])
        return cls(ids, half == "fit", half == "report", sample_r,
                   np.array([memory_level(r, conf.level_bounds, floor) for r in sample_r]),
                   np.array([facts[i]["relation"] for i in ids]), np.array([x["pool_likelihood"] for x in done]))


@dataclass(frozen=True)
class Population:
    """The facts the default probe labels, placed in the crosscheck's post-strata by their likelihood score:
    "all" (every probe group) and "train" (the in-domain train pool the SFT levels come from). Weighting to "all"
    assumes that within a likelihood stratum the test facts agree as the sampled train facts do."""
    bounds: np.ndarray
    strata: dict[str, np.ndarray]

    @classmethod
    def of(cls, pool: dict[str, float], population: dict[str, list], n: int, n_strata: int) -> Population:
        bounds = stratum_bounds([[pool[i] for i in stratum] for stratum in pool_strata(pool, n, n_strata)])
        scores = {"all": [score for score, _ in population.values()],
                  "train": [score for score, group in population.values() if group == "train"]}
        return cls(bounds, {name: assign(values, bounds) for name, values in scores.items()})


def half_weights(d: Facts, half: np.ndarray, people: Population, name: str) -> np.ndarray | str:
    """Weights of one half's facts to population `name`, or the error that says why there are none (a partial
    run: some post-stratum has no fact of this half yet)."""
    try:
        return population_weights(assign(d.pool_score[half], people.bounds), people.strata[name], len(people.bounds))
    except MemqaError as error:
        return str(error)


def population_agreement(d: Facts, half: np.ndarray, predicted: np.ndarray, people: Population, seed: int) -> dict:
    """Kappa of one half's levels with sampling's, weighted to each population (memqa.agreement), with its
    interval and both sides' weighted level shares."""
    truth = d.truth[half]
    result = {}
    for name, population_strata in people.strata.items():
        weights = half_weights(d, half, people, name)
        if isinstance(weights, str):
            result[name] = {"facts": int(len(population_strata)), "error": weights}
            continue
        value = agreement_kappa(truth, predicted, weights, len(LEVELS))
        shares = {side: np.bincount(levels, weights=weights, minlength=len(LEVELS)) / weights.sum()
                  for side, levels in (("sampling", truth), ("estimator", predicted))}
        result[name] = {"facts": int(len(population_strata)), "kappa": None if value is None else round(value, 4),
                        "kappa_ci": weighted_kappa_interval(truth, predicted, weights, len(LEVELS), seed),
                        **{f"{side}_level_shares": [round(float(x), 4) for x in v] for side, v in shares.items()}}
    return result


def run_scores(d: Facts, rows: dict, run: str) -> np.ndarray:
    return np.array([rows[run][i]["score"] for i in d.ids])


def template_values(d: Facts, rows: dict, run: str) -> np.ndarray:
    """[fact, template] the run's per-template values."""
    return np.array([rows[run][i]["template_prob"] for i in d.ids], dtype=float)


def screened_scores(d: Facts, rows: dict, screen_run: str, sampled_run: str,
                    cut: float) -> tuple[np.ndarray, np.ndarray]:
    """The template screen (probe.rb_screen_cut) at cut: per fact, the mean over templates of the sampled run's value
    where the screen's likelihood is >= cut and the likelihood elsewhere; and which templates were sampled."""
    start, sampled = template_values(d, rows, screen_run), template_values(d, rows, sampled_run)
    kept = start >= cut
    return np.where(kept, sampled, start).mean(axis=1), kept


def raw_levels(score: np.ndarray, conf: Probe) -> np.ndarray:
    """The levels as the pipeline makes them: level 0 below 1/(templates x samples), no calibration."""
    floor = resolution(conf.templates, conf.samples)
    return np.array([memory_level(s, conf.level_bounds, floor) for s in score])


def fit_screen_cut(d: Facts, rows: dict, runs: tuple[str, str], people: Population,
                   conf: Probe) -> tuple[float, dict[str, float | None]]:
    """The largest of SCREEN_CUTS at which the screened raw levels agree with sampling's on the FIT half
    (population-weighted kappa) at least as well as the unscreened run's (0.0: none does, no screen); and the FIT
    kappa at each cut (key "none": unscreened). Chosen without REPORT."""
    weights = half_weights(d, d.fit, people, "all")

    def fit_kappa(score: np.ndarray) -> float | None:  # population_agreement's kappa, without its interval
        if isinstance(weights, str):
            return None
        value = agreement_kappa(d.truth[d.fit], raw_levels(score[d.fit], conf), weights, len(LEVELS))
        return None if value is None else round(value, 4)

    unscreened = fit_kappa(run_scores(d, rows, runs[1]))
    by_cut = {"none": unscreened, **{f"{cut:g}": fit_kappa(screened_scores(d, rows, *runs, cut)[0])
                                     for cut in SCREEN_CUTS}}
    passing = [cut for cut in SCREEN_CUTS if unscreened is not None and (by_cut[f"{cut:g}"] or -1.0) >= unscreened]
    return (max(passing) if passing else 0.0), by_cut


def estimator_scores(d: Facts, rows: dict, cost: dict, people: Population,
                     conf: Probe) -> dict[str, tuple[np.ndarray, dict]]:
    """Each estimator's score per fact and its cost. A plain one (ESTIMATORS) averages its runs and adds their
    costs; a screened one (SCREENED) is the template screen at the cut fitted on FIT (fit_screen_cut), at the
    screen's cost plus the rao_blackwell run's times the share of these facts' templates it sampled."""
    keys = cost["sample"]
    out = {name: (np.mean([run_scores(d, rows, run) for run in runs], axis=0),
                  {key: sum(cost[run][key] for run in runs) for key in keys}) for name, runs in ESTIMATORS.items()}
    for name, runs in SCREENED.items():
        score, kept = screened_scores(d, rows, *runs, fit_screen_cut(d, rows, runs, people, conf)[0])
        out[name] = (score, {key: cost[runs[0]][key] + cost[runs[1]][key] * float(kept.mean()) for key in keys})
    return out


def analyse(data: Facts, rows: dict, cost: dict, conf: Probe, seed: int, people: Population) -> dict:
    """Per estimator, against sampling: correlation, levels under each calibration, cost (module docstring, 4)."""
    return {name: analyse_estimator(data, score, spent, cost["sample"], conf, seed, people)
            for name, (score, spent) in estimator_scores(data, rows, cost, people, conf).items()}


def analyse_estimator(d: Facts, score: np.ndarray, spent: dict, sample_cost: dict, conf: Probe, seed: int,
                      people: Population) -> dict:
    spent = {key: round(value, 3) for key, value in spent.items()}
    report_score, report_sample = score[d.report], d.sample_r[d.report]
    result = {
        "spearman_report": spearman(report_score, report_sample),
        "spearman_all": spearman(score, d.sample_r),
        "cost": spent,
        "cost_vs_sample": {key: round(sample_cost[key] / spent[key], 2) if spent[key] else None
                           for key in sample_cost},
        "calibrations": {},
    }
    result["spearman_report_ci"] = bootstrap_interval(spearman, report_score, report_sample, seed=seed)
    fitted = {}  # calibration kind -> (REPORT levels, level-0 threshold, calibration)
    for kind in ("raw", *CALIBRATIONS):  # raw: the pipeline's levels (threshold 1/210, no calibration)
        levels, threshold, calibrate = fit_levels(kind, score[d.fit], d.sample_r[d.fit], conf)
        fitted[kind] = levels(report_score), threshold, calibrate
        result["calibrations"][kind] = calibration_result(d, score, fitted[kind], kind, conf, seed)
        result["calibrations"][kind]["population_report"] = population_agreement(d, d.report, fitted[kind][0],
                                                                                  people, seed)
        if kind == "raw":  # nothing is fitted for raw levels: their FIT agreement is a fair basis for a choice
            result["calibrations"][kind]["population_fit"] = population_agreement(d, d.fit, levels(score[d.fit]),
                                                                                  people, seed)
    chosen = max(CALIBRATIONS, key=lambda k: result["calibrations"][k]["cv_kappa_fit"])
    result.update(chosen_result(d, report_score, fitted[chosen], chosen, result["calibrations"][chosen]))
    return result


def choose_on_fit(analysis: dict) -> dict:
    """The estimator whose raw levels (as the pipeline makes them) agree best with sampling's on the FIT half,
    population-weighted (ties: the cheaper in GFLOPs), and its REPORT-half agreement: chosen without REPORT."""
    def fit_kappa(name: str) -> float:
        return analysis[name]["calibrations"]["raw"]["population_fit"]["all"].get("kappa") or -1.0

    name = max(analysis, key=lambda n: (fit_kappa(n), -analysis[n]["cost"]["gflops"]))
    raw = analysis[name]["calibrations"]["raw"]
    return {"estimator": name, "rule": "max population-weighted FIT kappa of raw levels; ties: fewer GFLOPs",
            "kappa_fit_population": fit_kappa(name), "report_population": raw["population_report"],
            "kappa_report_sample": raw["kappa_report"], "kappa_report_sample_ci": raw["kappa_report_ci"],
            "cost_vs_sample": analysis[name]["cost_vs_sample"]}


def screen_result(d: Facts, rows: dict, runs: tuple[str, str], people: Population, conf: Probe) -> dict:
    """A screened estimator's template screen (SCREENED: its likelihood run, its rao_blackwell run): the cut fitted on
    FIT and the FIT kappa at every cut tried; the share of templates it samples and of facts it leaves unsampled
    (level 0), on these facts and weighted to the population; on REPORT, the facts above level 0 it left unsampled
    (so at level 0), also weighted."""
    cut, by_cut = fit_screen_cut(d, rows, runs, people, conf)
    _, kept = screened_scores(d, rows, *runs, cut)
    unsampled, above = ~kept.any(axis=1), d.truth > 0
    missed = unsampled[d.report] & above[d.report]
    result = {"cut": cut, "fit_kappa_by_cut": by_cut, "template_share_sampled": round(float(kept.mean()), 4),
              "facts_unsampled": int(unsampled.sum()), "missed_facts_report": int(missed.sum()),
              "above_level0_report": int(above[d.report].sum())}
    everyone = half_weights(d, np.ones(len(d.ids), bool), people, "all")
    report = half_weights(d, d.report, people, "all")
    if isinstance(everyone, str) or isinstance(report, str):
        return {**result, "error": everyone if isinstance(everyone, str) else report}
    result["population_template_share_sampled"] = round(float(np.average(kept.mean(axis=1), weights=everyone)), 4)
    result["population_facts_unsampled"] = round(float(np.average(unsampled, weights=everyone)), 4)
    if above[d.report].any():
        result["missed_above_level0_report"] = round(float(report[missed].sum() / report[above[d.report]].sum()), 4)
    return result


def calibration_result(d: Facts, score: np.ndarray, fitted: tuple, kind: str, conf: Probe, seed: int) -> dict:
    """How the REPORT levels of one calibration (fitted on FIT) agree with sampling's."""
    predicted, threshold, _ = fitted
    report_truth = d.truth[d.report]
    return {
        "kappa_report_ci": bootstrap_interval(kappa, report_truth, predicted, seed=seed),
        "level0_threshold": threshold,
        "cv_kappa_fit": round(cv_kappa(kind, score[d.fit], d.sample_r[d.fit], d.truth[d.fit], conf, seed), 4),
        "kappa_report": kappa(report_truth, predicted),
        "level_agreement_report": round(float(np.mean(predicted == report_truth)), 4),
    }


def chosen_result(d: Facts, report_score: np.ndarray, fitted: tuple, chosen: str, calibrated: dict) -> dict:
    """The chosen calibration's REPORT levels: kappas, confusion matrix, agreement per relation."""
    predicted, threshold, calibrate = fitted
    report_truth, report_sample, relations = d.truth[d.report], d.sample_r[d.report], d.relations[d.report]
    confusion = np.zeros((len(LEVELS), len(LEVELS)), dtype=int)
    for t, p in zip(report_truth, predicted, strict=True):
        confusion[t, p] += 1
    per_relation = {}
    for relation in sorted(set(relations)):
        mask = relations == relation
        per_relation[relation] = {
            "facts": int(mask.sum()),
            "level_agreement": round(float(np.mean(predicted[mask] == report_truth[mask])), 4),
            "mean_abs_error": round(float(np.mean(np.abs(calibrate(report_score[mask]) - report_sample[mask]))), 4),
        }
    return {
        "calibration": chosen,
        "level0_threshold": threshold,
        "kappa_report": calibrated["kappa_report"],
        "kappa_report_ci": calibrated["kappa_report_ci"],
        "weighted_kappa_report": kappa(report_truth, predicted, weights="quadratic"),
        "level_agreement_report": calibrated["level_agreement_report"],
        "confusion_report": {"rows": "sampling level 0..4", "columns": "estimator level 0..4",
                             "counts": confusion.tolist()},
        "per_relation_report": per_relation,
        "levels_report": predicted.tolist(),
    }


def noise_ceiling(done: list[dict], rows: dict, conf: Probe, seed: int, draws: int = 200) -> dict:
    """Kappa of sampling's levels with a simulated second sampling run (each template's rate taken as its
    observed share of correct samples): roughly the best any estimator can reach against one sampling run.
    spearman_ceiling_report: the Spearman of R with a continuous score that orders the facts exactly as R
    does but breaks R's ties (most facts have R = 0) at random, the most a continuous score can reach."""
    rng = np.random.default_rng(seed)
    floor = resolution(conf.templates, conf.samples)
    report = [x["fact_id"] for x in done if x["half"] == "report"]
    correct = np.array([rows["sample"][i]["template_correct"] for i in report])
    truth = [memory_level(rows["sample"][i]["score"], conf.level_bounds, floor) for i in report]
    values = []
    for _ in range(draws):
        again = rng.binomial(conf.samples, correct / conf.samples).sum(axis=1) / (conf.templates * conf.samples)
        values.append(kappa(truth, [memory_level(r, conf.level_bounds, floor) for r in again]) or 0.0)
    r = np.array([rows["sample"][i]["score"] for i in report])
    ceiling = [spearman(r, r + rng.random(len(r)) * 1e-9) for _ in range(draws)]
    return {"kappa_median": round(float(np.median(values)), 4), "kappa_p05": round(float(np.percentile(values, 5)), 4),
            "kappa_p95": round(float(np.percentile(values, 95)), 4), "draws": draws,
            "spearman_ceiling_report": round(float(np.mean(ceiling)), 4)}


def plot(path: Path, data: Facts, scores: dict[str, np.ndarray], analysis: dict, conf: Probe, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit, sample_r = data.fit, data.sample_r
    columns = 3
    grid_rows = -(-len(scores) // columns)
    fig, grid = plt.subplots(grid_rows, columns, figsize=(4.2 * columns, 4.2 * grid_rows), sharey=True, squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(scores):]:
        ax.set_visible(False)
    for ax, (name, raw) in zip(axes, scores.items(), strict=False):
        score = np.clip(raw, 1e-7, None)
        ax.scatter(score[fit], sample_r[fit], s=18, facecolors="none", edgecolors="tab:blue", label="fit half")
        ax.scatter(score[~fit], sample_r[~fit], s=18, color="tab:orange", label="report half")
        result = analysis[name]
        ax.axvline(result["level0_threshold"], color="grey", ls=":", lw=1, label="level-0 threshold (fit)")
        for bound in conf.level_bounds:
            ax.axhline(bound, color="lightgrey", lw=0.8)
        ax.plot([1e-7, 1], [1e-7, 1], color="black", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(1e-7, 2)
        ax.set_xlabel(f"{name} score")
        cost = result["cost_vs_sample"]["gflops"]
        ax.set_title(f"{name}\nrho {result['spearman_report']}, kappa {result['kappa_report']} "
                     f"({result['calibration']}), {cost}x cheaper", fontsize=9)
    for ax in grid[:, 0]:
        ax.set_ylabel(f"sampling R ({conf.templates} x {conf.samples}, T {conf.temperature}, "
                      f"{conf.max_new_tokens} tokens)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{model}: cheap estimators vs the paper's sampling protocol ({len(data.ids)} facts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paper_conf(dtype: str | None) -> dict:
    """params.yaml's probe section with the paper's protocol (PROTOCOL, from presets/paper.args), completions not
    saved; dtype None: params.yaml's."""
    params = load_params()
    paper = with_preset(params, PAPER_PRESET).probe
    return {**params.probe.model_dump(), **{key: getattr(paper, key) for key in PROTOCOL},
            "dtype": dtype or params.probe.dtype, "save_completions": False}


class Setup:
    """The first run's probe params, population (every probed fact's likelihood score and probe group) and pool,
    kept in setup_path, so a resumed run or a later analysis is not moved by edits to params.yaml or a regenerated
    data/facts.jsonl; the model is loaded when first needed."""

    def __init__(self, args, model_dir: Path, root: Path) -> None:
        self.model_dir, self._models = model_dir, {}
        path = root / f"setup-seed{args.seed}-pool{args.pool}-{args.dtype or 'params'}.json"
        setup = json.loads(path.read_text()) if path.is_file() else {"conf": paper_conf(args.dtype)}
        self.raw = setup["conf"]
        if "population" not in setup:  # a new setup, or one written before the population was scored
            all_facts = list(read_jsonl("data/facts.jsonl"))
            scores = score_population(*self.model(), all_facts, self.conf, root)
            setup["population"] = {f["fact_id"]: [scores[f["fact_id"]], probe_group(f)]
                                   for f in all_facts if f["fact_id"] in scores}
            setup.setdefault("pool", {i: scores[i] for i in pick_pool(all_facts, args.pool, args.seed)})
            setup.setdefault("facts", [f for f in all_facts if f["fact_id"] in setup["pool"]])
            atomic_write_text(path, json.dumps(setup))
        self.pool, self.population = setup["pool"], setup["population"]
        self.facts = {f["fact_id"]: f for f in setup["facts"]}

    @property
    def conf(self) -> Probe:
        return Probe.model_validate(self.raw)

    def model(self, dtype: str | None = None) -> tuple:
        """(model, tokenizer) in dtype (None: the setup's)."""
        dtype = dtype or self.conf.dtype
        if dtype not in self._models:
            self._models[dtype] = load_model(self.model_dir, dtype)
        return self._models[dtype]


def result_json(args, conf: Probe, setup: Setup, data: Facts, done: list[dict], rows: dict, cost: dict,
                started: float) -> dict:
    """Everything the run measured (module docstring): the selection, the analysis and its summary, the data."""
    people = Population.of(setup.pool, setup.population, args.facts, args.strata)
    analysis = analyse(data, rows, cost, conf, args.seed, people)
    sample = rows["sample"]
    return {
        "model": args.model, "dtype": conf.dtype, "threads": torch.get_num_threads(),
        "protocol": {k: getattr(conf, k) for k in PROTOCOL} | {"level_bounds": conf.level_bounds,
                                                              "resolution": resolution(conf.templates, conf.samples)},
        "selection": {"pool": len(setup.pool), "strata": min(args.strata, args.facts), "asked": args.facts,
                      "facts": len(done), "fit": sum(x["half"] == "fit" for x in done),
                      "report": sum(x["half"] == "report" for x in done), "seed": args.seed, "chunk": args.chunk},
        "summary": {name: summary(a) for name, a in analysis.items()},
        "chosen_on_fit": choose_on_fit(analysis),
        "screens": {name: screen_result(data, rows, runs, people, conf) for name, runs in SCREENED.items()},
        "population": {"facts": len(setup.population), "train_facts": int(len(people.strata["train"])),
                       "post_strata_bounds": people.bounds.tolist()},
        "sampling_noise_ceiling": noise_ceiling(done, rows, conf, args.seed),
        "sample_cost": cost["sample"],
        "sample_levels_report": [memory_level(sample[x["fact_id"]]["score"], conf.level_bounds,
                                              resolution(conf.templates, conf.samples))
                                 for x in done if x["half"] == "report"],
        "estimators": analysis,
        "facts": [{**x, **{k: setup.facts[x["fact_id"]][k] for k in ("relation", "subject", "question", "answers")}}
                  for x in done],
        "scores": {x["fact_id"]: {"sample": sample[x["fact_id"]]["score"],
                                  "sample_template_correct": sample[x["fact_id"]]["template_correct"],
                                  **{run: {"score": rows[run][x["fact_id"]]["score"],
                                           "template_prob": rows[run][x["fact_id"]]["template_prob"]}
                                     for run in RUNS if run != "sample"}} for x in done},
        "completions": {x["fact_id"]: sample[x["fact_id"]]["completions"] for x in done},
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "script_wall_s": round(time.time() - started, 1),
    }


def summary(a: dict) -> dict:
    """One estimator's headline numbers (its analysis a)."""
    return {"spearman_report": a["spearman_report"], "kappa_report": a["kappa_report"],
            "spearman_report_ci": a["spearman_report_ci"], "kappa_report_ci": a["kappa_report_ci"],
            "kappa_report_raw": a["calibrations"]["raw"]["kappa_report"],
            "kappa_report_raw_ci": a["calibrations"]["raw"]["kappa_report_ci"],
            "population_report_raw": a["calibrations"]["raw"]["population_report"]["all"],
            "level0_threshold": a["level0_threshold"], "calibration": a["calibration"],
            "weighted_kappa_report": a["weighted_kappa_report"],
            "level_agreement_report": a["level_agreement_report"],
            "gflops_vs_sample": a["cost_vs_sample"]["gflops"],
            "tokens_vs_sample": a["cost_vs_sample"]["forward_tokens"],
            "wall_vs_sample": a["cost_vs_sample"]["wall_s"]}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_inputs(args.model)
    model_dir = Path(f"data/models/{args.model}")
    root = Path("data/cache/crosscheck") / args.model
    root.mkdir(parents=True, exist_ok=True)
    if args.load_cache:
        print(f"cache: {cache_archive.restore(args.load_cache, root)} files added from {args.load_cache}", flush=True)
    started = time.time()
    setup = Setup(args, model_dir, root)
    conf = setup.conf
    chosen = select(setup.pool, args.facts, args.seed, args.strata)
    # the weight files' digest, not one recorded at materialisation (a model retrained in place is a new run)
    weights = weights_digest(model_dir, memo=root / "weights-sha256.json")
    cache = root / digest([[x["fact_id"] for x in chosen], setup.raw, args.chunk, args.seed, weights])
    for run in args.redo:
        for path in (cache / run).glob("*.json"):
            path.unlink()
    if not args.analyze_only:
        run_chunks(setup, chosen, conf, args, cache)
    if args.save_cache:
        print(f"cache: {cache_archive.save(root, args.save_cache)} files packed into {args.save_cache}", flush=True)
    done, rows, cost = load_runs(chosen, args, cache)
    if len(done) < 4 or len({x["half"] for x in done}) < 2:
        print(f"{len(done)} facts done: too few to analyse")
        return
    data = Facts.of(done, setup.facts, rows, conf)
    result = result_json(args, conf, setup, data, done, rows, cost, started)
    out = Path(f"benchmarks/results/probe_crosscheck-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    people = Population.of(setup.pool, setup.population, args.facts, args.strata)
    scores = {name: score for name, (score, _) in estimator_scores(data, rows, cost, people, conf).items()}
    plot(out.with_suffix(".png"), data, scores, result["estimators"], conf, args.model)
    print(json.dumps({k: result[k] for k in ("selection", "summary", "sampling_noise_ceiling", "sample_cost")},
                     indent=1))


if __name__ == "__main__":
    main()
