"""Every params field reaches the code that uses it.

Each stage runs in process on a tiny project with its validated params wrapped so that every read of a field is
recorded; over the configurations run here (probe rao_blackwell with a sample crosscheck, then sample; SFT full,
then LoRA) every field of the schema must have been read by some stage. A field no stage reads is a knob that
changes nothing, as `download.paper_pools` was (the download stage never passed it on).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from memqa import config
from memqa.cli import main
from memqa.config import Download, ModelSpec, Params
from memqa.eq import build_facts
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
CELL_ARGS = ["--model", "tiny", "--level", "0", "--size", "40", "--seed", "0"]


class Traced:
    """A read-only view of a params model that records the dotted name of every field read through it."""

    def __init__(self, model: BaseModel, where: str, reads: set[str]):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, key: str):
        model, where, reads = self._model, self._where, self._reads
        fields = type(model).model_fields
        if key in fields:
            reads.add(where + key)
            return traced(getattr(model, key), f"{where}{key}.", reads)
        if key == "model":  # Params.model(name): the spec of one model
            return lambda name: Traced(model.model(name), "models.*.", reads)
        if key == "model_dump" and where:  # a section dumped is a section used (eq: per_relation)
            reads.update(where + name for name in fields)
        # the whole params dumped (the report diffs them against the paper's preset) uses no knob
        return getattr(model, key)


def traced(value, where: str, reads: set[str]):
    if isinstance(value, BaseModel):
        return Traced(value, where, reads)
    if where == "models." and isinstance(value, dict):
        return {name: Traced(spec, "models.*.", reads) for name, spec in value.items()}
    return value


def schema_fields(model: type[BaseModel] = Params, where: str = "") -> set[str]:
    """Every field of the params schema, dotted; a model's spec once, as models.*.<field>."""
    names = set()
    for name, field in model.model_fields.items():
        names.add(where + name)
        if name == "models":
            names |= schema_fields(ModelSpec, "models.*.")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= schema_fields(field.annotation, f"{where}{name}.")
    return names


def project_params(eq_dir: Path, model_source: Path) -> dict:
    params = yaml.safe_load((REPO / "ci" / "tiny" / "params.yaml").read_text())
    params["download"] = {"source": str(eq_dir), "per_relation": {"train": 3, "dev": 0, "test": 1}, "seed": 0,
                          "paper_pools": True}
    params["models"] = {"tiny": {"source": str(model_source), "dtype": "float32", "revision": None}}
    params["probe"] |= {"method": "rao_blackwell", "templates": 2, "samples": 2, "max_new_tokens": 4,
                        "crosscheck_facts": 4, "chunk_size": 20}
    params["split"] = {"levels": [0], "sizes": [40], "seeds": [0], "short_pool": "use", "drop_test_overlap": True}
    params["sft"] |= {"epochs": 1, "keep_weights": False}
    params["evaluate"] |= {"max_new_tokens": 4}
    params["report"]["reference"] = str(REPO / params["report"]["reference"])
    return params


def tiny_model(eq_dir: Path, out: Path) -> Path:
    """An untrained tiny Llama whose vocabulary covers the facts: every fact is level 0, one pool to train on."""
    facts = build_facts(eq_dir, Download(source="", per_relation={"train": 3, "dev": 0, "test": 1}))[0]
    tokenizer = tiny.make_tokenizer([s for f in facts for s in tiny.statements(f, 2)] +
                                    [f["question"] + " " + f["answers"][0] for f in facts], 600)
    return tiny.save(tiny.make_model(tokenizer, hidden=32, layers=1), tokenizer, out)


def run_stages(project: Path, params: dict, commands: list[list[str]]) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in commands:
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, (command, result.output, result.exception)


@pytest.mark.usefixtures("eq_dir")
def test_every_params_field_is_read_by_a_stage(eq_dir, tmp_path, monkeypatch):
    reads: set[str] = set()
    validate = config.validate
    monkeypatch.setattr(config, "validate", lambda *a, **k: Traced(validate(*a, **k), "", reads))
    monkeypatch.delenv("MEMQA_EQ_SOURCE", raising=False)  # download.source itself must be read
    monkeypatch.delenv("MEMQA_ACCELERATE", raising=False)
    model_source = tiny_model(eq_dir, tmp_path / "tiny-source")
    project = tmp_path / "project"
    (project / "benchmarks").mkdir(parents=True)
    (project / "benchmarks" / "results").symlink_to(REPO / "benchmarks" / "results")  # the report quotes them
    (project / "presets").symlink_to(REPO / "presets")  # the report diffs the params against the paper's preset
    monkeypatch.chdir(project)
    params = project_params(eq_dir, model_source)
    run_stages(project, params, [["download"], ["materialize", "--model", "tiny"], ["probe", "--model", "tiny"],
                                 ["split", "--model", "tiny"], ["sft", *CELL_ARGS], ["evaluate", *CELL_ARGS],
                                 ["evaluate", "--model", "tiny", "--base"], ["summarize"], ["plot"], ["report"]])
    params["probe"] |= {"method": "sample", "crosscheck_facts": 0, "save_completions": True}
    params["sft"] |= {"method": "lora"}
    run_stages(project, params, [["probe", "--model", "tiny"], ["sft", *CELL_ARGS]])
    assert sorted(schema_fields() - reads) == []


# --- and changes what the stage makes: a field read only to be recorded would pass the test above -------------

def outputs(project: Path, folders: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(project)): p.read_text() for folder in folders for p in (project / folder).rglob("*")
            if p.is_file() and p.suffix == ".jsonl"}


def run_with(project: Path, params: dict, command: list[str], folders: tuple[str, ...]) -> dict[str, str]:
    for folder in folders:
        for path in (project / folder).rglob("*.jsonl"):
            path.unlink()
    run_stages(project, params, [command])
    return outputs(project, folders)


DOWNLOAD_CASES = [  # (field, changed value) from the base {train: 3, dev: 0, test: 1}, seed 0, paper pools
    ("per_relation", {"train": 2, "dev": 0, "test": 1}), ("per_relation", {"train": 3, "dev": 1, "test": 1}),
    ("per_relation", {"train": 3, "dev": 0, "test": 2}), ("seed", 1), ("paper_pools", False)]


@pytest.mark.parametrize(("field", "value"), DOWNLOAD_CASES)
def test_each_download_field_changes_the_facts(eq_dir, tmp_path, monkeypatch, field, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEMQA_EQ_SOURCE", raising=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"] = {"source": str(eq_dir), "per_relation": {"train": 3, "dev": 0, "test": 1}, "seed": 0,
                          "paper_pools": True}
    base = run_with(tmp_path, params, ["download"], ("data",))
    params["download"][field] = value
    assert run_with(tmp_path, params, ["download"], ("data",)) != base


def test_the_download_cases_cover_every_field_but_the_source():
    assert {field for field, _ in DOWNLOAD_CASES} | {"source"} == set(Download.model_fields)


SPLIT_CASES = {  # field: (base split params, changed value)
    "levels": ({"levels": [0]}, [1]),
    "sizes": ({"sizes": [2]}, [3]),
    "seeds": ({"seeds": [0]}, [1]),
    "short_pool": ({"sizes": [50], "short_pool": "use"}, "skip"),
    "drop_test_overlap": ({"drop_test_overlap": True}, False),
    # the dropped overlap fact leaves its relation one fact short at one level: matched caps the other level too
    "relation_mix": ({"sizes": [20], "relation_mix": "matched"}, "balanced"),
}


def split_project(eq_dir: Path, project: Path) -> None:
    """Facts (one train question repeated in test) and probe scores (levels 0 and 1 alternating) for model tiny."""
    from memqa import paths
    from memqa.io import write_jsonl
    from memqa.memory import probe_group

    facts = build_facts(eq_dir, Download(source="", per_relation={"train": 2, "dev": 0, "test": 1}))[0]
    train = next(f for f in facts if probe_group(f) == "train")
    train["question"] = next(f for f in facts if probe_group(f) == "test_id")["question"]
    write_jsonl(project / paths.FACTS, facts)
    probed = [f for f in facts if probe_group(f)]
    write_jsonl(project / paths.scores("tiny"), [{"fact_id": f["fact_id"], "group": probe_group(f), "score": 0.0,
                                                   "level": i % 2} for i, f in enumerate(probed)])


@pytest.mark.parametrize("field", sorted(SPLIT_CASES))
def test_each_split_field_changes_the_training_sets(eq_dir, tmp_path, monkeypatch, field):
    monkeypatch.chdir(tmp_path)
    split_project(eq_dir, tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base_split, value = SPLIT_CASES[field]
    params["split"] = {"levels": [0, 1], "sizes": [4], "seeds": [0], "short_pool": "use", "drop_test_overlap": True,
                       "relation_mix": "matched", **base_split}
    base = run_with(tmp_path, params, ["split", "--model", "tiny"], ("data/splits",))
    params["split"][field] = value
    assert run_with(tmp_path, params, ["split", "--model", "tiny"], ("data/splits",)) != base


def test_the_split_cases_cover_every_field():
    from memqa.config import Split

    assert set(SPLIT_CASES) == set(Split.model_fields)
