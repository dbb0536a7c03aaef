import pytest
from click.testing import CliRunner

from memqa.cli import STAGES, main


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    result = CliRunner().invoke(main, [stage, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output and len(result.output.splitlines()) > 5


def test_missing_input_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(open("params.yaml").read())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["split", "--model", "m"])
    assert result.exit_code == 1
    expected = "Error: data/facts.jsonl not found: run the stage that makes it first (dvc repro)"
    assert result.output.strip().splitlines() == [expected]
