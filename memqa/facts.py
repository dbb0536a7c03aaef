"""The facts table's row schema (data/facts.jsonl, and the training and test sets split makes from it), checked
before a stage loads a model, so a bad row is one line naming the file, the line and the fix."""
from __future__ import annotations

from pathlib import Path

from memqa.eq import SPLITS, relations
from memqa.errors import MemqaError
from memqa.io import read_jsonl

RERUN_DOWNLOAD = "rerun `dvc repro download`"
TEXT_FIELDS = ("fact_id", "relation", "split", "domain", "subject", "question")


def _row_problem(row: dict) -> str | None:
    """What is wrong with one row, or None."""
    missing = [field for field in (*TEXT_FIELDS, "answers") if field not in row]
    if missing:
        return f"lacks {', '.join(repr(m) for m in missing)}"
    empty = [field for field in TEXT_FIELDS if not isinstance(row[field], str) or not row[field].strip()]
    if empty:
        return f"has no text in {', '.join(repr(e) for e in empty)}"
    answers = row["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        return "'answers' must be a non-empty list of non-empty strings"
    if row["relation"] not in relations():
        return f"unknown relation '{row['relation']}' (memqa/resources/relations.yaml lists {len(relations())})"
    if row["split"] not in SPLITS:
        return f"unknown split '{row['split']}' (one of {', '.join(SPLITS)})"
    if row["domain"] != relations()[row["relation"]]["domain"]:
        return f"domain '{row['domain']}' is not {row['relation']}'s ({relations()[row['relation']]['domain']})"
    if "level" in row and (not isinstance(row["level"], int) or isinstance(row["level"], bool) or row["level"] < 0):
        return f"level {row['level']!r} is not a memory level (0, 1, ...)"
    return None


def read_facts(path: str | Path, fix: str = RERUN_DOWNLOAD, allow_empty: bool = False) -> list[dict]:
    """The rows of a facts file (the facts table, a training or test set), whole and well-formed; else one line
    naming the file (and the bad line) and `fix`."""
    return check_facts(read_jsonl(path, fix), path, fix, allow_empty)


def check_facts(rows: list[dict], path: str | Path, fix: str, allow_empty: bool = False) -> list[dict]:
    """rows, if every one is a well-formed fact; else a MemqaError naming the first bad line and `fix`."""
    if not rows and not allow_empty:
        raise MemqaError(f"{path} holds no facts: {fix}")
    for number, row in enumerate(rows, 1):
        problem = _row_problem(row)
        if problem:
            raise MemqaError(f"{path} line {number} ({row.get('fact_id', 'no fact_id')}): {problem}: {fix}")
    return rows
