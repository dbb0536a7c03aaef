"""A benchmark's chunk cache as one tar.gz that can be committed, so a long run resumes on another machine.

Sessions here start on fresh machines, where data/cache/ is empty: a crosscheck that needs more CPU hours than one
session has would start over each time. `save` packs a cache folder; `restore` unpacks it, adding only the files
that are missing (a chunk already on disk wins), and refuses members that would land outside the folder.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

from memqa.errors import MemqaError


def save(folder: Path, archive: Path) -> int:
    """Pack every file under folder into archive (written whole or not at all); the number of files packed."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".tmp")
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(folder)))
    os.replace(partial, archive)
    return len(files)


def restore(archive: Path, folder: Path) -> int:
    """Unpack archive's files into folder where they are missing; the number of files added."""
    if not archive.is_file():
        raise MemqaError(f"no cache archive at {archive}: name the .tar.gz a --save-cache run wrote")
    added = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (folder / member.name).resolve()
            if not member.isfile() or not target.is_relative_to(folder.resolve()):
                raise MemqaError(f"{archive}: {member.name!r} is not a file inside the cache: remake the archive")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            added += 1
    return added
