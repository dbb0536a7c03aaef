"""Containment's artifacts, measured: an echo of the subject, a match across a word boundary, a leak between
relations, and the strict first-line exact match reported beside containment."""
from memqa.artifacts import crosses_word_boundary, evaluation_artifacts, first_line_exact, gold_in_subject, leaks


def _fact(i: int, subject: str, answer: str, relation: str = "P17", domain: str = "id") -> dict:
    return {"fact_id": f"{relation}/test/{i}", "subject": subject, "answers": [answer], "relation": relation,
            "domain": domain}


def test_a_gold_inside_the_subject_is_found_after_normalising():
    assert gold_in_subject(_fact(0, "Paris Saint-Germain F.C.", "Paris"))
    assert not gold_in_subject(_fact(1, "Eiffel Tower", "Paris"))


def test_a_match_only_across_a_word_boundary_is_told_from_a_whole_word_match():
    assert crosses_word_boundary("It was in Czechoslovakia.", ["Oslo"])
    assert not crosses_word_boundary("Oslo, Norway", ["Oslo"])
    assert not crosses_word_boundary("Bergen", ["Oslo"])  # not counted at all


def test_first_line_exact_match_takes_the_first_line_only_and_normalises_it():
    assert first_line_exact(" paris\nand then France", ["Paris"])
    assert not first_line_exact("Paris, France", ["Paris"]) and not first_line_exact("\n", ["Paris"])


def test_a_test_fact_a_train_fact_of_another_relation_shares_is_a_leak():
    test = [_fact(0, "Ann Smith", "Berlin", "P20"), _fact(1, "Bo Li", "Rome", "P20")]
    train = [_fact(2, "Ann Smith", "Berlin", "P19"), _fact(3, "Bo Li", "Rome", "P20")]
    assert [f["fact_id"] for f in leaks(test, train)] == ["P20/test/0"]


def test_evaluation_reports_the_headline_without_the_facts_whose_gold_is_in_the_subject():
    facts = [_fact(0, "Paris Saint-Germain", "Paris"), _fact(1, "Eiffel Tower", "Paris")]
    predictions = [{"fact_id": f["fact_id"], "domain": "id", "level": 0, "subject": f["subject"],
                    "gold": f["answers"], "output": out, "correct": correct, "exact": exact}
                   for f, out, correct, exact in zip(facts, ["Paris Saint-Germain", "Lyon"], [True, False],
                                                     [False, False], strict=True)]
    artifacts = evaluation_artifacts(predictions, n_levels=5, min_facts=1)["id"]
    assert artifacts["gold_in_subject"] == 0.5 and artifacts["exact_micro"] == 0.0
    assert artifacts["headline_without_gold_in_subject"] == 0.0  # the echo was the only correct answer
    assert artifacts["correct_crossing_a_word_boundary"] == 0.0
