"""Build the CI's tiny model: a seeded random-init Llama that was taught some EntityQuestions facts.

    MEMQA_EQ_SOURCE=../shared/data/entityquestions python ci/make_tiny_model.py data/tiny-model

Deterministic for a torch version and CPU, so the CI's metrics can be diffed against a committed baseline.
It reads the same subsample the CI params ask for (params.yaml must be ci/tiny/params.yaml).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memqa.config import load_params  # noqa: E402
from memqa.eq import build_facts  # noqa: E402
from memqa.prompts import qa_prompt  # noqa: E402
from tests import tiny  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # thread count changes float summation order; one thread keeps it fixed
    facts = [f for f in build_facts(Path(os.environ["MEMQA_EQ_SOURCE"]), load_params().download)[0]
             if f["split"] in ("train", "test")]
    taught = facts[::2]  # half the facts, each written with 5 templates; the rest never seen
    texts = [s for f in taught for s in tiny.statements(f, 5)]
    corpus = [s for f in facts for s in tiny.statements(f, 5)] + [qa_prompt(f["question"]) for f in facts]
    tokenizer = tiny.make_tokenizer(corpus, vocab_size=1500)
    model = tiny.make_model(tokenizer, hidden=64, layers=2)
    tiny.teach(model, tokenizer, texts, steps=300, lr=5e-3)
    tiny.save(model, tokenizer, out)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()):,} parameters, taught {len(taught)} facts -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/tiny-model"))
