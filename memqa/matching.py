"""Judging a completion against gold answers, and the synonyms a gold also accepts (the probe and evaluation
share both)."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import yaml
from anyascii import anyascii

from memqa.errors import MemqaError
from memqa.paths import SYNONYM_FILES

if TYPE_CHECKING:
    from memqa.config import Matching

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Two or more single letters, each followed by a period ('U.S.', 'U.S.A.', 'e.g.', 'J. R. R.', 'S.p.A.'), plus
# one trailing undotted letter ('N.E.R.D'). The first letter must not follow a letter or digit ('AB.C.' is left alone).
_LETTER = r"[^\W\d_]"
_DOTTED = re.compile(rf"(?<![^\W_]){_LETTER}\.(?:[ \t]*{_LETTER}\.)+(?:{_LETTER}(?![^\W_]))?")


def _collapse_match(match: re.Match[str]) -> str:
    return "".join(ch for ch in match.group() if ch not in ". \t") + " "


def collapse_abbreviations(text: str) -> str:
    """'the U.S. in 1960' -> 'the US  in 1960': dotted single-letter abbreviations become one word."""
    return _DOTTED.sub(_collapse_match, text)


@lru_cache(maxsize=4096)
def _ascii_char(ch: str) -> str:
    """Letters, marks and digits of any script to ASCII ('ł' -> 'l', 'æ' -> 'ae', 'Ж' -> 'Zh', '京' -> 'Jing').

    Symbols and punctuation are kept as they are (they become spaces, as before: '€5' -> '5', not 'eur5'). Letters
    anyascii spells as an apostrophe (the okina and ayn/hamza signs: 'Līhuʻe', 'Ismaʿil'; Hebrew aleph) are dropped so
    the word stays whole ('lihue', not 'lihu e'). A letter or digit anyascii has no rendering for (rare CJK
    ideographs) is kept rather than dropped.
    """
    kind = unicodedata.category(ch)[0]
    if kind not in "LMN":
        return ch
    out = anyascii(ch)
    if any(c.isalnum() for c in out):
        return out
    return ch if not out and kind != "M" else ""


def _transliterate(text: str) -> str:
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda m: "".join(map(_ascii_char, m.group())), text)


def _fold(text: str) -> str:
    """Transliterate (to ASCII where anyascii can), casefold, punctuation to spaces, collapse whitespace."""
    return " ".join(_NON_WORD.sub(" ", _transliterate(text).casefold()).split())


def _forms(text: str) -> tuple[str, str]:
    """(normalize(text), the same without collapsing dotted abbreviations); one string twice when there are none."""
    text = unicodedata.normalize("NFKC", text)
    collapsed = collapse_abbreviations(text)
    spaced = _fold(text)
    return (spaced, spaced) if collapsed == text else (_fold(collapsed), spaced)


def normalize(text: str) -> str:
    """Canonical form for matching: 'São-Paulo' -> 'sao paulo', 'Łódź' -> 'lodz', 'Straße' -> 'strasse',
    'the U.S.A.' -> 'the usa'.

    Compatibility forms are unified (NFKC), dotted single-letter abbreviations become one word, letters of any script
    are transliterated to ASCII (anyascii; non-Latin scripts are romanised, the same way for gold and completion),
    then casefolded, punctuation turned into spaces and whitespace collapsed.
    """
    return _forms(text)[0]


def _matches(completion: str, answers: Sequence[str], found: Callable[[str, str], bool]) -> bool:
    """Some gold alias is found in the completion, both with dotted abbreviations collapsed ('U.S.' is the word 'us')
    or both without ('U.S.' is 'u s'): the second keeps every match the plain punctuation-to-space rule made, so
    'P. G. Wodehouse' still matches 'P G Wodehouse' while 'US' now matches 'the U.S.'."""
    text = _forms(completion)
    for answer in answers:
        gold = _forms(answer)
        if any(g and found(g, t) for g, t in {(gold[0], text[0]), (gold[1], text[1])}):
            return True
    return False


def contains(completion: str, answers: Sequence[str]) -> bool:
    """The paper's judge: some normalised gold alias is a substring of the normalised completion.

    Substring semantics are the paper's and are loose: 'US' is found in 'USSR'. Use token_sequence
    for word-aligned matching.
    """
    return _matches(completion, answers, lambda gold, text: gold in text)


def token_sequence(completion: str, answers: Sequence[str]) -> bool:
    """Stricter: the gold alias's words appear as a contiguous run of the completion's words."""
    return _matches(completion, answers, lambda gold, text: f" {gold} " in f" {text} ")


MATCHERS: dict[str, Callable[[str, Sequence[str]], bool]] = {
    "contains": contains,
    "token_sequence": token_sequence,
}


@cache
def synonym_table(name: str) -> dict[str, tuple[str, ...]]:
    """matching.synonyms: gold object -> the forms also accepted for it (`published`: Ye et al. 2025, Table 12,
    memqa/resources/synonyms-published.yaml; `none`: no table)."""
    if name == "none":
        return {}
    return {key: tuple(forms) for key, forms in yaml.safe_load(SYNONYM_FILES[name].read_text()).items()}


def accepted_answers(answers: Sequence[str], table: dict[str, tuple[str, ...]]) -> list[str]:
    """The gold answers, then the table's forms of each gold that is one of its objects (in order, once each);
    the first answer stays first (SFT trains on it)."""
    out = list(dict.fromkeys(answers))
    for answer in answers:
        out += [form for form in table.get(answer, ()) if form not in out]
    return out


def with_synonyms(facts: list[dict], conf: Matching) -> list[dict]:
    """The facts with the answers the probe and evaluation accept: matching.synonyms applied, symmetrically."""
    table = synonym_table(conf.synonyms)
    return [{**f, "answers": accepted_answers(f["answers"], table)} for f in facts]


def get_matcher(name: str) -> Callable[[str, Sequence[str]], bool]:
    if name not in MATCHERS:
        raise MemqaError(f"unknown matcher '{name}': use one of {', '.join(MATCHERS)}")
    return MATCHERS[name]
