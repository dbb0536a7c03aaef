"""The probe: memory score R of every fact (multi-template complementation), sharded and resumable."""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from memqa import engine
from memqa.errors import MemqaError
from memqa.io import read_jsonl, write_jsonl
from memqa.matching import contains, get_matcher
from memqa.memory import GROUPS, add_levels, level_counts, probe_group
from memqa.prompts import fill, templates_for

METHODS = ("sample", "likelihood", "greedy_containment", "rao_blackwell")

# The traced estimators (greedy_containment, rao_blackwell) teacher-force an answer's tokens after its first only
# where that first token is likely enough: its tempered probability (greedy_containment: times the greedy
# prefix's) above REST_FLOOR. Below it the term is left out (README "The probe": what that costs each estimator).
REST_FLOOR = 1e-4
# greedy_containment follows a greedy path only while the path's own tempered probability is above PATH_FLOOR:
# every later term is a sample that begins with that whole prefix, so together they are below it.
PATH_FLOOR = 1e-4
# rao_blackwell draws from streams of its own: under one seed its samples are independent of `sample`'s.
RB_STREAM = 0x52424C << 32


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
    if conf.get("method") != "rao_blackwell":
        relevant.pop("rb_samples", None)  # only rao_blackwell reads them
        relevant.pop("rb_max_new_tokens", None)
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


def answer_variants(tokenizer, answers: list[str]) -> list[tuple[int, ...]]:
    """The token sequences whose appearance in a completion puts a gold answer in its text: every alias with a
    leading space (' Paris', after a word) and without ('Paris', after a newline or a quote), each tokenised
    on its own. Prefix-free: a sequence that extends another is dropped, since it implies the shorter one;
    so at one position at most one variant can begin, and their probabilities add up exactly."""
    found = set()
    for answer in answers:
        for text in (" " + answer, answer):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids:
                found.add(ids)
    return sorted(v for v in found if not any(o != v and v[:len(o)] == o for o in found))


def _first_match(tokenizer, matcher, tokens: list[int], answers: list[str]) -> int | None:
    """The number of tokens after which a completion's text first counts as correct; None if it never does."""
    if not matcher(tokenizer.decode(tokens, skip_special_tokens=True), answers):
        return None
    for t in range(1, len(tokens) + 1):
        if answer_settled(matcher, tokenizer.decode(tokens[:t], skip_special_tokens=True), answers):
            return t
    return len(tokens)  # word-aligned matcher: the answer is the completion's last word


class _PathTracer:
    """Watches generate_traced: at each position j of each path, the tempered log probability of the token
    chosen and of every answer variant's first token, and forks the path to teacher-force a variant's further
    tokens where its weight is above REST_FLOOR (greedy: P_T(path so far) P_T(v_1), skipping the variant the
    greedy token begins; sampled: P_T(v_1)). Ends a path whose own probability falls below path_floor."""

    def __init__(self, variants: list[list[tuple[int, ...]]], conf: dict, greedy: bool, path_floor: float | None):
        self.variants, self.greedy = variants, greedy
        self.firsts = [sorted({v[0] for v in vs}) for vs in variants]
        self.temperature, self.n_new = float(conf["temperature"]), int(conf["max_new_tokens"])
        self.log_floor = math.log(path_floor) if path_floor else None
        self.records: dict[tuple[int, int], dict] = {}

    def step(self, rows, step, logits, tokens):
        logprobs = engine.tempered_logprobs(logits, self.temperature)
        chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        width = max(len(self.firsts[p]) for p, _ in rows)
        index = torch.tensor([self.firsts[p] + [0] * (width - len(self.firsts[p])) for p, _ in rows],
                             device=logits.device)
        first_lp = logprobs.gather(1, index).tolist()
        halt, forks = [], []
        for k, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            rec = self.records.setdefault(row, {"chosen": [], "first": [], "mass": 0.0, "halted": None, "rest": {}})
            first = dict(zip(self.firsts[row[0]], first_lp[k], strict=False))
            j = len(rec["chosen"])
            for v in self.variants[row[0]]:
                if len(v) < 2 or j + len(v) > self.n_new or (self.greedy and v[0] == token):
                    continue
                weight = math.exp(first[v[0]] + (rec["mass"] if self.greedy else 0.0))
                if weight > REST_FLOOR:
                    forks.append((k, v, (row, j, v)))
            rec["chosen"].append(chosen[k])
            rec["first"].append(first)
            rec["mass"] += chosen[k]
            if self.log_floor is not None and rec["mass"] < self.log_floor:
                rec["halted"] = math.exp(rec["mass"])
                halt.append(k)
        return halt, forks

    def forked(self, tags, logits, targets):
        logprobs = engine.tempered_logprobs(logits, self.temperature).gather(1, targets[:, None].to(logits.device))
        for (row, j, v), value in zip(tags, logprobs.squeeze(1).tolist(), strict=True):
            rest = self.records[row]["rest"]
            rest[(j, v)] = rest.get((j, v), 0.0) + value


def trace_paths(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                answers: list[list[str]], conf: dict, *, samples: int, temperature: float, seed: int,
                path_floor: float | None = None, horizon: int | None = None) -> list[list[dict]]:
    """Decode every prompt `samples` times (temperature 0: greedy; the sampler's per-completion streams) and
    record along each path: [prompt][sample] {tokens, chosen, first, rest, match, halted}.

    chosen[j] / first[j][t] = the tempered (probe.temperature) log probability, at position j (after j
    generated tokens), of the token the path took and of the variants' first tokens t; rest[(j, v)] =
    log P_T(v_2.. | path_<=j, v_1) for the variants forked there (_PathTracer: teacher-forced in the same
    batch, engine.generate_traced). A path stops at EOS, at max_new_tokens, once its text contains a gold
    answer (as the sampler's), or with path_floor (greedy) once its own tempered probability falls below it
    (halted: that probability). match = the number of tokens after which the text first contains an answer
    (None: never); the positions recorded are exactly those before it. horizon: decode at most this many
    tokens (forks still teacher-force variants that end by max_new_tokens).
    """
    matcher = get_matcher(conf["matcher"])
    tracer = _PathTracer(variants, conf, greedy=temperature == 0, path_floor=path_floor)

    def found(p: int, text: str) -> bool:
        return answer_settled(matcher, text, answers[p])

    stop_when = None if getattr(tokenizer, "clean_up_tokenization_spaces", False) else found
    decode = min(horizon or int(conf["max_new_tokens"]), int(conf["max_new_tokens"]))
    ids = engine.generate_traced(model, tokenizer, prompts, tracer, max_new_tokens=decode,
                                 num_samples=samples, temperature=temperature, batch_size=int(conf["batch_size"]),
                                 seed=seed, stop_when=stop_when)
    out = []
    for p, paths in enumerate(ids):
        out.append([])
        for s, tokens in enumerate(paths):
            rec = tracer.records[(p, s)]
            match = _first_match(tokenizer, matcher, tokens, answers[p])
            steps = len(rec["chosen"]) if match is None else min(match, len(rec["chosen"]))
            out[-1].append({"tokens": tokens, "chosen": rec["chosen"][:steps], "first": rec["first"][:steps],
                            "rest": {key: value for key, value in rec["rest"].items() if key[0] < steps},
                            "match": match, "halted": rec["halted"] if match is None else None})
    return out


def greedy_containment(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                       answers: list[list[str]], conf: dict) -> tuple[list[float], list[float], list[dict]]:
    """A lower bound of P(a temperature-T sample of <= N tokens contains a gold answer), per prompt, from the
    greedy path g alone; also the slack (what the approximations left out, at most) and the greedy paths.

    Every sample x either follows g through the step k at which g's text first contains an answer, or first
    leaves g at some step j+1 (x_1..j = g_1..j, x_j+1 != g_j+1). These events are disjoint, so
        P(contains) >= [k exists] P_T(g_<=k)
                       + sum_{j < k} P_T(g_<=j) sum_{variants v, v_1 != g_j+1, j + |v| <= N} P_T(x_j+1.. = v | g_<=j),
    P_T the tempered (T = probe.temperature) probability and v the answer variants (answer_variants, prefix-free,
    so at one j their events are disjoint: the sum is their union, exactly). Each event puts the answer's
    tokens, hence its text, in the sample. P_T(v_1 | g_<=j) comes with the greedy decoding (the logits at j);
    v's further tokens are teacher-forced (a fork of the path, one decoding step per token) only where
    P_T(g_<=j) P_T(v_1 | g_<=j) > REST_FLOOR; a term below it is dropped, and so is everything after the path's
    own probability falls below PATH_FLOOR (where the greedy decoding stops): both keep the bound a lower
    bound; slack = the dropped terms' first-token weights + the abandoned path mass, an upper bound of what
    they could add.
    """
    n_new = int(conf["max_new_tokens"])
    paths = [row[0] for row in trace_paths(model, tokenizer, prompts, variants, answers, conf, samples=1,
                                           temperature=0.0, seed=0, path_floor=PATH_FLOOR)]
    value, slack = [0.0] * len(prompts), [0.0] * len(prompts)
    for p, path in enumerate(paths):
        log_prefix = 0.0
        for j, (chosen, first) in enumerate(zip(path["chosen"], path["first"], strict=True)):
            greedy_next = path["tokens"][j] if j < len(path["tokens"]) else None  # None: the greedy path drew EOS
            for v in variants[p]:
                if v[0] == greedy_next or j + len(v) > n_new:
                    continue
                weight = math.exp(log_prefix + first[v[0]])
                if len(v) == 1:
                    value[p] += weight
                elif (j, v) in path["rest"]:
                    value[p] += weight * math.exp(path["rest"][(j, v)])
                else:
                    slack[p] += weight
            log_prefix += chosen
        if path["match"] is not None:
            value[p] += math.exp(log_prefix)  # the steps recorded are exactly the path's first k tokens
        slack[p] += path["halted"] or 0.0
    return value, slack, paths


def rao_blackwell(model, tokenizer, prompts: list[str], variants: list[list[tuple[int, ...]]],
                  answers: list[list[str]], conf: dict, *, samples: int, seed: int) -> tuple[list[list[float]], list]:
    """Per prompt, `samples` unbiased estimates of P(a temperature-T sample of <= N tokens contains a gold
    answer), one from each sample x (drawn as the sampler draws, stopped at its first match tau); also the paths.

        Y(x) = sum_{j < tau} sum_{v included at j} P_T(x_j+1.. = v | x_<=j)  +  [tau exists and the match at tau
               is not an included variant v ending at tau, i.e. x_tau-|v|+1..tau = v with v included at tau-|v|]

    (tau = infinity when x never matches; j runs over every position x reached, the one at which it drew
    EOS included; v included at j: j + |v| <= N, and |v| = 1 or P_T(v_1 | x_<=j) > REST_FLOOR, where v's
    further tokens are teacher-forced by a fork of the path.)
    Unbiased: let G be "some included variant v begins at a position j and its last token is the sample's
    first match" (tau = j + |v|). G's pieces for different (j, v) are disjoint, and the piece (j, v) is
    {tau > j} and {v begins at j}; {tau > j} and whether v is included at j are decided by x_<=j, so
    P(piece) = E[1(tau > j) 1(v included at j) P_T(v at j | x_<=j)]; summed over (j, v), the expectation of the
    first part of Y is P(G). The second part is the indicator of {contains} minus G, so E[Y] = P(contains).
    Two edge cases are assumed away: an answer whose token sequence overlaps itself (its suffix is its
    prefix), and a text that contains the answer before the variant's last token (a character run ending
    the previous text completes it); both would make Y count a little too much. The threshold costs no bias
    (it only moves mass between the two parts), only variance. Y is not capped at 1 (its mean is <= 1).
    Rao-Blackwellised: each step's "does the answer begin here" indicator is replaced by its conditional
    probability given the prefix, so a fact below the sampler's resolution still gets a graded score.
    With probe.rb_max_new_tokens = H < N, a sample is decoded only H tokens and j runs below min(tau, H):
    Y then estimates, unbiased, P(the first match begins before position H), a lower bound of P(contains).
    """
    n_new = int(conf["max_new_tokens"])
    paths = trace_paths(model, tokenizer, prompts, variants, answers, conf, samples=samples,
                        temperature=float(conf["temperature"]), seed=seed, horizon=conf.get("rb_max_new_tokens"))
    value = [[0.0] * samples for _ in prompts]
    for p, rows in enumerate(paths):
        for s, path in enumerate(rows):
            explained = False
            for j, first in enumerate(path["first"]):
                for v in variants[p]:
                    if j + len(v) > n_new or (len(v) > 1 and (j, v) not in path["rest"]):
                        continue
                    value[p][s] += math.exp(first[v[0]] + (path["rest"][(j, v)] if len(v) > 1 else 0.0))
                    if path["match"] == j + len(v) and tuple(path["tokens"][j:j + len(v)]) == v:
                        explained = True
            if path["match"] is not None and not explained:
                value[p][s] += 1.0
    return value, paths


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
    elif method in ("greedy_containment", "rao_blackwell"):
        answers = [facts[p // per_fact]["answers"] for p in range(len(prompts))]
        per_fact_variants = [answer_variants(tokenizer, fact["answers"]) for fact in facts]
        variants = [per_fact_variants[p // per_fact] for p in range(len(prompts))]
        if method == "greedy_containment":
            value, slack, paths = greedy_containment(model, tokenizer, prompts, variants, answers, conf)
            paths = [[path] for path in paths]
        else:
            samples = int(conf.get("rb_samples", 2))
            estimates, paths = rao_blackwell(model, tokenizer, prompts, variants, answers, conf, samples=samples,
                                             seed=seed ^ RB_STREAM)
            value = [sum(row) / samples for row in estimates]
        for f in range(len(facts)):
            mine = slice(f * per_fact, (f + 1) * per_fact)
            probs = [round(v, 6) for v in value[mine]]
            row = {"template_prob": probs, "score": sum(probs) / len(probs)}
            if method == "greedy_containment":
                row["slack"] = round(sum(slack[mine]) / per_fact, 6)
            else:
                row["sample_prob"] = [[round(v, 6) for v in row_] for row_ in estimates[mine]]
            if conf.get("save_completions"):
                row["completions"] = [[tokenizer.decode(path["tokens"], skip_special_tokens=True) for path in rows_]
                                      for rows_ in paths[mine]]
            rows.append(row)
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
                  desc: str = "probe", state=None) -> tuple[list[dict], int]:
    """Score facts shard by shard; finished shards on disk are reused, so a killed run resumes.

    Under `accelerate launch` (P processes; state: memqa.distributed.process_state()) shard i of shard_plan is
    scored by process i % P on its own device and written into shard_dir (atomically); after a barrier every
    process reads every shard in plan order. A shard's scores depend on its facts and seed only, so the rows are
    the one-process rows, on every process (the caller's main process alone writes outputs from them), and a run
    resumes whatever the number of processes that wrote the shards before.

    Returns the rows and how many shards were reused rather than computed.
    """
    from memqa.distributed import my_share, process_state

    state = state or process_state()
    method = method or conf["method"]
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(facts, int(conf["chunk_size"]))
    # the shards already whole on disk, verified and read once: their rows are reused below
    reused = {name: whole for name, rows in plan
              if (whole := _whole_shard(shard_dir / f"{name}.jsonl", rows)) is not None}
    state.wait_for_everyone()  # all have looked before any writes, so all count the same shards as reused
    mine = [plan[i] for i in my_share(len(plan), state)]
    total = sum(len(rows) for _, rows in mine)
    done = sum(len(rows) for name, rows in mine if name in reused)
    if state.num_processes > 1:
        desc = f"{desc} (process 0 of {state.num_processes}: its shards)"
    with tqdm(total=total, initial=done, desc=desc, unit="fact", dynamic_ncols=True,
              disable=not state.is_main_process) as bar:
        for name, rows in mine:
            if name not in reused:
                scored = score_facts(model, tokenizer, rows, conf, method, _shard_seed(int(conf["seed"]), name))
                write_jsonl(shard_dir / f"{name}.jsonl", scored)
                bar.update(len(rows))
                bar.set_postfix_str(name)
    state.wait_for_everyone()  # every shard of the plan is on disk
    results: list[dict] = []
    for name, rows in plan:
        scored = reused[name] if name in reused else _whole_shard(shard_dir / f"{name}.jsonl", rows)
        if scored is None:  # written by this run, so a process or the disk failed after the barrier
            raise MemqaError(f"probe shard {shard_dir / name}.jsonl is incomplete after scoring: check free disk "
                             "space, then rerun (finished shards are kept)")
        results.extend(scored)
    return results, len(reused)


def _whole_shard(path: Path, facts: list[dict]) -> list[dict] | None:
    """The shard's rows if the file is whole (its end marker checks out) and scores exactly these facts, in order;
    None when it is missing, cut short or stale, so that it is scored again."""
    if not path.is_file():
        return None
    try:
        rows = read_jsonl(path)
    except MemqaError as err:
        tqdm.write(f"rescoring {path.name}: {err.message}")
        return None
    if [r.get("fact_id") for r in rows] != [f["fact_id"] for f in facts]:
        tqdm.write(f"rescoring {path.name}: it scores other facts than its shard holds")
        return None
    return rows


def crosscheck(model, tokenizer, facts: list[dict], main_rows: list[dict], conf: dict, shard_dir: Path) -> dict:
    """Run the other method on an evenly spaced subset (sample for every cheap method, likelihood for sample):
    Spearman of the scores, Cohen's kappa of the levels."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    n = int(conf["crosscheck_facts"])
    step = max(1, len(facts) // n)
    subset = facts[::step][:n]
    other = "likelihood" if conf["method"] == "sample" else "sample"
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
    """Score and level every train (in-domain) and test fact with the base model; (rows, metrics).

    Data parallel under `accelerate launch` (probe_sharded): every process returns the whole, one-process
    result; only the main process should write it."""
    from memqa.distributed import process_state
    from memqa.models import load_model

    if conf["method"] not in METHODS:
        raise MemqaError(f"unknown probe.method '{conf['method']}': use one of {', '.join(METHODS)}")
    facts = [f for f in facts if probe_group(f)]
    if not facts:
        raise MemqaError(f"{facts_path} holds no train or test facts: check download.per_relation")
    started = time.time()
    state = process_state()  # under `accelerate launch`: this process's share of the shards, on its own device
    model, tokenizer = load_model(model_dir, conf.get("dtype", "bfloat16"), on=state.device)
    shard_dir = cache_root / model_name / fingerprint(conf, model_dir, facts_path, templates_path)
    rows, reused = probe_sharded(model, tokenizer, facts, conf, shard_dir / conf["method"], desc=f"probe {model_name}")
    add_levels(rows, conf)
    metrics = {
        "method": conf["method"],
        "facts": len(rows),
        "shards": len(shard_plan(facts, int(conf["chunk_size"]))),
        "shards_reused": reused,
        "processes": state.num_processes,
        "level_counts": level_counts(rows, conf["level_bounds"]),
        "mean_score": {g: round(sum(r["score"] for r in rows if r["group"] == g) /
                                max(1, sum(r["group"] == g for r in rows)), 4) for g in GROUPS},
        "relations_probed": dict(sorted(Counter(r["relation"] for r in rows).items())),
    }
    if int(conf.get("crosscheck_facts") or 0) > 0:
        metrics["crosscheck"] = crosscheck(model, tokenizer, facts, rows, conf, shard_dir)
    metrics["wall_s"] = round(time.time() - started, 3)  # the stage's time, shards reused or not
    return rows, metrics
