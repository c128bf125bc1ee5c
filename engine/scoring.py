"""How close a transcript is to a reference text: character and word error rates.

Used by the dataset step (a clip's text against an independent re-transcription of its audio)
and by checkpoint evaluation (generated speech transcribed by Whisper against the sentence
it was asked to say), as in the Seed-TTS evaluation protocol (WER with Whisper).

Texts are normalised before they are compared: Whisper's own normalisers
(``whisper.normalizers``), ``EnglishTextNormalizer`` for English (spelling variants, numbers,
contractions) and ``BasicTextNormalizer`` for every other language (lower case, no
punctuation or symbols). The edit distances are jiwer's (Levenshtein alignment).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _english_normaliser():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.lru_cache(maxsize=1)
def _basic_normaliser():
    from whisper.normalizers import BasicTextNormalizer

    return BasicTextNormalizer()


def normalise(text: str, language: str | None = "en") -> str:
    """``text`` as compared: Whisper's ``EnglishTextNormalizer`` when ``language`` is ``"en"``,
    else its ``BasicTextNormalizer``; runs of white space become one space."""
    normaliser = _english_normaliser() if (language or "").lower().startswith("en") else _basic_normaliser()
    return " ".join(normaliser(str(text or "")).split())


def character_error_rate(reference: str, hypothesis: str, language: str | None = "en") -> float:
    """CER: character edits (substitutions + deletions + insertions) turning the normalised
    ``reference`` into the normalised ``hypothesis``, divided by the reference's characters
    (spaces count). 0 for identical texts; may exceed 1 when the hypothesis is much longer;
    1.0 when the reference is empty and the hypothesis is not, 0.0 when both are empty."""
    import jiwer

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp)) if hyp else 1.0


def word_error_rate(reference: str, hypothesis: str, language: str | None = "en") -> float:
    """WER: word edits turning the normalised ``reference`` into the normalised
    ``hypothesis``, divided by the reference's words; the empty cases as
    :func:`character_error_rate`."""
    import jiwer

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0
