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
from memqa.matching import contains, get_matcher
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


# The modules whose code decides a score (loading, prompts, engine, matcher, this file). A change to any of
# them must invalidate finished shards; a change elsewhere (config, levels, IO) must not.
SCORING_CODE = tuple(Path(__file__).parent / f"{name}.py" for name in ("engine", "matching", "models", "probing",
                                                                       "prompts"))


def fingerprint(conf: dict, model_dir: Path, facts_path: Path, templates_path: Path) -> str:
    """Identifies everything that determines a shard's scores: params, weights, facts, templates and code.

    Shards of another fingerprint are never mixed in. The weights enter through their digest (recorded at
    materialisation, else computed), so a model folder retrained in place gets a new key.
    """
    from memqa.models import weights_sha256

    relevant = {k: v for k, v in conf.items() if k not in ("level_bounds", "crosscheck_facts")}
    if float(conf["temperature"]) == 0:
        relevant.pop("batch_size", None)  # greedy results do not depend on it
    model_info = json.loads((model_dir / "memqa_model.json").read_text())
    weights = model_info.get("weights_sha256") or weights_sha256(model_dir)
    digest = hashlib.sha256(json.dumps([relevant, weights], sort_keys=True).encode())
    for path in (model_dir / "config.json", facts_path, templates_path, *SCORING_CODE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def answer_settled(matcher, text: str, answers: list[str]) -> bool:
    """True when a completion's text so far already counts as correct, whatever tokens may follow.

    A trailing U+FFFD (a character whose remaining bytes are still to come) is not judged. `contains`
    only gains matches as text is appended (normalising is character by character), so a match is
    final. A word-aligned matcher (token_sequence) could lose one ('Paris' -> 'Parisian'): it judges
    only the text before the last whitespace, whose words no later token can extend.
    """
    text = text.rstrip("\ufffd")
    if matcher is not contains:
        text = text[:max((i for i, ch in enumerate(text) if ch.isspace()), default=0)]
    return matcher(text, answers)


def score_facts(model, tokenizer, facts: list[dict], conf: dict, method: str, seed: int) -> list[dict]:
    """One row per fact: R, per-template results, and (sampling, when asked) the completions.

    Sampling stops a completion as soon as it contains a gold answer (answer_settled): later tokens
    could not change whether it counts, so R is the same as from full-length completions, at a fraction
    of the decoding. Saved completions (save_completions) are therefore cut where the answer was found.
    That relies on decoding a prefix of the tokens giving a prefix of the text (byte-level BPE and
    SentencePiece decoders do); a tokenizer that cleans up spaces on decoding decodes to full length.
    """
    n_templates, n_samples = int(conf["templates"]), int(conf["samples"])
    temperature = float(conf["temperature"])
    # prompts are laid out fact by fact, n_templates each
    prompts = [fill(t, fact["subject"]) for fact in facts for t in templates_for(fact["relation"], n_templates)]
    per_fact = len(prompts) // len(facts)
    rows = []
    if method == "sample":
        matcher = get_matcher(conf["matcher"])
        samples = 1 if temperature == 0 else n_samples

        def found(p: int, text: str) -> bool:  # prompt p belongs to fact p // per_fact
            return answer_settled(matcher, text, facts[p // per_fact]["answers"])

        stop_when = None if getattr(tokenizer, "clean_up_tokenization_spaces", False) else found
        completions = engine.generate(model, tokenizer, prompts, max_new_tokens=int(conf["max_new_tokens"]),
                                      num_samples=samples, temperature=temperature,
                                      batch_size=int(conf["batch_size"]), seed=seed, stop_when=stop_when)
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
                  desc: str = "probe") -> tuple[list[dict], int]:
    """Score facts shard by shard; finished shards on disk are reused, so a killed run resumes.

    Returns the rows and how many shards were reused rather than computed.
    """
    method = method or conf["method"]
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(facts, int(conf["chunk_size"]))
    total = sum(len(rows) for _, rows in plan)
    reused = [name for name, _ in plan if (shard_dir / f"{name}.jsonl").is_file()]
    done = sum(len(rows) for name, rows in plan if name in reused)
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
    return results, len(reused)


def crosscheck(model, tokenizer, facts: list[dict], main_rows: list[dict], conf: dict, shard_dir: Path) -> dict:
    """Run the other method on an evenly spaced subset: Spearman of the scores, Cohen's kappa of the levels."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    n = int(conf["crosscheck_facts"])
    step = max(1, len(facts) // n)
    subset = facts[::step][:n]
    other = METHODS[1 - METHODS.index(conf["method"])]
    subset_key = hashlib.sha256("\n".join(f["fact_id"] for f in subset).encode()).hexdigest()[:12]
    other_rows, _ = probe_sharded(model, tokenizer, subset, conf, shard_dir / f"crosscheck-{other}-{subset_key}",
                                  method=other, desc=f"crosscheck {other}")
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
    started = time.time()
    model, tokenizer = load_model(model_dir, conf.get("dtype", "bfloat16"))
    shard_dir = cache_root / model_name / fingerprint(conf, model_dir, facts_path, templates_path)
    rows, reused = probe_sharded(model, tokenizer, facts, conf, shard_dir / conf["method"], desc=f"probe {model_name}")
    add_levels(rows, conf)
    metrics = {
        "method": conf["method"],
        "facts": len(rows),
        "shards": len(shard_plan(facts, int(conf["chunk_size"]))),
        "shards_reused": reused,
        "level_counts": level_counts(rows, conf["level_bounds"]),
        "mean_score": {g: round(sum(r["score"] for r in rows if r["group"] == g) /
                                max(1, sum(r["group"] == g for r in rows)), 4) for g in GROUPS},
        "relations_probed": dict(sorted(Counter(r["relation"] for r in rows).items())),
    }
    if int(conf.get("crosscheck_facts") or 0) > 0:
        metrics["crosscheck"] = crosscheck(model, tokenizer, facts, rows, conf, shard_dir)
    metrics["wall_s"] = round(time.time() - started, 3)  # the stage's time, shards reused or not
    return rows, metrics
