"""engine.eval_sentences: the held-out sentences checkpoints are scored on, the defaults chosen
around a voice's training text, and the check of the sentences a training config lists."""

from __future__ import annotations

import re
import unicodedata

import pytest

from engine import eval_sentences, languages
from engine.eval_sentences import DEFAULT_COUNT, SENTENCES, check_sentences, default_sentences
from engine.speech.scoring import normalise

QUESTION_MARKS = ("?", "？", "؟")
#: A word of each script that is not Latin must show in every sentence of that language.
SCRIPTS = {
    "ru": "CYRILLIC",
    "ar": "ARABIC",
    "hi": "DEVANAGARI",
    "zh-cn": "CJK UNIFIED IDEOGRAPH",
    "ja": ("HIRAGANA", "KATAKANA", "CJK UNIFIED IDEOGRAPH"),
    "ko": "HANGUL",
}
#: Languages written without spaces between words (their lengths are not counted in words).
UNSPACED = ("zh-cn", "ja")


def words(sentence: str) -> int:
    """Words of a sentence written with spaces (a lone punctuation mark is not one)."""
    return sum(1 for token in sentence.split() if any(char.isalnum() for char in token))


def test_every_language_has_12_distinct_sentences():
    assert tuple(SENTENCES) == languages.CODES
    assert DEFAULT_COUNT == 8
    for language in languages.CODES:
        sentences = SENTENCES[language]
        assert isinstance(sentences, tuple), language
        assert len(sentences) == 12, language
        assert all(isinstance(sentence, str) and sentence == sentence.strip() for sentence in sentences), language
        assert len({normalise(sentence, language) for sentence in sentences}) == 12, language
        assert check_sentences(list(sentences)) == list(sentences)


@pytest.mark.parametrize("language", languages.CODES)
def test_the_defaults_have_questions_and_numbers(language):
    defaults = SENTENCES[language][:DEFAULT_COUNT]
    assert sum(sentence.endswith(QUESTION_MARKS) for sentence in defaults) >= 2
    # In the documented order: short, short, long, long, question, question, number, number.
    assert all(sentence.endswith(QUESTION_MARKS) for sentence in defaults[4:6])
    if language != "hi":  # Hindi spells its numbers: XTTS-v2's cleaner cannot read Hindi digits
        assert all(re.search(r"[0-9]", sentence) for sentence in defaults[6:8])
    # A digit before a full stop is an ordinal to XTTS-v2's text cleaner in several languages.
    assert not any(re.search(r"[0-9]\.", sentence) for sentence in SENTENCES[language])
    if language not in UNSPACED:
        shorts, longs = defaults[:2], defaults[2:4]
        assert all(3 <= words(sentence) <= 6 for sentence in shorts), [words(s) for s in shorts]
        assert all(20 <= words(sentence) <= 30 for sentence in longs), [words(s) for s in longs]


@pytest.mark.parametrize(("language", "script"), SCRIPTS.items())
def test_sentences_are_in_the_languages_script(language, script):
    for sentence in SENTENCES[language]:
        names = [unicodedata.name(char, "") for char in sentence]
        assert any(name.startswith(script) for name in names), sentence
        assert not re.search(r"[A-Za-z]", sentence), sentence


def test_spanish_and_cjk_punctuation():
    assert all(sentence.startswith("¿") for sentence in SENTENCES["es"][4:6])
    assert all(sentence.endswith("？") for sentence in SENTENCES["zh-cn"][4:6] + SENTENCES["ja"][4:6])
    assert all(sentence.endswith(("。", "？")) for sentence in SENTENCES["zh-cn"] + SENTENCES["ja"])
    assert all(sentence.endswith("؟") for sentence in SENTENCES["ar"][4:6])


def test_defaults_without_training_text():
    for language in languages.CODES:
        assert default_sentences(language) == list(SENTENCES[language][:8])
    assert default_sentences("fr", count=3) == list(SENTENCES["fr"][:3])
    assert default_sentences("de", count=12) == list(SENTENCES["de"])
    assert default_sentences("en", exclude=["Something else entirely.", ""]) == list(SENTENCES["en"][:8])


def test_a_sentence_in_the_training_text_is_replaced_by_a_spare():
    english = SENTENCES["en"]
    short, question = english[1], english[4]  # "The soup is still hot.", "Have you seen my reading glasses anywhere?"
    texts = [
        short,  # exactly
        f"I got home late. {question.upper().rstrip('?')}! Then I went to bed.",  # inside a text, other case and marks
    ]
    chosen = default_sentences("en", texts)
    assert short not in chosen and question not in chosen
    assert chosen == [english[i] for i in (0, 2, 3, 5, 6, 7, 8, 9)]  # the first two spares fill in, in order
    assert len(chosen) == DEFAULT_COUNT


def test_exclusion_ignores_case_and_punctuation_in_other_languages():
    spanish = SENTENCES["es"][4]  # "¿Dónde has dejado las llaves del coche?"
    assert spanish not in default_sentences("es", ["dónde has dejado las llaves del coche"])
    chinese = SENTENCES["zh-cn"][0]  # "今天天气很好。"
    assert chinese not in default_sentences("zh-cn", ["我觉得今天天气很好，我们出去走走吧！"])
    # Part of a sentence in the training text is not the sentence.
    assert SENTENCES["en"][0] in default_sentences("en", ["Please close"])
    # A single string is one training text, not its characters.
    assert default_sentences("en", SENTENCES["en"][0]) == list(SENTENCES["en"][1:9])


def test_fewer_sentences_only_when_the_spares_run_out():
    german = SENTENCES["de"]
    assert default_sentences("de", german[:4]) == list(german[4:12])
    assert default_sentences("de", german[:6]) == list(german[6:12])
    assert default_sentences("de", german) == []
    assert default_sentences("de", german[:10], count=1) == [german[10]]


@pytest.mark.parametrize("language", ["xx", "EN", "zh", "", "english"])
def test_unknown_language(language):
    with pytest.raises(ValueError, match="supported languages are en, es, fr") as error:
        default_sentences(language)
    assert repr(language) in str(error.value)
    assert "zh-cn" in str(error.value) and "hi" in str(error.value)


@pytest.mark.parametrize("count", [0, -1, 13, 100, 2.5, True, "8"])
def test_bad_count(count):
    with pytest.raises(ValueError, match=r"count must be a whole number from 1 to 12, got"):
        default_sentences("en", count=count)


def test_check_sentences_accepts_and_strips():
    assert check_sentences(["  Hello there.  ", "¿Qué tal?"]) == ["Hello there.", "¿Qué tal?"]
    assert check_sentences(("One.",)) == ["One."]
    assert check_sentences(["x" * 300] * 50) == ["x" * 300] * 50
    assert check_sentences([" 今天天气很好。\n"], field="anything") == ["今天天气很好。"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], r"^eval_sentences: must list at least one sentence$"),
        ("One sentence.", r"^eval_sentences: must be a list of sentences, got str$"),
        (None, r"^eval_sentences: must be a list of sentences, got NoneType$"),
        (["A."] * 51, r"^eval_sentences: at most 50 sentences, got 51$"),
        (["Fine.", 7], r"^eval_sentences\[1\]: must be a string, got int 7$"),
        (["Fine.", "Also fine.", None], r"^eval_sentences\[2\]: must be a string, got NoneType"),
        (["Fine.", "   "], r"^eval_sentences\[1\]: is empty$"),
        ([""], r"^eval_sentences\[0\]: is empty$"),
        (["Fine.", "Fine.", "Fine.", "y" * 301], r"^eval_sentences\[3\]: is 301 characters long; at most 300"),
    ],
)  # fmt: skip
def test_check_sentences_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        check_sentences(value)


def test_check_sentences_names_the_field():
    with pytest.raises(ValueError, match=r"^training\.eval_sentences\[0\]: is empty$"):
        check_sentences(["\t"], field="training.eval_sentences")
    assert eval_sentences.MAX_SENTENCES == 50 and eval_sentences.MAX_SENTENCE_CHARS == 300


@pytest.mark.parametrize("language", [code for code in languages.CODES if code != "ja"])
def test_xtts_text_cleaner_reads_every_sentence(language):
    """Every sentence passes coqui-tts's own text cleaner for its language (numbers, symbols,
    abbreviations expanded), which XTTS-v2 runs before it speaks; a sentence it raises on would
    fail every checkpoint's evaluation. Japanese is not cleaned by it (the tokenizer romanises
    Japanese with cutlet instead, ``VoiceBpeTokenizer.preprocess_text``)."""
    from TTS.tts.layers.xtts.tokenizer import multilingual_cleaners

    for sentence in SENTENCES[language]:
        cleaned = multilingual_cleaners(sentence, language.split("-")[0])  # as VoiceBpeTokenizer.encode
        assert cleaned.strip(), sentence
        assert not re.search(r"[0-9]", cleaned), (sentence, cleaned)  # every number became words
