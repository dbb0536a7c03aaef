"""File IO every stage shares: atomic writes (no half-written output after a kill), JSONL that proves it is
whole, streamed sha256.

A JSONL file memqa writes ends with one end marker, `{"_memqa_end": {"rows": N, "sha256": ...}}`, the digest
of every byte before it. `read_jsonl` checks it and drops it, so a file cut short (at a line boundary too: a
crash between writes, a full disk, a copy that stopped) is an error naming the file and the fix, never a
smaller table read as complete. Outside memqa: `pandas.read_json(path, lines=True).iloc[:-1]`.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memqa.errors import MemqaError

END_KEY = "_memqa_end"
REMAKE = "run the stage that makes it again (dvc repro)"


def _unwritable(path: Path, err: OSError) -> MemqaError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    fix = "free some disk space" if err.errno == errno.ENOSPC else f"make {path.parent} writable"
    return MemqaError(f"cannot write {path} ({reason.lower()}): {fix}, then rerun")


def _stage_text(path: Path, text: str) -> str:
    """The text in a temp file beside path, flushed to disk; its name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _unwritable(path, err) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # a power cut after the rename must not leave an empty or short file
    except BaseException as err:  # KeyboardInterrupt included: leave no .tmp litter behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _unwritable(path, err) from None
        raise
    return tmp


def write_all(files: Mapping[str | Path, str]) -> None:
    """Write every file or none: all are staged beside their targets first (an unwritable folder or a full disk
    fails here, before any target changes), then renamed into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            staged.append((_stage_text(Path(path), text), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:  # an interruption (KeyboardInterrupt too) leaves no .tmp litter behind
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file and rename, so an interrupted stage never leaves a half-written file."""
    write_all({path: text})


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def jsonl_text(rows: list[dict]) -> str:
    """Rows, one JSON object a line, then the end marker that proves the file whole."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return body + json.dumps({END_KEY: {"rows": len(rows), "sha256": digest}}) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, jsonl_text(rows))


def csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: list[dict], fields: list[str]) -> None:
    atomic_write_text(path, csv_text(rows, fields))


class IncompleteFile(MemqaError):
    """A JSONL file without a valid end marker: cut short, or not written by memqa."""


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise MemqaError(f"{path} not found: run the stage that makes it first (dvc repro)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MemqaError(f"{path} is not UTF-8 text (byte {err.start}): {REMAKE}") from None


def _check_end(path: Path, body: str, end: Any, rows: int, fix: str) -> None:
    marker = end.get(END_KEY) if isinstance(end, dict) and len(end) == 1 else None
    if not isinstance(marker, dict):
        raise IncompleteFile(f"{path} has no end marker after its {rows:,} rows (cut short?): {fix}")
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    if marker.get("rows") != rows or marker.get("sha256") != digest:
        raise IncompleteFile(f"{path} does not match its end marker ({rows:,} rows read, "
                             f"{marker.get('rows')} written; altered after writing?): {fix}")


def read_jsonl(path: str | Path, fix: str = REMAKE) -> list[dict]:
    """The rows of a JSONL file memqa wrote, checked against its end marker; one line naming the file, the line
    and the fix (`fix`) when it is cut short, altered or not JSON."""
    path = Path(path)
    text = _read_text(path)
    lines = text.splitlines(keepends=True)
    parsed: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise IncompleteFile(f"{path} line {number} is not valid JSON ({err.msg}; cut short?): {fix}") from None
    if not parsed:
        raise IncompleteFile(f"{path} is empty (no end marker): {fix}")
    last_line, end = parsed[-1]
    _check_end(path, "".join(lines[:last_line - 1]), end, len(parsed) - 1, fix)
    bad = next((number for number, row in parsed[:-1] if not isinstance(row, dict)), None)
    if bad is not None:
        raise MemqaError(f"{path} line {bad} is not a JSON object: {fix}")
    return [row for _, row in parsed[:-1]]


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MemqaError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}): {REMAKE}") from None


def read_yaml(path: str | Path, fix: str) -> dict:
    """A YAML file's mapping ({} when empty; plain YAML only: a `!tag` is refused); one line naming the file and
    `fix` when it is missing, not YAML, or not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MemqaError(f"{path} not found: {fix}")
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())[:160]
        raise MemqaError(f"{path} is not plain YAML ({first}): {fix}") from None
    if data is not None and not isinstance(data, dict):
        raise MemqaError(f"{path} must be a mapping (key: value lines), not a {type(data).__name__}: {fix}")
    return data or {}


def sha256_of(path: Path) -> str:
    """Streamed, so a multi-GB model file is hashed without loading it."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
