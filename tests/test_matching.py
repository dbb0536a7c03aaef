"""The answer matcher: normalisation, the paper's substring judge and the word-aligned one."""
import json
import unicodedata

import pytest

from memqa.errors import MemqaError
from memqa.matching import MATCHERS, contains, get_matcher, normalize, token_sequence

# Letters NFKD leaves whole, spelt the way an ASCII keyboard would: built here, independently of memqa.matching.
PLAIN = {"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "Ae", "ß": "ss", "đ": "d", "Đ": "D"}


def plain_ascii(text: str) -> str:
    text = "".join(PLAIN.get(ch, ch) for ch in text)
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def test_matcher_contains_is_substring_so_us_matches_ussr():
    assert contains("He lived in the USSR.", ["US"])
    assert not token_sequence("He lived in the USSR.", ["US"])
    assert token_sequence("born in the U.S. in 1960", ["US", "U S"])


def test_matcher_normalises_case_accents_punctuation_and_space():
    assert normalize("  São-Paulo,\tBRAZIL ") == "sao paulo brazil"
    assert token_sequence("was born in sao paulo!", ["São Paulo"])
    assert contains("Born in  NEW   york city", ["New York"])
    assert not contains("born in Paris", ["London"]) and not contains("anything", [""])


def test_transliteration_matches_letters_nfkd_cannot_decompose():
    expected = {"São Paulo": "sao paulo", "Łódź": "lodz", "Øresund": "oresund", "Straße": "strasse",
                "Æsir": "aesir", "Đakovo": "dakovo", "œuvre": "oeuvre", "Þingvellir": "thingvellir",
                "Diyarbakır": "diyarbakir"}
    for text, ascii_form in expected.items():
        assert normalize(text) == ascii_form, text
    assert token_sequence("He was born in Lodz, Poland.", ["Łódź"])
    assert token_sequence("the strait is the Oresund", ["Øresund"])
    assert contains("STRASSE", ["Straße"])


def test_okina_and_ayn_letters_are_dropped_so_the_word_stays_whole():
    assert normalize("Līhuʻe") == "lihue" and normalize("Mawlay Ismaʿil") == "mawlay ismail"
    assert token_sequence("It is Lihue, Hawaii", ["Līhuʻe"])


def test_decomposed_accents_match_precomposed_ones():
    assert normalize("Sa\u0303o Paulo") == normalize("São Paulo") == "sao paulo"


def test_compatibility_forms_are_unified():
    assert normalize("Ｔｏｋｙｏ") == "tokyo" and normalize("ﬁnance") == "finance"


def test_non_latin_scripts_normalise_to_the_same_nonempty_romanisation():
    for gold, completion in [("Москва", "Он родился в Москва."), ("北京", "他出生于北京。"), ("Ελλάδα", "στην Ελλάδα")]:
        assert normalize(gold), gold
        assert contains(completion, [gold]), gold
    assert normalize("Москва") == "moskva"
    assert not contains("Он родился в Киев.", ["Москва"])


def test_symbols_still_become_spaces_not_transliterated_words():
    assert normalize("€5 — “quoted” …") == "5 quoted"
    assert token_sequence("it cost €5", ["5"])


def test_dotted_abbreviation_is_one_word():
    assert normalize("the U.S. in 1960") == "the us in 1960"
    assert normalize("U.S.A.") == "usa" and normalize("e.g. Paris") == "eg paris"
    assert normalize("Washington, D.C.") == "washington dc" and normalize("N.E.R.D") == "nerd"
    assert token_sequence("born in the U.S. in 1960", ["US"])
    assert token_sequence("born in the USA", ["U.S.A."])
    assert token_sequence("plays for Celtic FC", ["Celtic F.C."])
    assert not token_sequence("a U.S. city", ["aus"])


def test_spaced_initials_collapse_like_unspaced_ones():
    assert normalize("P. G. Wodehouse") == normalize("P.G. Wodehouse") == normalize("PG Wodehouse") == "pg wodehouse"
    assert token_sequence("written by J.R.R. Tolkien", ["J. R. R. Tolkien"])


def test_undotted_single_letters_still_match_dotted_gold():
    assert token_sequence("written by P G Wodehouse", ["P. G. Wodehouse"])
    assert token_sequence("born in the U S in 1960", ["U.S."])
    assert contains("born in the U S in 1960", ["U.S."])


def test_single_dotted_letter_is_not_an_abbreviation():
    assert normalize("A. Smith") == "a smith"
    assert normalize("born in the U.S. I think") == "born in the us i think"
    assert normalize("Mr. X. Y") == "mr x y"


def test_get_matcher_knows_both_matchers_and_rejects_others():
    assert set(MATCHERS) == {"contains", "token_sequence"}
    assert get_matcher("contains") is contains and get_matcher("token_sequence") is token_sequence
    with pytest.raises(MemqaError, match="unknown matcher"):
        get_matcher("exact")


def test_real_entityquestions_answers_with_undecomposable_letters_match_their_ascii_spelling(eq_dir):
    answers = set()
    for path in sorted((eq_dir / "test").glob("P*.test.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            answers.update(a for a in row["answers"] if any(ch in PLAIN for ch in a))
    assert len(answers) >= 5, sorted(answers)
    for answer in sorted(answers):
        spelt = plain_ascii(answer)
        assert spelt.isascii(), (answer, spelt)
        assert contains(f"The answer is {spelt}.", [answer]), (answer, spelt)
        assert token_sequence(f"The answer is {spelt}.", [answer]), (answer, spelt)


def _usa() -> list[dict]:
    return [{"fact_id": "P17/test/0", "answers": ["United States of America"], "question": "q"}]


def test_published_synonyms_let_a_gold_match_its_other_names_in_probe_and_evaluation_alike():
    from memqa.config import Matching
    from memqa.matching import with_synonyms

    published = with_synonyms(_usa(), Matching(synonyms="published"))[0]["answers"]
    assert contains("It is in the United States.", published) and contains("USA", published)
    none = with_synonyms(_usa(), Matching(synonyms="none"))[0]["answers"]
    assert none == ["United States of America"] and not contains("It is in the United States.", none)


def test_synonyms_keep_the_gold_first_and_add_each_form_once():
    from memqa.matching import accepted_answers

    table = {"New York City": ("New York", "New York City")}
    assert accepted_answers(["New York City", "NYC"], table) == ["New York City", "NYC", "New York"]
    assert accepted_answers(["Paris"], table) == ["Paris"]


def test_the_published_synonym_table_is_read_as_published():
    from memqa.matching import synonym_table

    table = synonym_table("published")
    assert len(table) == 29 and table["Saint Petersburg"] == ("Saint Petersburg", "St. Petersburg")
    assert synonym_table("none") == {}
