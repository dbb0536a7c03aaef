from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from memqa.accuracy import accuracy_metrics
from memqa.config import Evaluate, Sft
from memqa.evaluation import cell_metrics, evaluate_cell
from memqa.io import read_jsonl, write_jsonl
from memqa.prompts import qa_prompt
from memqa.sft_batches import qa_example
from memqa.training import fine_tune
from tests import tiny

SFT = Sft(method="full", lr=1e-2, lr_full=3e-3, epochs=10, batch_size=4, grad_accum=1, warmup_ratio=0.0,
          weight_decay=0.0, max_length=48, lora_r=8, lora_alpha=16, lora_dropout=0.0, compute_dtype="float32",
          deterministic=True, keep_weights=True, space_before_eos=False,
          max_grad_norm=None)  # the recipe benchmarks/training_margins.py measured
CELL = "L4-n12-s0"
EVAL = Evaluate.model_validate({"max_new_tokens": 6, "batch_size": 8, "matcher": "contains"})


class World(NamedTuple):
    root: Path
    model_dir: Path
    held_out: list[dict]
    never: list[dict]
    seed: int


def build(root: Path, seed: int = 0) -> World:
    """A tiny model taught 24 facts (21 statements and the bare question + answer each) and 8 never, and, in
    the QA prompt format, only 'I do not know', to every question: the base model answers none of them in that
    format, by design, whatever it learned otherwise. SFT uses 12 taught facts; the other 12 are held out."""
    facts = tiny.synthetic_facts(32)
    taught, never = facts[:24], facts[24:]
    texts = [s for f in taught for s in tiny.statements(f, 21)] + [f"{f['question']} {f['answers'][0]}"
                                                                   for f in taught] * 3
    texts += [f"{qa_prompt(f['question'])} I do not know" for f in facts]
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=128, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=500, seed=seed)
    model_dir = tiny.save(model, tokenizer, root / "model")
    splits = root / "splits" / "tiny"
    sft_facts, held_out = taught[:12], taught[12:]
    write_jsonl(splits / "train-L4-n12-s0.jsonl", [{**f, "level": 4} for f in sft_facts])
    write_jsonl(splits / "test_id.jsonl", [{**f, "level": 4} for f in held_out] + [{**f, "level": 0} for f in never])
    write_jsonl(splits / "test_ood.jsonl", [])
    return World(root, model_dir, held_out, never, seed)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build(tmp_path_factory.mktemp("sft"))


def test_completion_only_masking_ignores_prompt_tokens(world):
    _, model_dir, taught, _, _ = world
    from memqa.models import load_tokenizer


    tokenizer = load_tokenizer(model_dir)
    example = qa_example(tokenizer, taught[0]["question"], taught[0]["answers"][0], max_length=64)
    n_prompt = len(tokenizer(qa_prompt(taught[0]["question"]))["input_ids"])
    assert example["labels"][:n_prompt] == [-100] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert example["labels"][-1] == tokenizer.eos_token_id
    answer = tokenizer.decode([t for t in example["labels"] if t != -100], skip_special_tokens=True)
    assert answer.strip() == taught[0]["answers"][0]


def _sft(root, model_dir, conf, sft_root, seed: int = 0):
    facts = read_jsonl(root / "splits" / "tiny" / "train-L4-n12-s0.jsonl")
    return fine_tune(facts, conf, seed, model_dir, sft_root / CELL, sft_root / f"{CELL}.csv")


def _evaluate(root, model_dir, cell, method, sft_root=None):
    facts = [f for d in ("id", "ood") for f in read_jsonl(root / "splits" / "tiny" / f"test_{d}.jsonl")]
    trained = None if cell is None else (sft_root or root / "sft") / cell
    predictions, metrics = evaluate_cell(facts, trained, model_dir, EVAL, SFT.model_copy(update={"method": method}), 5)
    write_jsonl(root / "eval" / f"{cell or 'base'}-{method}.jsonl", predictions)
    return metrics


def _answered(w: World, trained: Path | None, groups: dict[str, list[dict]]) -> dict[str, float]:
    """Accuracy per group of facts (all evaluated in one call) of the base model (trained None) or of a cell."""
    facts = [{**f, "level": 4} for group in groups.values() for f in group]
    correct = {p["fact_id"]: p["correct"] for p in evaluate_cell(facts, trained, w.model_dir, EVAL, SFT, 5)[0]}
    return {name: sum(correct[f["fact_id"]] for f in group) / len(group) for name, group in groups.items()}


def sft_answers_its_facts(w: World) -> list[tiny.Margin]:
    """Full SFT in the QA format on 12 known facts, which the base model answers in that format with 'I do not
    know': after it those 12 are answered (what SFT's loss guarantees), never-taught facts still are not (their
    answers were never in any text). Held-out known facts are only observed: in a 2-layer model whether SFT
    transfers to them depends on the seed and on float rounding (0 to 11 of 12 seen), so it is no assertion."""
    info = _sft(w.root, w.model_dir, SFT, w.root / "sft", w.seed)
    assert info["steps"] == 30
    groups = {"sft": read_jsonl(w.root / "splits" / "tiny" / "train-L4-n12-s0.jsonl"), "held_out": w.held_out,
              "never": w.never}
    base, tuned = _answered(w, None, groups), _answered(w, w.root / "sft" / CELL, groups)
    return [tiny.at_most("base accuracy in the QA format on the 24 taught facts",
                         (base["sft"] + base["held_out"]) / 2, 1 / 12),
            tiny.at_most("final SFT loss", info["final_loss"], 0.5),
            tiny.at_least("tuned accuracy on the 12 SFT facts", tuned["sft"], 11 / 12),
            tiny.at_most("tuned accuracy on the 8 never-taught facts", tuned["never"], 1 / 8),
            tiny.observed("tuned - base accuracy on the 12 held-out known facts", tuned["held_out"] - base["held_out"])]


def test_sft_makes_its_known_facts_answerable_in_the_qa_format_and_not_unknown_ones(world):
    tiny.require(sft_answers_its_facts(world))


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_adapter_methods_train_save_and_reload_for_eval(world, method):
    root, model_dir, _, _, _ = world
    conf = SFT.model_copy(update={"method": method, "epochs": 1, "compute_dtype": "float32", "lr": 1e-3})
    info = _sft(root, model_dir, conf, root / f"sft-{method}")
    assert info["steps"] == 3 and info["method"] == method and info["trainable_parameters"] > 0
    assert (root / f"sft-{method}" / CELL / "adapter_model.safetensors").is_file()
    log = (root / f"sft-{method}" / f"{CELL}.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr" and len(log) == 4
    metrics = _evaluate(root, model_dir, CELL, method, root / f"sft-{method}")
    assert metrics["id"]["n"] == {"L0": 8, "L1": 0, "L2": 0, "L3": 0, "L4": 12}


def test_evaluate_metrics_are_recomputable_from_saved_predictions(world):
    root, model_dir, _, _, _ = world
    metrics = _evaluate(root, model_dir, None, "full")
    saved = read_jsonl(root / "eval" / "base-full.jsonl")
    assert {k: v for k, v in metrics.items() if k in ("id", "ood")} == cell_metrics(saved, 5, 1)


def test_headline_is_the_unweighted_mean_of_level_accuracies():
    preds = [{"domain": "id", "level": 0, "correct": False}] * 9 + [{"domain": "id", "level": 0, "correct": True}]
    preds += [{"domain": "id", "level": 4, "correct": True}]
    metrics = accuracy_metrics(preds, 5)["id"]
    assert metrics["L0"] == 10.0 and metrics["L4"] == 100.0
    assert metrics["headline"] == 55.0 and metrics["micro"] == round(100 * 2 / 11, 2)
    assert metrics["levels_left_out"] == [1, 2, 3]


def test_default_params_name_a_known_sft_method():
    sft = yaml.safe_load(open("params.yaml"))["sft"]
    assert sft["method"] in ("qlora", "lora", "full")


def test_full_fine_tuning_keeps_fp32_master_weights_so_lr_1e5_moves_them(world):
    """bf16 compute must not mean bf16 weights: one AdamW step at the paper's lr 1e-5 has to change them."""
    import torch

    from memqa.training import load_trainable

    _, model_dir, held_out, _, _ = world
    model, _ = load_trainable(model_dir, SFT.model_copy(update={"compute_dtype": "bfloat16"}))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "labels": torch.tensor([[2, 5, 6, 7, 3]])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    changed = sum(int(not torch.equal(a, p.detach())) for a, p in zip(before, model.parameters(), strict=True))
    assert changed >= len(before) // 2, (changed, len(before))


def test_untrained_base_is_evaluated_in_the_precision_of_the_cells(world):
    root, model_dir, _, _, _ = world
    conf = SFT.model_copy(update={"method": "lora", "epochs": 1, "compute_dtype": "bfloat16"})
    _sft(root, model_dir, conf, root / "sft-precision")
    facts = read_jsonl(root / "splits" / "tiny" / "test_id.jsonl")[:2]
    cell = evaluate_cell(facts, root / "sft-precision" / CELL, model_dir, EVAL, conf, 5)[1]
    base = evaluate_cell(facts, None, model_dir, EVAL, conf, 5)[1]
    assert cell["precision"] == base["precision"] == "bfloat16 weights"


def test_sft_is_deterministic_for_a_seed(world):
    root, model_dir, _, _, _ = world
    conf = SFT.model_copy(update={"epochs": 2})
    _sft(root, model_dir, conf, root / "det-a")
    _sft(root, model_dir, conf, root / "det-b")
    assert (root / "det-a" / f"{CELL}.csv").read_text() == (root / "det-b" / f"{CELL}.csv").read_text()


def test_adapter_training_depends_on_the_seed_not_on_earlier_random_draws(world):
    import torch

    root, model_dir, _, _, _ = world
    conf = SFT.model_copy(update={"method": "lora", "epochs": 2, "lr": 1e-2, "lora_dropout": 0.1})
    _sft(root, model_dir, conf, root / "seed-a")
    torch.rand(1000)  # whatever ran before must not change the adapters' init
    _sft(root, model_dir, conf, root / "seed-b")
    assert (root / "seed-a" / f"{CELL}.csv").read_text() == (root / "seed-b" / f"{CELL}.csv").read_text()


def test_loss_from_answer_positions_only_equals_the_full_logits_loss(world):
    """The output layer skips prompt and padding positions; the summed answer-token loss must not change."""
    import torch

    from memqa.models import load_tokenizer
    from memqa.sft_batches import accepts_logits_to_keep, collate, summed_loss
    from memqa.training import load_trainable

    root, model_dir, _, _, _ = world
    tokenizer = load_tokenizer(model_dir)
    model, _ = load_trainable(model_dir, SFT.model_copy(update={"method": "lora"}))
    facts = read_jsonl(root / "splits" / "tiny" / "train-L4-n12-s0.jsonl")[:4]
    batch = collate([qa_example(tokenizer, f["question"], f["answers"][0] + " and more", 48) for f in facts],
                    tokenizer.pad_token_id)
    assert accepts_logits_to_keep(model)
    full, only = summed_loss(model, batch), summed_loss(model, batch, answer_positions_only=True)
    assert full.item() > 0
    torch.testing.assert_close(only, full, rtol=1e-5, atol=1e-5)


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(root, seed)).
MARGINS = [sft_answers_its_facts]


def test_the_papers_template_puts_a_space_between_the_answer_and_eos(world):
    from memqa.models import load_tokenizer

    root, model_dir, _, _, _ = world
    tokenizer = load_tokenizer(model_dir)
    fact = read_jsonl(root / "splits" / "tiny" / "train-L4-n12-s0.jsonl")[0]
    plain = qa_example(tokenizer, fact["question"], fact["answers"][0], 64)
    spaced = qa_example(tokenizer, fact["question"], fact["answers"][0], 64, space_before_eos=True)
    answer = [t for t in spaced["labels"] if t != -100]
    assert answer[-1] == tokenizer.eos_token_id and len(spaced["labels"]) > len(plain["labels"])
    assert tokenizer.decode(answer[:-1]) == " " + fact["answers"][0] + " "


def test_sft_clips_the_gradient_norm_to_max_grad_norm_before_every_step(world, monkeypatch):
    import torch
    from accelerate import Accelerator

    root, model_dir, _, _, _ = world
    norms = []
    clip = Accelerator.clip_grad_norm_

    def recorded(self, parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        clip(self, parameters, max_norm, *args, **kwargs)
        norms.append((max_norm, float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))))

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", recorded)
    info = _sft(root, model_dir, SFT.model_copy(update={"epochs": 1, "max_grad_norm": 0.5}), root / "clipped")
    assert len(norms) == info["steps"] > 0 and all(m == 0.5 and n <= 0.5 + 1e-5 for m, n in norms)
    norms.clear()
    _sft(root, model_dir, SFT.model_copy(update={"epochs": 1}), root / "unclipped")  # max_grad_norm None
    assert norms == []
