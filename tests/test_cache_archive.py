"""benchmarks/cache_archive.py: a chunk cache survives a move to a fresh machine, and a restore never overwrites
a chunk already on disk nor writes outside the cache."""
import io
import sys
import tarfile
from pathlib import Path

import pytest

from memqa.errors import MemqaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cache_archive  # noqa: E402


def test_a_saved_cache_restores_its_files_on_an_empty_folder(tmp_path):
    cache = tmp_path / "cache"
    (cache / "run" / "sample").mkdir(parents=True)
    (cache / "run" / "sample" / "0000.json").write_text('{"rows": []}')
    (cache / "setup.json").write_text("{}")
    (cache / "run" / "sample" / "0001.tmp").write_text("half a chunk")
    assert cache_archive.save(cache, tmp_path / "cache.tar.gz") == 2  # the unfinished .tmp is left out
    fresh = tmp_path / "fresh"
    assert cache_archive.restore(tmp_path / "cache.tar.gz", fresh) == 2
    assert (fresh / "run" / "sample" / "0000.json").read_text() == '{"rows": []}'
    assert not (fresh / "run" / "sample" / "0001.tmp").exists()


def test_restore_keeps_a_chunk_already_on_disk(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "0000.json").write_text("archived")
    cache_archive.save(cache, tmp_path / "cache.tar.gz")
    (cache / "0000.json").write_text("newer")
    assert cache_archive.restore(tmp_path / "cache.tar.gz", cache) == 0
    assert (cache / "0000.json").read_text() == "newer"


def test_restore_refuses_a_member_outside_the_cache(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("../outside.json")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"{}"))
    with pytest.raises(MemqaError, match="not a file inside the cache"):
        cache_archive.restore(archive, tmp_path / "cache")
    assert not (tmp_path / "outside.json").exists()
