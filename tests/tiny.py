"""A tiny random-init Llama and a byte-level BPE tokenizer trained in-process, a way to teach it facts, and
Margin: how a test states an assertion on what the taught model learned.

No download: everything is built from the text the test supplies.

A trained model's weights depend on float rounding (CPU kernels, thread count), so an assertion on what it
learned must hold with margin: each such assertion is a Margin (value against threshold), collected per test
module in MARGINS, which benchmarks/training_margins.py measures over seeds and thread counts.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from memqa.prompts import fill, templates_for

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|question|>", "<|answer|>"]


def make_tokenizer(corpus: list[str], vocab_size: int = 800) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_model(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def teach(model, tokenizer, texts: list[str], steps: int, lr: float = 3e-3, batch_size: int = 32,
          seed: int = 0) -> float:
    """Plain causal-LM training on texts (each + EOS); returns the last loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        pick = torch.randint(len(texts), (min(batch_size, len(texts)),), generator=generator).tolist()
        batch = tokenizer([texts[i] + tokenizer.eos_token for i in pick], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


@dataclass(frozen=True)
class Margin:
    """One assertion on a trained model: value >= threshold (at_least) or value <= threshold (at_most)."""
    name: str
    value: float
    threshold: float
    at_least: bool
    detail: str = ""

    @property
    def margin(self) -> float:
        """How far the value is on the passing side of the threshold (negative: the assertion fails)."""
        return self.value - self.threshold if self.at_least else self.threshold - self.value


def at_least(name: str, value: float, threshold: float, detail: object = "") -> Margin:
    return Margin(name, float(value), float(threshold), True, str(detail))


def at_most(name: str, value: float, threshold: float, detail: object = "") -> Margin:
    return Margin(name, float(value), float(threshold), False, str(detail))


def observed(name: str, value: float, detail: object = "") -> Margin:
    """A quantity the benchmark records but no test asserts (no threshold: it holds by no margin)."""
    return Margin(name, float(value), math.nan, True, str(detail))


def require(margins: list[Margin]) -> None:
    """Assert every margin holds (observed ones aside); the message lists the failing ones with their values."""
    failed = [m for m in margins if m.margin < 0]  # NaN (observed) compares False
    assert not failed, "\n".join(f"{m.name}: {m.value:.6g} vs {m.threshold:.6g} {m.detail}" for m in failed)


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "memqa_model.json").write_text(json.dumps({"source": "tiny-test-model"}))
    return path


SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vo", "sha", "dri", "pel", "nor", "qua", "zem", "bix", "fal", "gor", "hin"]


def made_up_name(i: int, words: int = 1) -> str:
    parts = []
    for w in range(words):
        n = i * 7 + w * 3
        parts.append((SYLLABLES[n % 16] + SYLLABLES[(n // 16 + w) % 16] + SYLLABLES[(n // 5 + 3) % 16]).capitalize())
    return " ".join(parts)


def synthetic_facts(n: int, relation: str = "P19", split: str = "train", domain: str = "id",
                    start: int = 0) -> list[dict]:
    """Facts with unique made-up subjects and objects, shaped like rows of data/facts.jsonl."""
    rows = []
    for i in range(start, start + n):
        subject, obj = made_up_name(i, 2), made_up_name(1000 + i)
        rows.append({"fact_id": f"{relation}/{split}/{i}", "relation": relation, "relation_label": relation,
                     "split": split, "domain": domain, "subject": subject,
                     "question": f"Where was {subject} born?", "answers": [obj]})
    return rows


def statements(fact: dict, n_templates: int, answer: str | None = None) -> list[str]:
    """The fact written out with the first n probe templates of its relation (with its answer, or `answer`)."""
    answer = answer or fact["answers"][0]
    return [f"{fill(t, fact['subject'])} {answer}" for t in templates_for(fact["relation"], n_templates)]


def other_answer(fact: dict) -> str:
    """A second made-up object for a fact (never one of the synthetic facts' own): teaching the fact with it and
    with its answer equally often makes P(the answer) intermediate by symmetry, whatever the float rounding."""
    return made_up_name(2000 + int(fact["fact_id"].rsplit("/", 1)[1]))
