"""Judging a completion against gold answers (the probe and evaluation share this)."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from memqa.errors import MemqaError

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Casefold, strip accents, turn punctuation into spaces, collapse whitespace: 'São-Paulo' -> 'sao paulo'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def contains(completion: str, answers: Sequence[str]) -> bool:
    """The paper's judge: some normalised gold alias is a substring of the normalised completion.

    Substring semantics are the paper's and are loose: 'US' is found in 'USSR'. Use token_sequence
    for word-aligned matching.
    """
    text = normalize(completion)
    return any((gold := normalize(a)) and gold in text for a in answers)


def token_sequence(completion: str, answers: Sequence[str]) -> bool:
    """Stricter: the gold alias's words appear as a contiguous run of the completion's words."""
    text = f" {normalize(completion)} "
    return any((gold := normalize(a)) and f" {gold} " in text for a in answers)


MATCHERS: dict[str, Callable[[str, Sequence[str]], bool]] = {
    "contains": contains,
    "token_sequence": token_sequence,
}


def get_matcher(name: str) -> Callable[[str, Sequence[str]], bool]:
    if name not in MATCHERS:
        raise MemqaError(f"unknown matcher '{name}': use one of {', '.join(MATCHERS)}")
    return MATCHERS[name]
