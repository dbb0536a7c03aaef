import pytest
import yaml

from memqa.accuracy import accuracy_metrics
from memqa.evaluation import evaluate_cell
from memqa.io import read_jsonl, write_jsonl
from memqa.prompts import qa_prompt
from memqa.training import fine_tune, qa_example
from tests import tiny

SFT = {"method": "full", "lr": 1e-2, "lr_full": 3e-3, "epochs": 30, "batch_size": 8, "grad_accum": 1,
       "warmup_ratio": 0.0, "weight_decay": 0.0, "max_length": 48, "lora_r": 8, "lora_alpha": 16,
       "lora_dropout": 0.0, "compute_dtype": "float32"}
EVAL = {"max_new_tokens": 6, "batch_size": 8, "matcher": "contains"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model taught 16 facts as statements (QA format never seen), and 8 facts never taught."""
    root = tmp_path_factory.mktemp("sft")
    facts = tiny.synthetic_facts(24)
    taught, never = facts[:16], facts[16:]
    texts = [s for f in taught for s in tiny.statements(f, 21)]
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)] + [qa_prompt(f["question"]) for f in facts]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=128, layers=2)
    tiny.teach(model, tokenizer, texts, steps=500)
    model_dir = tiny.save(model, tokenizer, root / "model")
    splits = root / "splits" / "tiny"
    train_facts = [{**f, "level": 4} for f in taught[:8]]
    write_jsonl(splits / "train-L4-n8-s0.jsonl", train_facts)
    write_jsonl(splits / "test_id.jsonl", [{**f, "level": 4} for f in taught] + [{**f, "level": 0} for f in never])
    write_jsonl(splits / "test_ood.jsonl", [])
    return root, model_dir, taught, never


def test_completion_only_masking_ignores_prompt_tokens(world):
    _, model_dir, taught, _ = world
    from memqa.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    example = qa_example(tokenizer, taught[0]["question"], taught[0]["answers"][0], max_length=64)
    n_prompt = len(tokenizer(qa_prompt(taught[0]["question"]))["input_ids"])
    assert example["labels"][:n_prompt] == [-100] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert example["labels"][-1] == tokenizer.eos_token_id
    answer = tokenizer.decode([t for t in example["labels"] if t != -100], skip_special_tokens=True)
    assert answer.strip() == taught[0]["answers"][0]


def _sft(root, model_dir, conf, sft_root):
    facts = read_jsonl(root / "splits" / "tiny" / "train-L4-n8-s0.jsonl")
    return fine_tune(facts, conf, 0, model_dir, sft_root / "L4-n8-s0", sft_root / "L4-n8-s0.csv")


def _evaluate(root, model_dir, cell, method, sft_root=None):
    facts = [f for d in ("id", "ood") for f in read_jsonl(root / "splits" / "tiny" / f"test_{d}.jsonl")]
    trained = None if cell is None else (sft_root or root / "sft") / cell
    predictions, metrics = evaluate_cell(facts, trained, model_dir, EVAL, {**SFT, "method": method}, 5)
    write_jsonl(root / "eval" / f"{cell or 'base'}-{method}.jsonl", predictions)
    return metrics


def _accuracy(root, cell, method, facts):
    preds = {p["fact_id"]: p for p in read_jsonl(root / "eval" / f"{cell}-{method}.jsonl")}
    return sum(preds[f["fact_id"]]["correct"] for f in facts) / len(facts)


def test_sft_on_qa_pairs_raises_accuracy_on_taught_facts_not_on_untaught(world):
    root, model_dir, taught, never = world
    _evaluate(root, model_dir, None, "full")
    info = _sft(root, model_dir, SFT, root / "sft")
    assert info["steps"] == 30 and info["final_loss"] < 0.5
    _evaluate(root, model_dir, "L4-n8-s0", "full")
    base = _accuracy(root, "base", "full", taught[:8])
    tuned = _accuracy(root, "L4-n8-s0", "full", taught[:8])
    assert tuned >= base + 0.5, (base, tuned)
    assert _accuracy(root, "L4-n8-s0", "full", never) <= 0.125


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_adapter_methods_train_save_and_reload_for_eval(world, method):
    root, model_dir, _, _ = world
    conf = {**SFT, "method": method, "epochs": 1, "compute_dtype": "float32", "lr": 1e-3}
    info = _sft(root, model_dir, conf, root / f"sft-{method}")
    assert info["steps"] == 1 and info["method"] == method and info["trainable_parameters"] > 0
    assert (root / f"sft-{method}" / "L4-n8-s0" / "adapter_model.safetensors").is_file()
    log = (root / f"sft-{method}" / "L4-n8-s0.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr" and len(log) == 2
    metrics = _evaluate(root, model_dir, "L4-n8-s0", method, root / f"sft-{method}")
    assert metrics["id"]["n"] == [8, 0, 0, 0, 16]


def test_evaluate_metrics_are_recomputable_from_saved_predictions(world):
    root, model_dir, _, _ = world
    metrics = _evaluate(root, model_dir, None, "full")
    saved = read_jsonl(root / "eval" / "base-full.jsonl")
    assert {k: v for k, v in metrics.items() if k in ("id", "ood")} == accuracy_metrics(saved, 5)


def test_headline_is_the_unweighted_mean_of_level_accuracies():
    preds = [{"domain": "id", "level": 0, "correct": False}] * 9 + [{"domain": "id", "level": 0, "correct": True}]
    preds += [{"domain": "id", "level": 4, "correct": True}]
    metrics = accuracy_metrics(preds, 5)["id"]
    assert metrics["L0"] == 10.0 and metrics["L4"] == 100.0
    assert metrics["headline"] == 55.0 and metrics["micro"] == round(100 * 2 / 11, 2)
    assert metrics["levels_missing"] == [1, 2, 3]


def test_default_params_name_a_known_sft_method():
    sft = yaml.safe_load(open("params.yaml"))["sft"]
    assert sft["method"] in ("qlora", "lora", "full")
