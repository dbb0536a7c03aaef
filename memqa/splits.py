"""Level-divided training sets (level x size x seed, balanced over relations) and level-labelled test sets."""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from memqa.artifacts import gold_in_subject, leaks, share
from memqa.eq import relation_ids
from memqa.errors import MemqaError
from memqa.memory import GROUPS
from memqa.paths import cell_name, size_label

if TYPE_CHECKING:
    from memqa.config import Split


def balanced_sample(pool: list[dict], n: int | None, seed: int) -> list[dict]:
    """n facts spread evenly over relations (n/R each); where a relation runs short the others fill in.

    n None takes the whole pool. Deterministic for a seed; order shuffled so SFT batches mix relations.
    """
    rng = random.Random(seed)
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for fact in pool:
        by_relation[fact["relation"]].append(fact)
    for rows in by_relation.values():
        rng.shuffle(rows)
    chosen: list[dict] = []
    target = len(pool) if n is None else min(n, len(pool))
    relations = sorted(by_relation, key=lambda r: (relation_ids().index(r) if r in relation_ids() else 99, r))
    depth = 0
    while len(chosen) < target:  # round-robin: one fact per relation per round
        for relation in relations:
            if depth < len(by_relation[relation]) and len(chosen) < target:
                chosen.append(by_relation[relation][depth])
        depth += 1
    rng.shuffle(chosen)
    return chosen


def _drop_test_questions(conf: Split, groups: dict[str, list[dict]]) -> list[dict]:
    """The train facts whose question is also a test question (dropped from the pool with drop_test_overlap)."""
    # EntityQuestions repeats some test questions word for word in train (P36 capitals most): training on
    # them would be training on the test.
    test_questions = {r["question"] for g in GROUPS if g != "train" for r in groups[g]}
    overlap = [r for r in groups["train"] if r["question"] in test_questions]
    if conf.drop_test_overlap:
        groups["train"] = [r for r in groups["train"] if r["question"] not in test_questions]
    return overlap


def _ordered(relations) -> list[str]:
    return sorted(relations, key=lambda r: (relation_ids().index(r) if r in relation_ids() else 99, r))


def relation_quota(pools: list[Counter], n: int | None) -> dict[str, int]:
    """Facts per relation for a training set of n: as even over relations as the caps allow (round-robin in the
    relation order), each relation capped by the scarcest of the pools in it; n None takes every cap."""
    caps = {r: min(p.get(r, 0) for p in pools) for r in _ordered(set().union(*pools))}
    if n is None:
        return caps
    quota, left = dict.fromkeys(caps, 0), n
    while left > 0 and any(quota[r] < caps[r] for r in caps):
        for r in caps:
            if left and quota[r] < caps[r]:
                quota[r], left = quota[r] + 1, left - 1
    return quota


def seed_draw(pool: list[dict], quota: dict[str, int], block: int, shuffle_seed: int, seed: int) -> list[dict]:
    """The training set of the block-th seed: per relation, the block-th run of quota[r] facts of the relation's
    pool in one fixed shuffled order (wrapping round), so seeds share facts only where the pool is too small."""
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for fact in pool:
        by_relation[fact["relation"]].append(fact)
    chosen = []
    for relation, k in quota.items():
        rows = by_relation[relation]
        random.Random(f"{shuffle_seed}-{relation}").shuffle(rows)
        chosen += [rows[(block * k + j) % len(rows)] for j in range(k)] if rows else []
    random.Random(seed).shuffle(chosen)  # SFT batches mix relations
    return chosen


def _overlaps(train_sets: dict[str, list[dict]], cells: list[dict]) -> None:
    """Each cell's largest count of facts shared with another seed's set of the same level and size."""
    ids = {c["name"]: {r["fact_id"] for r in train_sets[c["name"]]} for c in cells}
    for c in cells:
        peers = [o for o in cells if (o["level"], o["size"]) == (c["level"], c["size"]) and o is not c]
        c["shared_with_other_seeds"] = max((len(ids[c["name"]] & ids[o["name"]]) for o in peers), default=0)
    for c in cells:
        del c["name"]


def _training_sets(conf: Split, train: list[dict]) -> tuple[dict[str, list[dict]], list[dict]]:
    """(training set by cell name, what each cell got) for every level x size x seed of conf. With relation_mix
    matched, every level's sets of one size follow one relation mix: the scarcest level's (relation_quota)."""
    pools = {lv: [r for r in train if r["level"] == lv] for lv in conf.levels}
    counts = {lv: Counter(r["relation"] for r in pool) for lv, pool in pools.items()}
    train_sets, cells = {}, []
    for level in conf.levels:
        pool = pools[level]
        # an empty level trains nothing (its cells are skipped), so it does not set the mix of the others
        compared = ([c for c in counts.values() if c] or [counts[level]]) if conf.relation_mix == "matched" \
            else [counts[level]]
        for size in conf.sizes:
            wanted = None if size_label(size) == "all" else int(size)
            quota = relation_quota(compared, wanted)
            short = wanted is not None and sum(quota.values()) < wanted
            for block, seed in enumerate(conf.seeds):
                skipped = (short and conf.short_pool == "skip") or not pool or not sum(quota.values())
                chosen = [] if skipped else seed_draw(pool, quota, block, conf.seeds[0], seed)
                name = cell_name(level, size, seed)
                train_sets[name] = chosen
                cells.append({"name": name, "level": level, "size": size_label(size), "seed": seed,
                              "pool": len(pool), "requested": wanted if wanted is not None else len(pool),
                              "actual": len(chosen), "shortfall": max(0, (wanted or 0) - len(chosen)),
                              "skipped": skipped, "per_relation": dict(Counter(r["relation"] for r in chosen))})
    _overlaps(train_sets, cells)
    return train_sets, cells


def _artifacts(rows: list[dict], groups: dict[str, list[dict]], n_levels: int) -> dict:
    """Per probe group, the share of facts with a gold answer inside the subject and the level counts without
    them (a sensitivity row: an echo of the subject scores in the probe); per test domain, the test facts whose
    subject and answer a train fact of another relation shares (memqa.artifacts)."""
    train = [r for r in rows if r["group"] == "train"]
    return {"gold_in_subject": {g: share([gold_in_subject(r) for r in rs]) for g, rs in groups.items()},
            "level_counts_without_gold_in_subject": {
                g: {f"L{lv}": sum(r["level"] == lv and not gold_in_subject(r) for r in rs) for lv in range(n_levels)}
                for g, rs in groups.items()},
            "cross_relation_leaks": {g.removeprefix("test_"): len(leaks(groups[g], train))
                                     for g in GROUPS if g != "train"}}


def build_splits(conf: Split, facts: list[dict], scores: list[dict], n_levels: int,
                 scores_path: str = "scores") -> tuple[dict[str, list[dict]], dict[str, list[dict]], dict]:
    """(training sets by cell name, test sets by group, metrics) from the facts and this model's probe scores."""
    by_id = {f["fact_id"]: f for f in facts}
    missing = [s["fact_id"] for s in scores if s["fact_id"] not in by_id]
    if missing:
        raise MemqaError(f"{scores_path} scores facts absent from the facts table (e.g. {missing[0]}): rerun probe")
    rows = [{**by_id[s["fact_id"]], "group": s["group"], "score": s["score"], "level": s["level"]} for s in scores]
    groups = {g: [r for r in rows if r["group"] == g] for g in GROUPS}
    overlap = _drop_test_questions(conf, groups)
    train_sets, cells = _training_sets(conf, groups["train"])
    relations = sorted({r["relation"] for r in rows}, key=lambda r: (len(r), r))
    metrics = {
        "level_counts": {g: [sum(r["level"] == lv for r in rs) for lv in range(n_levels)]
                         for g, rs in groups.items()},
        "mean_score_by_relation": {
            rel: round(sum(r["score"] for r in rows if r["relation"] == rel) /
                       sum(r["relation"] == rel for r in rows), 4) for rel in relations},
        "train_test_overlap": {"dropped": conf.drop_test_overlap, "facts": len(overlap),
                               "per_relation": dict(sorted(Counter(r["relation"] for r in overlap).items()))},
        "matching_artifacts": _artifacts(rows, groups, n_levels),
        "relation_mix": conf.relation_mix,
        "cells_short": sum(c["shortfall"] > 0 for c in cells),
        "max_shared_between_seeds": max((c["shared_with_other_seeds"] for c in cells), default=0),
        "cells_skipped": sum(c["skipped"] for c in cells),
        "cells": cells,
    }
    tests = {g.removeprefix("test_"): groups[g] for g in GROUPS if g != "train"}
    return train_sets, tests, metrics
