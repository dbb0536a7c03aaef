"""How a fact becomes text: the probe's declarative templates (memqa/resources/probe_templates.yaml, memqa's own,
and probe_templates_published.yaml, the paper's: data) and the QA prompt format of SFT and evaluation."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from memqa.errors import MemqaError
from memqa.paths import PUBLISHED_TEMPLATES_FILE, TEMPLATES_FILE

QA_PROMPT = "<|question|> {question} <|answer|>"


@cache
def probe_templates(path: Path = TEMPLATES_FILE) -> dict[str, list[str]]:
    """Relation id -> declarative prompt prefixes, each with {subject} once."""
    return yaml.safe_load(Path(path).read_text())


def templates_for(relation: str, count: int | None = None, template_set: str = "authored") -> list[str]:
    """The first `count` templates of a relation (all when None): a prefix, so fewer is a subset.

    template_set `authored`: memqa's own (memqa/resources/probe_templates.yaml); `published`: the paper's, as
    recovered (Ye et al. 2025, App. F.2: 401 of its 504), in its order, then memqa's own for the missing ones."""
    authored = probe_templates().get(relation)
    if authored is None:
        raise MemqaError(f"no probe templates for relation '{relation}' in {TEMPLATES_FILE.name}: add 21")
    templates = authored
    if template_set == "published":
        published = probe_templates(PUBLISHED_TEMPLATES_FILE).get(relation) or []
        templates = published + [t for t in authored if t not in published]
    if count is not None and count > len(templates):
        raise MemqaError(f"probe.templates={count} but {relation} has only {len(templates)}: lower it")
    return templates[:count] if count else templates


def published_count(relation: str, count: int) -> int:
    """How many of a relation's first `count` templates of the published set are the paper's own."""
    return min(count, len(probe_templates(PUBLISHED_TEMPLATES_FILE).get(relation) or []))


def fill(template: str, subject: str) -> str:
    return template.replace("{subject}", subject)


def qa_prompt(question: str) -> str:
    return QA_PROMPT.format(question=question)
