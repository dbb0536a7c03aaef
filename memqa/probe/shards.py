"""The probe's shard cache: facts scored shard by shard into a folder keyed by a fingerprint of everything that
decides their scores, so a killed run resumes and a change of params, weights, facts, templates or code rescores."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from tqdm import tqdm

from memqa import vllm_engine
from memqa.config import Probe
from memqa.errors import MemqaError
from memqa.io import read_jsonl, sha256_of, write_jsonl
from memqa.memory import GROUPS, probe_group
from memqa.model_files import weight_files
from memqa.paths import PUBLISHED_TEMPLATES_FILE
from memqa.probe import estimators

_MEMQA = Path(__file__).resolve().parents[1]
# The code that decides a score: loading, prompts, the engine and teacher forcing, the matcher, and this package
# (every file of it). A change to any of them must invalidate finished shards; a change elsewhere (config, levels,
# IO) must not.
SCORING_CODE = (*(_MEMQA / f"{name}.py" for name in ("engine", "matching", "models", "prompts", "teacher_forcing")),
                *sorted((_MEMQA / "probe").glob("*.py")))
# engine vllm's scoring code besides (memqa.vllm_engine); its version enters the key too
VLLM_CODE = _MEMQA / "vllm_engine.py"
# A weight file whose modification time is this close to the moment it is digested may still be being written:
# its digest is not remembered (git's "racily clean" rule), so the next run reads the file again.
_SETTLED_NS = 2_000_000_000


def weights_digest(model_dir: Path, memo: Path | None = None) -> str:
    """The SHA-256 of the weight files themselves (equal to memqa.model_files.weights_sha256), never a digest recorded
    at materialisation: a model retrained in place gets a new one. memo: a JSON file remembering each file's
    digest by (name, size, mtime_ns), so unchanged weights are not read again; it lives in the probe cache, not in
    the model folder (a DVC output, which a file written into it would change)."""
    known = _read_memo(memo, model_dir)
    digest, seen = hashlib.sha256(), {}
    for path in weight_files(model_dir):
        stat = path.stat()
        key = f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}"
        file_digest = known.get(key) or sha256_of(path)
        if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS:
            seen[key] = file_digest
        digest.update(f"{path.name}\0{file_digest}\0".encode())
    if memo is not None and seen != known:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"folder": str(model_dir.resolve()), "files": seen}, indent=1) + "\n")
        tmp.replace(memo)
    return digest.hexdigest()


def _read_memo(memo: Path | None, model_dir: Path) -> dict[str, str]:
    try:
        data = json.loads(memo.read_text()) if memo is not None and memo.is_file() else {}
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and data.get("folder") == str(model_dir.resolve())
    return data["files"] if ok and isinstance(data.get("files"), dict) else {}


def fingerprint(conf: Probe, model_dir: Path, facts_path: Path, templates_path: Path, memo: Path | None = None,
                accepted: list[list[str]] = ()) -> str:
    """Identifies everything that determines a shard's scores: params, weights, facts, templates and code, and the
    answers the matcher accepts per fact (accepted: the gold answers with matching.synonyms applied).

    Shards of another fingerprint are never mixed in. The weights enter through the digest of the weight files
    (weights_digest; memo: where it remembers them), so a model folder retrained in place gets a new key. The
    engine is part of the params; engine vllm adds vLLM's version and memqa/vllm_engine.py.
    """
    relevant = conf.model_dump(exclude={"level_bounds", "crosscheck_facts"})
    for name, other in estimators.ESTIMATORS.items():
        if name != conf.method:  # another method's own params do not change this one's scores
            for key in other.own_params:
                relevant.pop(key, None)
    if conf.temperature == 0 or conf.engine == "vllm":
        relevant.pop("batch_size", None)  # greedy results do not depend on it; vLLM batches as it will
    code = SCORING_CODE
    if conf.engine == "vllm":  # another engine, other results: its version and code decide them too
        relevant["vllm_version"], code = vllm_engine.version(), (*SCORING_CODE, VLLM_CODE)
    else:
        relevant.pop("tensor_parallel_size", None)  # vLLM's (1 with engine hf: vllm_engine.check)
        relevant.pop("data_parallel_size", None)
    digest = hashlib.sha256(json.dumps([relevant, weights_digest(model_dir, memo), list(accepted)],
                                       sort_keys=True).encode())
    for path in (model_dir / "config.json", facts_path, templates_path, PUBLISHED_TEMPLATES_FILE, *code):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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


def shard_seed(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)


def probe_sharded(model, tokenizer, facts: list[dict], conf: Probe, shard_dir: Path, method: str | None = None,
                  desc: str = "probe", state=None) -> tuple[list[dict], int]:
    """Score facts shard by shard; finished shards on disk are reused, so a killed run resumes.

    Under `accelerate launch` (P processes; state: memqa.distributed.process_state()) shard i of shard_plan is
    scored by process i % P on its own device and written into shard_dir (atomically); after a barrier every
    process reads every shard in plan order. A shard's scores depend on its facts and seed only, so the rows are
    the one-process rows, on every process (the caller's main process alone writes outputs from them), and a run
    resumes whatever the number of processes that wrote the shards before.

    Returns the rows and how many shards were reused rather than computed.
    """
    from memqa.distributed import process_state

    state = state or process_state()
    method = method or conf.method
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(facts, conf.chunk_size)
    # the shards already whole on disk, verified and read once: their rows are reused below
    reused = {name: whole for name, rows in plan
              if (whole := whole_shard(shard_dir / f"{name}.jsonl", rows)) is not None}
    state.wait_for_everyone()  # all have looked before any writes, so all count the same shards as reused
    _score_my_shards(model, tokenizer, plan, reused, conf, shard_dir, method, desc, state)
    state.wait_for_everyone()  # every shard of the plan is on disk
    results: list[dict] = []
    for name, rows in plan:
        scored = reused[name] if name in reused else whole_shard(shard_dir / f"{name}.jsonl", rows)
        if scored is None:  # written by this run, so a process or the disk failed after the barrier
            raise MemqaError(f"probe shard {shard_dir / name}.jsonl is incomplete after scoring: check free disk "
                             "space, then rerun (finished shards are kept)")
        results.extend(scored)
    return results, len(reused)


def _score_my_shards(model, tokenizer, plan: list, reused: dict, conf: Probe, shard_dir: Path, method: str,
                     desc: str, state) -> None:
    """Score and write this process's shards of the plan (shard i on process i % P) that are not reused."""
    from memqa.distributed import my_share

    mine = [plan[i] for i in my_share(len(plan), state)]
    total = sum(len(rows) for _, rows in mine)
    done = sum(len(rows) for name, rows in mine if name in reused)
    if state.num_processes > 1:
        desc = f"{desc} (process 0 of {state.num_processes}: its shards)"
    with tqdm(total=total, initial=done, desc=desc, unit="fact", dynamic_ncols=True,
              disable=not state.is_main_process) as bar:
        for name, rows in mine:
            if name not in reused:
                scored = estimators.score_facts(model, tokenizer, rows, conf, method, shard_seed(conf.seed, name))
                write_jsonl(shard_dir / f"{name}.jsonl", scored)
                bar.update(len(rows))
                bar.set_postfix_str(name)


def whole_shard(path: Path, facts: list[dict]) -> list[dict] | None:
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
