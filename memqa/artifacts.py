"""Where containment matching credits what the model did not know, measured per run (Ye et al.'s judge is
casefolded substring containment, in the probe and in evaluation alike):

- gold in subject: a gold form sits inside the fact's subject ('Paris Saint-Germain' -> 'Paris'), so a completion
  that only echoes the subject counts;
- word-boundary crossing: a completion counted correct whose gold is found only across a word boundary ('Oslo'
  in 'Czechoslovakia'), not as a run of whole words;
- cross-relation leak: a test fact whose subject and gold answer are also those of a train fact of another
  relation, which SFT may have taught.
"""
from __future__ import annotations

from memqa.accuracy import DOMAINS, accuracy_metrics
from memqa.matching import contains, normalize, token_sequence


def gold_in_subject(fact: dict) -> bool:
    """Some gold form is a substring of the subject (what containment would credit an echo of the subject with)."""
    subject = normalize(fact["subject"])
    return any(gold and gold in subject for gold in (normalize(a) for a in fact["answers"]))


def crosses_word_boundary(output: str, answers: list[str]) -> bool:
    """Counted by containment, not by whole words."""
    return contains(output, answers) and not token_sequence(output, answers)


def first_line_exact(output: str, answers: list[str]) -> bool:
    """The completion's first line, normalised, is exactly a gold form: the strict judge beside containment."""
    line = normalize(output.strip().split("\n", 1)[0]) if output.strip() else ""
    return bool(line) and any(line == normalize(a) for a in answers)


def leaks(tests: list[dict], train: list[dict]) -> list[dict]:
    """Test facts whose (subject, gold) pair is also a train fact's, in another relation."""
    taught = {}
    for fact in train:
        taught.setdefault((normalize(fact["subject"]), normalize(fact["answers"][0])), set()).add(fact["relation"])
    return [f for f in tests if taught.get((normalize(f["subject"]), normalize(f["answers"][0])), {f["relation"]})
            - {f["relation"]}]


def share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def evaluation_artifacts(predictions: list[dict], n_levels: int, min_facts: int) -> dict:
    """Per domain, from the prediction rows alone (so recomputable from data/eval): first-line exact match (micro,
    %), the share of the correct answers that cross a word boundary, the share of facts with a gold in the
    subject, and the headline without those facts (a sensitivity row)."""
    echo = {p["fact_id"] for p in predictions if gold_in_subject({"subject": p["subject"], "answers": p["gold"]})}
    clean = accuracy_metrics([p for p in predictions if p["fact_id"] not in echo], n_levels, min_facts)
    out = {}
    for domain in DOMAINS:
        rows = [p for p in predictions if p["domain"] == domain]
        correct = [p for p in rows if p["correct"]]
        out[domain] = {
            "exact_micro": round(100 * sum(p["exact"] for p in rows) / len(rows), 2) if rows else None,
            "correct_crossing_a_word_boundary": share([crosses_word_boundary(p["output"], p["gold"]) for p in correct]),
            "gold_in_subject": share([p["fact_id"] in echo for p in rows]),
            "headline_without_gold_in_subject": clean[domain]["headline"],
        }
    return out
