"""The probe: memory score R of every fact (multi-template complementation), sharded and resumable."""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from memqa import engine
from memqa.errors import MemqaError
from memqa.io import write_jsonl
from memqa.matching import get_matcher
from memqa.memory import GROUPS, add_levels, level_counts, probe_group
from memqa.prompts import fill, templates_for

METHODS = ("sample", "likelihood")


def shard_plan(facts: list[dict], chunk_size: int) -> list[tuple[str, list[dict]]]:
    """(shard name, facts) in a fixed order: per group and relation, chunk_size facts at a time."""
    plan = []
    for group in GROUPS:
        by_relation: dict[str, list[dict]] = {}
        for fact in facts:
            if probe_group(fact) == group:
                by_relation.setdefault(fact["relation"], []).append(fact)
        for relation, rows in by_relation.items():
            for start in range(0, len(rows), chunk_size):
                plan.append((f"{group}-{relation}-{start // chunk_size:04d}", rows[start:start + chunk_size]))
    return plan


def fingerprint(conf: dict, model_dir: Path, facts_path: Path, templates_path: Path) -> str:
    """Identifies a probe run's inputs; shards of another fingerprint are never mixed in."""
    relevant = {k: v for k, v in conf.items() if k not in ("level_bounds", "crosscheck_facts")}
    if float(conf["temperature"]) == 0:
        relevant.pop("batch_size", None)  # greedy results do not depend on it
    model_info = json.loads((model_dir / "memqa_model.json").read_text())
    model_info.pop("wall_s", None)  # re-materialising the same source must not invalidate finished shards
    digest = hashlib.sha256(json.dumps([relevant, model_info], sort_keys=True).encode())
    for path in (model_dir / "config.json", facts_path, templates_path):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def score_facts(model, tokenizer, facts: list[dict], conf: dict, method: str, seed: int) -> list[dict]:
    """One row per fact: R, per-template results, and (sampling, when asked) the completions."""
    n_templates, n_samples = int(conf["templates"]), int(conf["samples"])
    temperature = float(conf["temperature"])
    # prompts are laid out fact by fact, n_templates each
    prompts = [fill(t, fact["subject"]) for fact in facts for t in templates_for(fact["relation"], n_templates)]
    per_fact = len(prompts) // len(facts)
    rows = []
    if method == "sample":
        matcher = get_matcher(conf["matcher"])
        samples = 1 if temperature == 0 else n_samples
        completions = engine.generate(model, tokenizer, prompts, max_new_tokens=int(conf["max_new_tokens"]),
                                          num_samples=samples, temperature=temperature,
                                          batch_size=int(conf["batch_size"]), seed=seed)
        for f, fact in enumerate(facts):
            mine = completions[f * per_fact:(f + 1) * per_fact]
            correct = [sum(matcher(text, fact["answers"]) for text in texts) for texts in mine]
            row = {"template_correct": correct, "score": sum(correct) / (len(correct) * samples)}
            if conf.get("save_completions"):
                row["completions"] = mine
            rows.append(row)
    elif method == "likelihood":
        pairs = [(p, " " + answer) for p, prompt in enumerate(prompts) for answer in facts[p // per_fact]["answers"]]
        logprobs = engine.continuation_logprobs(model, tokenizer, [prompts[p] for p, _ in pairs],
                                                    [answer for _, answer in pairs], temperature=temperature,
                                                    batch_size=int(conf["batch_size"]))
        best = [0.0] * len(prompts)  # the best alias per prompt
        for (p, _), logprob in zip(pairs, logprobs, strict=True):
            best[p] = max(best[p], math.exp(logprob))
        for f in range(len(facts)):
            probs = [round(b, 6) for b in best[f * per_fact:(f + 1) * per_fact]]
            rows.append({"template_prob": probs, "score": sum(probs) / len(probs)})
    else:
        raise MemqaError(f"unknown probe.method '{method}': use one of {', '.join(METHODS)}")
    out = []
    for fact, row in zip(facts, rows, strict=True):
        out.append({"fact_id": fact["fact_id"], "group": probe_group(fact), "relation": fact["relation"],
                    "subject": fact["subject"], "method": method, **row})
    return out


def _shard_seed(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)


def probe_sharded(model, tokenizer, facts: list[dict], conf: dict, shard_dir: Path, method: str | None = None,
                  desc: str = "probe") -> list[dict]:
    """Score facts shard by shard; finished shards on disk are reused, so a killed run resumes."""
    method = method or conf["method"]
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(facts, int(conf["chunk_size"]))
    total = sum(len(rows) for _, rows in plan)
    done = sum(len(rows) for name, rows in plan if (shard_dir / f"{name}.jsonl").is_file())
    results: list[dict] = []
    with tqdm(total=total, initial=done, desc=desc, unit="fact", dynamic_ncols=True) as bar:
        for name, rows in plan:
            path = shard_dir / f"{name}.jsonl"
            if not path.is_file():
                scored = score_facts(model, tokenizer, rows, conf, method, _shard_seed(int(conf["seed"]), name))
                write_jsonl(path, scored)
                bar.update(len(rows))
                bar.set_postfix_str(name)
            with path.open() as handle:
                results.extend(json.loads(line) for line in handle)
    return results


def crosscheck(model, tokenizer, facts: list[dict], main_rows: list[dict], conf: dict, shard_dir: Path) -> dict:
    """Run the other method on an evenly spaced subset: Spearman of the scores, Cohen's kappa of the levels."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    n = int(conf["crosscheck_facts"])
    step = max(1, len(facts) // n)
    subset = facts[::step][:n]
    other = METHODS[1 - METHODS.index(conf["method"])]
    other_rows = probe_sharded(model, tokenizer, subset, conf, shard_dir, method=other, desc=f"crosscheck {other}")
    add_levels(other_rows, conf)
    main_by_id = {r["fact_id"]: r for r in main_rows}
    pairs = [(main_by_id[r["fact_id"]], r) for r in other_rows]
    rho = spearmanr([a["score"] for a, _ in pairs], [b["score"] for _, b in pairs]).statistic
    kappa = cohen_kappa_score([a["level"] for a, _ in pairs], [b["level"] for _, b in pairs])
    agree = sum(a["level"] == b["level"] for a, b in pairs) / len(pairs)
    clean = lambda x: None if x != x else round(float(x), 4)  # noqa: E731  NaN (constant input) -> null
    return {"facts": len(pairs), "other_method": other, "spearman": clean(rho), "cohen_kappa": clean(kappa),
            "level_agreement": round(agree, 4)}


def run_probe(model_name: str, conf: dict, facts: list[dict], model_dir: Path, cache_root: Path,
              templates_path: Path, facts_path: Path) -> tuple[list[dict], dict]:
    """Score and level every train (in-domain) and test fact with the base model; (rows, metrics)."""
    from memqa.models import load_model

    if conf["method"] not in METHODS:
        raise MemqaError(f"unknown probe.method '{conf['method']}': use one of {', '.join(METHODS)}")
    facts = [f for f in facts if probe_group(f)]
    if not facts:
        raise MemqaError(f"{facts_path} holds no train or test facts: check download.per_relation")
    model, tokenizer = load_model(model_dir, conf.get("dtype", "bfloat16"))
    shard_dir = cache_root / model_name / fingerprint(conf, model_dir, facts_path, templates_path)
    started = time.time()
    rows = probe_sharded(model, tokenizer, facts, conf, shard_dir / conf["method"], desc=f"probe {model_name}")
    wall = time.time() - started
    add_levels(rows, conf)
    metrics = {
        "method": conf["method"],
        "facts": len(rows),
        "wall_s": round(wall, 1),
        "level_counts": level_counts(rows, conf["level_bounds"]),
        "mean_score": {g: round(sum(r["score"] for r in rows if r["group"] == g) /
                                max(1, sum(r["group"] == g for r in rows)), 4) for g in GROUPS},
        "relations_probed": dict(sorted(Counter(r["relation"] for r in rows).items())),
    }
    if int(conf.get("crosscheck_facts") or 0) > 0:
        metrics["crosscheck"] = crosscheck(model, tokenizer, facts, rows, conf, shard_dir)
    return rows, metrics
