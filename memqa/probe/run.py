"""run_probe: score and level every probed fact with the base model (sharded, resumable, data parallel), and the
crosscheck of the chosen method against another one on a subset."""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from memqa.config import Probe
from memqa.errors import MemqaError
from memqa.memory import GROUPS, add_levels, level_counts, probe_group
from memqa.probe.estimators import estimator
from memqa.probe.shards import fingerprint, probe_sharded, shard_plan

WEIGHTS_MEMO = "weights-sha256.json"  # per model, in the probe cache: the weight files' digests (weights_digest)


def crosscheck(model, tokenizer, facts: list[dict], main_rows: list[dict], conf: Probe, shard_dir: Path) -> dict:
    """Run the method the chosen one is checked against (its Estimator.crosscheck: sample for every cheap method,
    likelihood for sample) on an evenly spaced subset: Spearman of the scores, Cohen's kappa of the levels."""
    from memqa.stats import cohen_kappa, spearman

    n = conf.crosscheck_facts
    step = max(1, len(facts) // n)
    subset = facts[::step][:n]
    other = estimator(conf.method).crosscheck
    subset_key = hashlib.sha256("\n".join(f["fact_id"] for f in subset).encode()).hexdigest()[:12]
    other_rows, _ = probe_sharded(model, tokenizer, subset, conf, shard_dir / f"crosscheck-{other}-{subset_key}",
                                  method=other, desc=f"crosscheck {other}")
    add_levels(other_rows, conf)
    main_by_id = {r["fact_id"]: r for r in main_rows}
    pairs = [(main_by_id[r["fact_id"]], r) for r in other_rows]
    agree = sum(a["level"] == b["level"] for a, b in pairs) / len(pairs)
    return {"facts": len(pairs), "other_method": other,
            "spearman": spearman([a["score"] for a, _ in pairs], [b["score"] for _, b in pairs]),
            "cohen_kappa": cohen_kappa([a["level"] for a, _ in pairs], [b["level"] for _, b in pairs]),
            "level_agreement": round(agree, 4)}


def probe_metrics(rows: list[dict], conf: Probe, shards: int, reused: int, processes: int) -> dict:
    """The probe stage's metrics of its leveled rows (wall_s, and crosscheck when asked, are added by run_probe)."""
    return {
        "method": conf.method,
        "facts": len(rows),
        "shards": shards,
        "shards_reused": reused,
        "processes": processes,
        # per level a scalar ({L0: ..}): `dvc metrics show` and `dvc exp show` drop lists
        "level_counts": {group: {f"L{lv}": n for lv, n in enumerate(counts)}
                         for group, counts in level_counts(rows, conf.n_levels).items()},
        "mean_score": {g: round(sum(r["score"] for r in rows if r["group"] == g) /
                                max(1, sum(r["group"] == g for r in rows)), 4) for g in GROUPS},
        "relations_probed": dict(sorted(Counter(r["relation"] for r in rows).items())),
        **({"screen": screen_metrics(rows, conf.rb_screen_cut)}
           if conf.method == "rao_blackwell" and conf.rb_screen_cut is not None else {}),
    }


def screen_metrics(rows: list[dict], cut: float) -> dict:
    """The likelihood screen's cut and, per probe group, the facts and templates it sent on to rao_blackwell (a
    fact is sent on when one of its templates is; scalars: `dvc metrics show` drops lists)."""
    def templates(row: dict) -> int:
        return len(row["template_prob"])

    return {"cut": cut, "sent_on": {g: sum(r["group"] == g and not r.get("screened_out") for r in rows)
                                    for g in GROUPS},
            "facts": {g: sum(r["group"] == g for r in rows) for g in GROUPS},
            "templates_sent_on": {g: sum(templates(r) - r["screened_templates"] for r in rows if r["group"] == g)
                                  for g in GROUPS},
            "templates": {g: sum(templates(r) for r in rows if r["group"] == g) for g in GROUPS}}


def run_probe(model_name: str, conf: Probe, facts: list[dict], model_dir: Path, cache_root: Path,
              templates_path: Path, facts_path: Path) -> tuple[list[dict], dict]:
    """Score and level every train (in-domain) and test fact with the base model; (rows, metrics).

    Shards go to cache_root/<model>/<fingerprint>/<method>/. Data parallel under `accelerate launch`
    (probe_sharded): every process returns the whole, one-process result; only the main process should write it."""
    from memqa import vllm_engine
    from memqa.distributed import process_state
    from memqa.models import load_model

    estimator(conf.method)  # an unknown method fails before the model loads
    vllm_engine.check(conf, "probe")  # so does engine vllm without vLLM, or with the crosscheck
    facts = [f for f in facts if probe_group(f)]
    if not facts:
        raise MemqaError(f"{facts_path} holds no train or test facts: check download.per_relation")
    started = time.time()
    state = process_state()  # under `accelerate launch`: this process's share of the shards, on its own device
    if conf.engine == "vllm":  # the sample method only (memqa.config.Probe); the LLM stands in for the model
        model, tokenizer = vllm_engine.load(model_dir, conf.dtype, conf)
    else:
        model, tokenizer = load_model(model_dir, conf.dtype, on=state.device)
    key = fingerprint(conf, model_dir, facts_path, templates_path, memo=cache_root / model_name / WEIGHTS_MEMO,
                      accepted=[f["answers"] for f in facts])
    shard_dir = cache_root / model_name / key
    rows, reused = probe_sharded(model, tokenizer, facts, conf, shard_dir / conf.method, desc=f"probe {model_name}")
    add_levels(rows, conf)
    metrics = probe_metrics(rows, conf, len(shard_plan(facts, conf.chunk_size)), reused, state.num_processes)
    metrics["engine"] = vllm_engine.engine_record(conf)
    if conf.crosscheck_facts > 0:
        metrics["crosscheck"] = crosscheck(model, tokenizer, facts, rows, conf, shard_dir)
    metrics["wall_s"] = round(time.time() - started, 3)  # the stage's time, shards reused or not
    return rows, metrics
