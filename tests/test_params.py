import copy

import pytest
import yaml
from click.testing import CliRunner

from memqa.cli import main
from memqa.config import load_params, validate
from memqa.errors import MemqaError

REPO_PARAMS = yaml.safe_load(open("params.yaml"))


def _with(path: tuple, value) -> dict:
    params = copy.deepcopy(REPO_PARAMS)
    node = params
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return params


def test_params_typo_names_the_intended_key(tmp_path):
    path = tmp_path / "params.yaml"
    params = _with(("probe", "temprature"), 0.7)
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(MemqaError, match="unknown key 'probe.temprature'.*did you mean 'temperature'"):
        load_params(path)


def test_unknown_model_key_is_rejected():
    with pytest.raises(MemqaError, match="models.gemma3-270m.sorce.*'source'"):
        validate(_with(("models", "gemma3-270m", "sorce"), "x"))


@pytest.mark.parametrize(("path", "value", "message"), [
    (("split", "sizes"), "60", "'split.sizes' = '60' is invalid"),
    (("split", "levels"), ["2"], "'split.levels.0' = '2' is invalid"),
    (("download", "per_relation", "train"), "100", "'download.per_relation.train' = '100' is invalid"),
    (("probe", "templates"), 0, "'probe.templates' = 0 is invalid"),
    (("probe", "templates"), 22, "'probe.templates' = 22 is invalid .the templates file has 21"),
    (("probe", "level_bounds"), [0.5, 0.25], "'probe.level_bounds' .* strictly increasing"),
    (("split", "levels"), [0, 5], "split.levels holds 5, but probe.level_bounds gives levels 0..4"),
    (("sft", "method"), "qlra", "'sft.method' = 'qlra' is invalid .Input should be 'qlora', 'lora' or 'full'"),
    (("evaluate", "matcher"), "exact", "'evaluate.matcher' = 'exact' is invalid"),
    (("probe", "matcher"), "exact", "'probe.matcher' = 'exact' is invalid"),
    (("probe", "method"), KeyError, "lacks 'probe.method': add it"),
])
def test_bad_params_are_one_line_naming_the_key(path, value, message):
    with pytest.raises(MemqaError, match=message) as caught:
        validate(_with(path, value))
    assert "\n" not in caught.value.message


def test_float_written_without_a_dot_is_read_as_a_number():
    assert validate(_with(("sft", "lr_full"), "1e-5")).sft.lr_full == 1e-5


def test_bad_params_stop_a_stage_before_it_writes_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with(("split", "sizes"), "60")))
    result = CliRunner().invoke(main, ["download"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: params.yaml: 'split.sizes' = '60' is invalid (Input should be a valid list): fix it"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(MemqaError, match="run from the repository root"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_are_valid():
    for path in ("params.yaml", "ci/tiny/params.yaml"):
        assert load_params(path).models
