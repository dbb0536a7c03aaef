"""How a fact becomes text: the probe's declarative templates (memqa/resources/probe_templates.yaml, data)
and the QA prompt format of SFT and evaluation."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from memqa.errors import MemqaError
from memqa.paths import TEMPLATES_FILE

QA_PROMPT = "<|question|> {question} <|answer|>"


@cache
def probe_templates(path: Path = TEMPLATES_FILE) -> dict[str, list[str]]:
    """Relation id -> declarative prompt prefixes, each with {subject} once."""
    return yaml.safe_load(Path(path).read_text())


def templates_for(relation: str, count: int | None = None) -> list[str]:
    """The first `count` templates of a relation (all when None): a prefix, so fewer is a subset."""
    templates = probe_templates().get(relation)
    if templates is None:
        raise MemqaError(f"no probe templates for relation '{relation}' in {TEMPLATES_FILE.name}: add 21")
    if count is not None and count > len(templates):
        raise MemqaError(f"probe.templates={count} but {relation} has only {len(templates)}: lower it")
    return templates[:count] if count else templates


def fill(template: str, subject: str) -> str:
    return template.replace("{subject}", subject)


def qa_prompt(question: str) -> str:
    return QA_PROMPT.format(question=question)
