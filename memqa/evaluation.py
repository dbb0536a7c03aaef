"""Closed-book QA evaluation: greedy answers of a cell's model to the test questions, judged per fact; data
parallel under `accelerate launch` (batches split between the processes), with the one-process result; or
(evaluate.engine vllm) the same answers and rows through vLLM (memqa.vllm_engine)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from memqa.accuracy import accuracy_metrics
from memqa.artifacts import evaluation_artifacts, first_line_exact
from memqa.distributed import gather_in_order, my_share, process_state
from memqa.engine import generate, length_sorted_batches
from memqa.errors import MemqaError
from memqa.matching import get_matcher
from memqa.paths import dvc_stage
from memqa.prompts import qa_prompt

if TYPE_CHECKING:
    from memqa.config import Evaluate, Sft


def predict(model, tokenizer, facts: list[dict], conf: Evaluate, state=None) -> list[dict]:
    """Greedy answers to the facts' questions, judged: one row per fact, in the facts' order, on every process.

    The work is the one-process batch plan: the prompts in the engine's length-sorted batches of
    evaluate.batch_size. Under `accelerate launch` process r decodes batches r, r + P, r + 2P, ... on its own
    device, and the rows are gathered back into the facts' order. Each batch is decoded exactly as one process
    decodes it (the same prompts in the same rows, the same padding), so the predictions are the one-process
    predictions token for token: greedy decoding depends on a batch's shape in the last bits of the logits,
    which a split by facts would change.
    """
    matcher = get_matcher(conf.matcher)
    prompts = [qa_prompt(f["question"]) for f in facts]
    batch_size = conf.batch_size
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]] if prompts else []
    batches = length_sorted_batches(lengths, batch_size)
    mine = []
    for b in my_share(len(batches), state):  # one batch per call: generate keeps it whole, rows in this order
        outputs = generate(model, tokenizer, [prompts[i] for i in batches[b]],
                           max_new_tokens=conf.max_new_tokens, batch_size=batch_size)
        for i, out in zip(batches[b], outputs, strict=True):
            mine.append((i, judged(facts[i], out[0], matcher)))
    return gather_in_order(mine, state)


def judged(f: dict, output: str, matcher) -> dict:
    """A fact's prediction row: the fact, the model's answer, and whether it is correct (and exact)."""
    return {"fact_id": f["fact_id"], "domain": f["domain"], "relation": f["relation"], "subject": f["subject"],
            "level": f["level"], "question": f["question"], "gold": f["answers"], "output": output,
            "correct": matcher(output, f["answers"]), "exact": first_line_exact(output, f["answers"])}


def predict_vllm(llm, tokenizer, facts: list[dict], conf: Evaluate, adapter: Path | None = None) -> list[dict]:
    """predict's rows through vLLM's LLM (evaluate.engine vllm): the same prompts, greedy, the same judging;
    adapter: the cell's LoRA folder, applied by vLLM."""
    from memqa.vllm_engine import greedy

    outputs = greedy(llm, tokenizer, [qa_prompt(f["question"]) for f in facts], conf.max_new_tokens, adapter)
    matcher = get_matcher(conf.matcher)
    return [judged(f, out, matcher) for f, out in zip(facts, outputs, strict=True)]


def _vllm_cell(facts: list[dict], trained_dir: Path | None, info: dict, model_dir: Path, conf: Evaluate,
               sft_conf: Sft, method: str) -> list[dict]:
    """A cell's predictions through vLLM: the base, full weights, or the base with the cell's LoRA adapter, in the
    dtype engine hf evaluates in (memqa.models.compute_dtype)."""
    from memqa.models import compute_dtype
    from memqa.vllm_engine import load

    if method == "qlora":
        raise MemqaError("evaluate.engine vllm does not run qlora cells (an NF4 base with an adapter): set "
                         "evaluate.engine: hf")
    weights = trained_weights(trained_dir, info)
    adapter = weights if weights is not None and method == "lora" else None
    llm, tokenizer = load(model_dir if weights is None or adapter else weights,
                          str(compute_dtype(sft_conf)).removeprefix("torch."), conf, adapter)
    return predict_vllm(llm, tokenizer, facts, conf, adapter)


def train_info(trained_dir: Path | None) -> dict:
    return {} if trained_dir is None else json.loads((trained_dir / "train_info.json").read_text())


def trained_weights(trained_dir: Path | None, info: dict) -> Path | None:
    """Where a cell's trained weights are: its sft folder, or, for full fine-tuning with sft.keep_weights false,
    the scratch folder train_info.json names (deleted once the cell is evaluated)."""
    weights = info.get("weights", {})
    if trained_dir is None or weights.get("kept", True):
        return trained_dir
    if not (Path(weights["dir"]) / "config.json").is_file():
        stage = dvc_stage("sft", trained_dir.parent.name, trained_dir.name)
        raise MemqaError(f"the full weights of {trained_dir} were deleted after their evaluation "
                         f"(sft.keep_weights: false): retrain them with `dvc repro --force --downstream {stage}`, "
                         "or set sft.keep_weights: true")
    return Path(weights["dir"])


def drop_scratch_weights(trained_dir: Path | None) -> Path | None:
    """Delete a cell's full weights kept only until its evaluation (sft.keep_weights false); the folder or None.
    Call it after the predictions and metrics are written."""
    weights = train_info(trained_dir).get("weights", {})
    if trained_dir is None or weights.get("kept", True):
        return None
    shutil.rmtree(weights["dir"], ignore_errors=True)
    return Path(weights["dir"])


def evaluate_cell(facts: list[dict], trained_dir: Path | None, model_dir: Path, conf: Evaluate, sft_conf: Sft,
                  n_levels: int, min_level_facts: int = 1) -> tuple[list[dict], dict]:
    """(predictions, metrics) of one cell's model (trained_dir None: the untrained base) on the test facts.

    Under `accelerate launch` every process loads the model onto its own device, predicts its share of the
    batches (predict) and returns the whole result; the caller writes it on the main process only."""
    from memqa.models import load_for_eval, precision
    from memqa.vllm_engine import check, engine_record

    check(conf, "evaluate")  # before any model loads: parallel sizes, one process, vLLM importable
    state = process_state()
    if trained_dir is not None and not trained_dir.is_dir():
        raise MemqaError(f"no trained model at {trained_dir}: run `dvc repro sft` first")
    info = train_info(trained_dir)
    if info.get("skipped"):
        return [], {"skipped": True, "reason": "empty training set (see the split metrics)"}
    method = info.get("method", sft_conf.method)  # the cell as it was trained
    if conf.engine == "vllm":
        predictions = _vllm_cell(facts, trained_dir, info, model_dir, conf, sft_conf, method)
    else:
        model, tokenizer = load_for_eval(model_dir, trained_weights(trained_dir, info), method, sft_conf,
                                         local_rank=state.local_process_index)
        predictions = predict(model, tokenizer, facts, conf, state)
    return predictions, {"skipped": False, "train_facts": info.get("facts", 0),
                         "precision": precision(sft_conf, method, training=False),
                         "processes": state.num_processes, "engine": engine_record(conf),
                         **cell_metrics(predictions, n_levels, min_level_facts)}


def cell_metrics(predictions: list[dict], n_levels: int, min_level_facts: int) -> dict:
    """Per domain: the accuracies (memqa.accuracy) and the matching artifacts (memqa.artifacts) of the rows."""
    accuracies = accuracy_metrics(predictions, n_levels, min_level_facts)
    artifacts = evaluation_artifacts(predictions, n_levels, min_level_facts)
    return {domain: {**values, **artifacts[domain]} for domain, values in accuracies.items()}
