import pytest

from memqa.config import load_params
from memqa.errors import MemqaError


def test_params_typo_names_the_intended_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("probe:\n  temprature: 0.7\n")
    with pytest.raises(MemqaError, match="unknown key 'probe.temprature'.*did you mean 'temperature'"):
        load_params(path)


def test_unknown_model_key_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  m: {sorce: x}\n")
    with pytest.raises(MemqaError, match="models.m.sorce.*'source'"):
        load_params(path)


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(MemqaError, match="run from the repository root"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_are_valid():
    params = load_params("params.yaml")
    assert "download" in params and params["models"]
