"""EntityQuestions: fetching, integrity check, subject recovery, and the normalised facts table."""
from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import time
import urllib.request
import zipfile
from collections import Counter
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from memqa.errors import MemqaError
from memqa.io import sha256_of
from memqa.paths import EQ_MANIFEST, RELATIONS_FILE

if TYPE_CHECKING:
    from memqa.config import Download

SPLITS = ("train", "dev", "test")
SOURCE_ENV = "MEMQA_EQ_SOURCE"


@cache
def relations() -> dict[str, dict]:
    """Relation id -> {label, question, domain}, from memqa/resources/relations.yaml."""
    return yaml.safe_load(RELATIONS_FILE.read_text())


def relation_ids(domain: str | None = None) -> list[str]:
    return [rid for rid, rel in relations().items() if domain is None or rel["domain"] == domain]


def check_relation(relation: str) -> dict:
    if relation not in relations():
        raise MemqaError(f"unknown relation '{relation}': use one of {', '.join(relations())}")
    return relations()[relation]


@cache
def question_pattern(relation: str) -> re.Pattern:
    """The relation's question template as a regex whose one group is the subject."""
    head, tail = check_relation(relation)["question"].split("[X]")
    return re.compile(f"^{re.escape(head)}(?P<subject>.+?){re.escape(tail)}$", re.DOTALL)


def extract_subject(question: str, relation: str) -> str:
    """Invert the EntityQuestions template: 'Where was Sonny King born?' -> 'Sonny King'."""
    match = question_pattern(relation).match(question)
    if not match:
        template = relations()[relation]["question"]
        raise MemqaError(f"{relation} question {question!r} does not match its template {template!r}: "
                         "the data is not EntityQuestions as released; re-download it")
    return match.group("subject")


@cache
def expected_sha256() -> dict[str, str]:
    """'train/P17.train.json' -> sha256 of the released file (computed from the 2021-09-16 release)."""
    return json.loads(EQ_MANIFEST.read_text())


def _locate_files(root: Path) -> dict[str, Path]:
    """Find '<split>/P*.<split>.json' anywhere under root (the official zip nests them in dataset/)."""
    found = {}
    for name in expected_sha256():
        split, filename = name.split("/")
        hits = sorted(root.rglob(filename))
        hits = [h for h in hits if h.parent.name == split] or hits
        if hits:
            found[name] = hits[0]
    return found


def fetch(source: str, dest: Path) -> None:
    """Copy or extract EntityQuestions from a URL, a zip file or a directory into dest/<split>/, verified.

    Every file is checked against memqa/resources/eq_sha256.json before anything lands in dest, so a bad source
    leaves no partial output.
    """
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if re.match(r"^https?://", source):
            archive = tmp / "dataset.zip"
            try:
                urllib.request.urlretrieve(source, archive)
            except OSError as err:
                raise MemqaError(f"cannot download {source} ({err}): set {SOURCE_ENV} to a local copy "
                                 "(directory or dataset.zip)") from err
            root = _extract(archive, tmp / "x")
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                root = path
            elif path.is_file() and zipfile.is_zipfile(path):
                root = _extract(path, tmp / "x")
            else:
                raise MemqaError(f"EntityQuestions source {source!r} is neither a URL, a zip file nor a "
                                 f"directory: fix download.source or {SOURCE_ENV}")
        files = _locate_files(root)
        missing = sorted(set(expected_sha256()) - set(files))
        if missing:
            raise MemqaError(f"{len(missing)} EntityQuestions files missing under {source} (first: "
                             f"{missing[0]}): point {SOURCE_ENV} at the unpacked dataset/ folder or the zip")
        staging = tmp / "staging"
        for name, path in files.items():
            digest = sha256_of(path)
            if digest != expected_sha256()[name]:
                raise MemqaError(f"checksum mismatch for {name} from {path} (sha256 {digest[:12]}..., "
                                 f"expected {expected_sha256()[name][:12]}...): the copy is corrupt or "
                                 "modified; download the official zip again")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)


def _extract(archive: Path, out: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(out)
    except zipfile.BadZipFile as err:
        raise MemqaError(f"{archive} is not a valid zip ({err}): download it again") from err
    return out


def read_split_file(path: Path) -> list[dict]:
    """One EntityQuestions file: a JSON list of {question, answers}; malformed content is a clear error."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MemqaError(f"{path} is not valid JSON ({err}): re-download EntityQuestions") from err
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("question"), str) and isinstance(i.get("answers"), list)
        and i["answers"] for i in items
    ):
        raise MemqaError(f"{path} is not a list of {{question, answers}} items: re-download EntityQuestions")
    return items


def subsample_indices(n_items: int, keep: int | None, seed: int, relation: str, split: str) -> list[int]:
    """A deterministic, order-preserving subsample; the same (seed, relation, split) always keeps the same."""
    if keep is None or keep >= n_items:
        return list(range(n_items))
    rng = random.Random(f"{seed}/{relation}/{split}")
    return sorted(rng.sample(range(n_items), keep))


def paper_pool_indices(root: Path, splits: list[str]) -> tuple[dict[tuple[str, str], list[int]], dict]:
    """(relation, split) -> indices kept by the paper's pool rule, and what the rule dropped per split/domain.

    EntityQuestions lists several *different* correct entities for some questions (Desna River: Ukraine,
    Russia) and repeats question texts within and across relations. The paper keeps single-answer facts,
    then one fact per question text within each pool (split x domain), which gives exactly the published
    75,944 in-domain train, 9,555 in-domain test and 11,613 out-of-domain test facts.
    """
    kept: dict[tuple[str, str], list[int]] = {}
    dropped: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], set[str]] = {}
    for relation, rel in relations().items():
        for split in splits:
            pool = (split, rel["domain"])
            stats = dropped.setdefault(f"{split}/{rel['domain']}", {"several_answers": 0, "repeated_question": 0})
            questions = seen.setdefault(pool, set())
            kept[(relation, split)] = []
            for index, item in enumerate(read_split_file(root / split / f"{relation}.{split}.json")):
                if len(item["answers"]) != 1:
                    stats["several_answers"] += 1
                elif item["question"] in questions:
                    stats["repeated_question"] += 1
                else:
                    questions.add(item["question"])
                    kept[(relation, split)].append(index)
    return kept, dropped


def build_facts(root: Path, conf: Download) -> tuple[list[dict], dict]:
    """The normalised facts table (one row per kept question, in relation/split/file order) and, with
    conf.paper_pools, what the paper's pool rule dropped."""
    per_relation = conf.per_relation.model_dump()
    splits = [s for s in SPLITS if per_relation[s] != 0]
    eligible, dropped = paper_pool_indices(root, splits) if conf.paper_pools else ({}, {})
    rows = []
    for relation, rel in relations().items():
        for split in splits:
            items = read_split_file(root / split / f"{relation}.{split}.json")
            indices = eligible.get((relation, split), list(range(len(items))))
            for pick in subsample_indices(len(indices), per_relation[split], conf.seed, relation, split):
                index = indices[pick]
                item = items[index]
                rows.append({
                    "fact_id": f"{relation}/{split}/{index}",
                    "relation": relation,
                    "relation_label": rel["label"],
                    "split": split,
                    "domain": rel["domain"],
                    "subject": extract_subject(item["question"], relation),
                    "question": item["question"],
                    "answers": item["answers"],
                })
    return rows, dropped


def download(conf: Download, raw_dir: Path, source: str | None = None) -> tuple[list[dict], dict]:
    """Fetch and verify EntityQuestions into raw_dir (from source, else conf.source); return the facts table and
    what was kept."""
    source = source or conf.source
    per_relation = conf.per_relation.model_dump()
    started = time.time()
    fetch(source, raw_dir)
    rows, dropped = build_facts(raw_dir, conf)
    counts = Counter((r["split"], r["domain"]) for r in rows)
    meta = {
        "source": source,
        "files_verified": len(expected_sha256()),
        "paper_pools": conf.paper_pools,
        "dropped_by_pool_rule": dropped,
        "subsample": {"per_relation": per_relation, "seed": conf.seed},
        "facts": len(rows),
        "facts_by_split_domain": {f"{s}/{d}": n for (s, d), n in sorted(counts.items())},
        "wall_s": round(time.time() - started, 2),
    }
    return rows, meta
