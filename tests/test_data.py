import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from memqa import eq as data
from memqa.config import Download
from memqa.errors import MemqaError


def _download(per_relation: dict, paper_pools: bool = True) -> Download:
    return Download(source="unused", per_relation=per_relation, seed=0, paper_pools=paper_pools)


def test_every_real_question_yields_its_subject(eq_dir):
    rows, _ = data.build_facts(eq_dir, _download({"train": None, "dev": None, "test": None}, paper_pools=False))
    assert len(rows) == 220_703
    assert all(row["subject"] and row["subject"] in row["question"] for row in rows)
    domains = {row["relation"]: row["domain"] for row in rows}
    assert sorted(r for r, d in domains.items() if d == "id") == sorted(
        ["P17", "P19", "P20", "P36", "P69", "P131", "P159", "P276", "P495", "P740"])


def test_subject_inversion_handles_possessive_and_shared_templates():
    assert data.extract_subject("Who is Thurgood Marshall's child?", "P40") == "Thurgood Marshall"
    assert data.extract_subject("Where is Paris Hilton located?", "P276") == "Paris Hilton"


def test_question_off_template_is_an_error_not_a_skip():
    with pytest.raises(MemqaError, match="does not match its template"):
        data.extract_subject("Where did Sonny King live?", "P19")


def test_unknown_relation_names_the_valid_ones():
    with pytest.raises(MemqaError, match="unknown relation 'P999'.*P17"):
        data.extract_subject("Where was X born?", "P999")


def _copy_eq(eq_dir: Path, dest: Path) -> Path:
    shutil.copytree(eq_dir, dest, ignore=shutil.ignore_patterns("SOURCE.md"))
    for path in dest.rglob("*.json"):
        path.chmod(0o644)
    return dest


def test_corrupted_file_fails_checksum_and_leaves_no_output(eq_dir, tmp_path):
    source = _copy_eq(eq_dir, tmp_path / "src")
    target = source / "test" / "P36.test.json"
    target.write_bytes(target.read_bytes().replace(b"capital", b"Capital", 1))
    with pytest.raises(MemqaError, match="checksum mismatch for test/P36.test.json"):
        data.fetch(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_file_is_reported(eq_dir, tmp_path):
    source = _copy_eq(eq_dir, tmp_path / "src")
    (source / "dev" / "P800.dev.json").unlink()
    with pytest.raises(MemqaError, match="1 EntityQuestions files missing.*dev/P800.dev.json"):
        data.fetch(str(source), tmp_path / "out")


def test_malformed_json_gives_clear_error(tmp_path):
    bad = tmp_path / "P17.train.json"
    bad.write_text('[{"question": "Which country is X located in?", "answers": ["France"]')
    with pytest.raises(MemqaError, match="P17.train.json is not valid JSON"):
        data.read_split_file(bad)
    bad.write_text('{"question": "q"}')
    with pytest.raises(MemqaError, match="not a list of"):
        data.read_split_file(bad)


def test_download_from_official_zip_layout(eq_dir, tmp_path):
    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in eq_dir.glob("*/P*.json"):
            zipped.write(path, f"dataset/{path.parent.name}/{path.name}")
    rows, meta = data.download(_download({"train": 5, "dev": 0, "test": 2}), tmp_path / "raw", str(archive))
    assert meta["files_verified"] == 72
    assert meta["facts"] == 24 * 7 == len(rows)
    assert {row["split"] for row in rows} == {"train", "test"}


def test_subsample_is_deterministic_and_seed_dependent():
    first = data.subsample_indices(8000, 50, 0, "P17", "train")
    assert first == data.subsample_indices(8000, 50, 0, "P17", "train")
    assert first != data.subsample_indices(8000, 50, 1, "P17", "train")
    assert first == sorted(set(first)) and len(first) == 50


def test_paper_pool_rule_gives_exactly_the_published_pool_sizes(eq_dir):
    rows, dropped = data.build_facts(eq_dir, _download({"train": None, "dev": 0, "test": None}))
    pools = Counter((r["split"], r["domain"]) for r in rows)
    assert pools[("train", "id")] == 75_944
    assert pools[("test", "id")] == 9_555
    assert pools[("test", "ood")] == 11_613
    assert all(len(r["answers"]) == 1 for r in rows)
    assert dropped["test/id"]["several_answers"] + dropped["test/id"]["repeated_question"] == 9_828 - 9_555


def test_download_records_what_the_pool_rule_dropped(eq_dir, tmp_path):
    rows, meta = data.download(_download({"train": 5, "dev": 0, "test": 2}), tmp_path / "raw", str(eq_dir))
    assert meta["paper_pools"] is True and meta["dropped_by_pool_rule"]["train/id"]["several_answers"] > 0
    assert all(len(r["answers"]) == 1 for r in rows)
    _, off = data.download(_download({"train": 5, "dev": 0, "test": 2}, paper_pools=False), tmp_path / "raw",
                           str(eq_dir))
    assert off["dropped_by_pool_rule"] == {}
