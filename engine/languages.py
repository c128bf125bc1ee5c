"""The languages XTTS-v2 speaks, their names, and a dataset's language in XTTS-v2's codes.

XTTS-v2 speaks the 17 languages of coqui-tts's ``XttsConfig.languages`` (0.28,
``TTS/tts/configs/xtts_config.py``, and the model's config.json); each has a ``[code]`` text
token. Its codes are ISO 639-1 except Mandarin, ``"zh-cn"``, where Whisper says ``"zh"``
(coqui's tokenizer maps one to the other the same way in ``VoiceBpeTokenizer.encode``).

The dataset step records the language of the recordings in ``datasets/<voice>/report.json``
under ``"language"`` as a Whisper code (the majority language Whisper detected, or the one
asked for); :func:`dataset_language` reads it back as an XTTS-v2 code, so ``engine config``,
the Training form and Generate default to the language the voice was recorded in.
"""

from __future__ import annotations

import json

from engine import paths
from engine.errors import TimbreError

#: XTTS-v2's language codes (in its config's order) → English names.
LANGUAGES: dict[str, str] = {
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "de": "German",
    "it": "Italian",
    "pt": "Portuguese",
    "pl": "Polish",
    "tr": "Turkish",
    "ru": "Russian",
    "nl": "Dutch",
    "cs": "Czech",
    "ar": "Arabic",
    "zh-cn": "Chinese",
    "hu": "Hungarian",
    "ko": "Korean",
    "ja": "Japanese",
    "hi": "Hindi",
}
#: The codes alone, in the same order.
CODES: tuple[str, ...] = tuple(LANGUAGES)
#: The language used when nothing says otherwise (TrainConfig's default, no dataset language).
DEFAULT_LANGUAGE = "en"

#: Whisper's code where it differs from XTTS-v2's.
_WHISPER_TO_XTTS = {"zh": "zh-cn"}
_XTTS_TO_WHISPER = {xtts: whisper for whisper, xtts in _WHISPER_TO_XTTS.items()}
_BY_NAME = {name.lower(): code for code, name in LANGUAGES.items()}


class LanguageError(TimbreError, ValueError):
    """A language XTTS-v2 cannot speak; the message names the field or file and the value."""


def label(code: str) -> str:
    """A readable label for an XTTS-v2 code, e.g. ``"Spanish (es)"``; an unknown code as is."""
    return f"{LANGUAGES[code]} ({code})" if code in LANGUAGES else code


def choices() -> list[tuple[str, str]]:
    """(label, code) pairs of the 17 languages for a dropdown, e.g. ``("Spanish (es)", "es")``."""
    return [(label(code), code) for code in CODES]


def to_xtts(whisper_code: str | None) -> str | None:
    """The XTTS-v2 code of a language named by Whisper, or None if XTTS-v2 cannot speak it.

    Accepts Whisper's codes (``"es"``, ``"zh"`` → ``"zh-cn"``), XTTS-v2's own codes, a code with
    a region (``"pt-BR"`` → ``"pt"``, ``"zh_CN"`` → ``"zh-cn"``) and the English names of
    :data:`LANGUAGES` (``"Spanish"``), in any case. None for None, ``""``, ``"auto"`` and
    languages outside the 17 (e.g. Whisper's ``"sv"``).
    """
    if not isinstance(whisper_code, str):
        return None
    text = whisper_code.strip().lower().replace("_", "-")
    if text in LANGUAGES:
        return text
    if text in _BY_NAME:
        return _BY_NAME[text]
    base = text.split("-")[0]
    base = _WHISPER_TO_XTTS.get(base, base)
    return base if base in LANGUAGES else None


def to_whisper(xtts_code: str) -> str:
    """Whisper's code of an XTTS-v2 code (``"zh-cn"`` → ``"zh"``; the others are the same)."""
    return _XTTS_TO_WHISPER.get(xtts_code, xtts_code)


def recorded_language(voice: str | None) -> str | None:
    """The language saved in ``datasets/<voice>/report.json`` under ``"language"``, as written
    (a Whisper code such as ``"es"`` or ``"zh"``), or None: no voice, an invalid voice name, no
    dataset or report, an unreadable report, or no language recorded (None or ``"auto"``: an old
    report, or one made with automatic detection before the dataset step recorded what it found)."""
    if not voice:
        return None
    try:
        report = json.loads((paths.dataset_dir(voice) / "report.json").read_text(encoding="utf-8"))
    except (paths.InvalidNameError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    language = report.get("language") if isinstance(report, dict) else None
    if not isinstance(language, str) or language.strip().lower() in ("", "auto"):
        return None
    return language.strip()


def dataset_language(voice: str | None) -> str | None:
    """The voice's dataset language as an XTTS-v2 code (``"zh"`` in report.json → ``"zh-cn"``),
    or None when :func:`recorded_language` finds none or XTTS-v2 cannot speak it."""
    return to_xtts(recorded_language(voice))


def default_language(voice: str | None) -> str:
    """The language a new run or a generation of ``voice`` uses when none is chosen: the
    dataset's language (:func:`dataset_language`), else :data:`DEFAULT_LANGUAGE`.

    Raises LanguageError when the dataset records a language XTTS-v2 cannot speak (training
    such a dataset as English would teach the model wrong text).
    """
    recorded = recorded_language(voice)
    if recorded is None:
        return DEFAULT_LANGUAGE
    code = to_xtts(recorded)
    if code is None:
        raise LanguageError(
            f"language: the dataset of {voice!r} is in {recorded!r} (datasets/{voice}/report.json), which "
            f"XTTS-v2 cannot speak; it speaks {', '.join(CODES)}"
        )
    return code
