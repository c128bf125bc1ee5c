"""The data folders, and safe conversion of user-typed names into paths inside them.

Layout (all under ``home()``, the project root unless ``TIMBRE_HOME`` is set)::

    voices/<voice>/            the user's recordings (also the reference clips)
    datasets/<voice>/          wavs/, train.csv, validation.csv, transcription.json, report.json
    training/<voice>/<run>/    train.yaml, metrics.jsonl, checkpoints/, train.log
    outputs/<voice>/           generated audio with its settings beside it
    models/                    base models (models/xtts-v2/ by default)

Every function that takes a voice or run name validates it with :func:`check_name`, so a
name such as ``../etc`` can never address a file outside these folders (the path-traversal
bugs of several voice UIs came from joining raw names). Names may be in any script (``Zoë``,
``御坂美琴``): they are NFC-normalised and hold only letters, digits and a few punctuation
marks, never a Windows device name (the project ships ``start.bat``).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from engine.errors import TimbreError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Longest voice or run name, in characters (64 CJK characters are 192 UTF-8 bytes, well
#: under the 255-byte file-name limit of ext4, NTFS and APFS).
MAX_NAME_LENGTH = 64
_PUNCTUATION = " _.-"
#: Names Windows maps to devices whatever their extension ("CON.wav", "nul.txt"). Microsoft's
#: "Naming Files, Paths, and Namespaces" lists COM0-9 and LPT0-9, and the superscript digits
#: ¹ ² ³ count as digits there.
_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"]
)


class InvalidNameError(TimbreError, ValueError):
    """A voice or run name that cannot be used as a folder name."""


def home() -> Path:
    """The folder that holds voices/, datasets/, training/, outputs/ and models/.

    ``$TIMBRE_HOME`` when set (tests point it at a temporary folder), else the project root.
    """
    env = os.environ.get("TIMBRE_HOME")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT


def is_device_name(name: str) -> bool:
    """Whether Windows reads the file name ``name`` as a device (CON, PRN, AUX, NUL, COM1–9,
    LPT1–9), with any extension and in any case: ``"con"``, ``"NUL.txt"``, ``"com1 .wav"``."""
    base = name.split(".", 1)[0].rstrip(" ")
    return base.upper() in _DEVICE_NAMES


def _name_problem(name: str) -> str | None:
    """Why the NFC-normalised, stripped ``name`` is not a safe folder name, or None."""
    allowed = "use letters, digits, spaces, '_', '-' or '.'"
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"use 1-{MAX_NAME_LENGTH} characters"
    for char in name:
        if not (unicodedata.category(char)[0] in "LMN" or char in _PUNCTUATION):
            described = unicodedata.name(char, "").lower() or f"U+{ord(char):04X}"
            return f"{char!r} ({described}) is not allowed: {allowed}"
    if unicodedata.category(name[0])[0] not in "LN":
        return "start with a letter or digit"
    if name.endswith((".", " ")):
        return "do not end with a dot or space (Windows drops them)"
    if ".." in name:
        return "do not use '..'"
    if is_device_name(name):
        return "that is a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    return None


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a voice or run name as :func:`check_name` returns it."""
    return isinstance(name, str) and name == unicodedata.normalize("NFC", name) and _name_problem(name) is None


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` stripped and NFC-normalised if it is a safe single folder name, else raise
    InvalidNameError (the message names ``what``, the name and the reason).

    Allowed: 1–64 characters of Unicode letters, digits and combining marks (any script), space,
    ``_``, ``-`` and ``.``; starting with a letter or digit; not ending with a space or dot
    (Windows drops those); no ``..``; not a Windows device name (:func:`is_device_name`).
    Separators other than the plain space, control and format characters (such as the
    right-to-left override) are refused. NFC (Unicode Standard Annex #15) makes ``"Zoe\u0308"``
    and ``"Zoë"`` the same folder on every file system.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be text, got {type(name).__name__}")
    stripped = unicodedata.normalize("NFC", name.strip())
    problem = _name_problem(stripped)
    if problem:
        raise InvalidNameError(f"invalid {what} {name!r}: {problem}")
    return stripped


def safe_file_name(name: str) -> str:
    """``name`` with ``_`` added to its stem when it is a Windows device name (``CON.wav`` →
    ``CON_.wav``), else unchanged. For stored upload names, which are already reduced to safe
    characters."""
    if not is_device_name(name):
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem.rstrip(' ')}_{dot}{ext}"


def _inside(base: Path, *names: str) -> Path:
    """``base/names…``, checked lexically (names are already single safe components), so a
    voice folder that is a symbolic link to the user's recordings elsewhere still works."""
    path = Path(os.path.normpath(base.joinpath(*names)))
    if Path(os.path.normpath(base)) not in path.parents:
        raise InvalidNameError(f"{path} is outside {base}")
    return path


def voices_dir() -> Path:
    return home() / "voices"


def datasets_dir() -> Path:
    return home() / "datasets"


def training_dir() -> Path:
    return home() / "training"


def outputs_dir() -> Path:
    return home() / "outputs"


def models_dir() -> Path:
    return home() / "models"


def voice_dir(voice: str) -> Path:
    """``voices/<voice>/``: the user's recordings. Raises InvalidNameError."""
    return _inside(voices_dir(), check_name(voice, "voice name"))


def dataset_dir(voice: str) -> Path:
    """``datasets/<voice>/``. Raises InvalidNameError."""
    return _inside(datasets_dir(), check_name(voice, "voice name"))


def voice_training_dir(voice: str) -> Path:
    """``training/<voice>/``: the runs of one voice. Raises InvalidNameError."""
    return _inside(training_dir(), check_name(voice, "voice name"))


def run_dir(voice: str, run: str) -> Path:
    """``training/<voice>/<run>/``. Raises InvalidNameError."""
    return _inside(training_dir(), check_name(voice, "voice name"), check_name(run, "run name"))


def output_dir(voice: str) -> Path:
    """``outputs/<voice>/``: generated speech. Raises InvalidNameError."""
    return _inside(outputs_dir(), check_name(voice, "voice name"))


def default_base_model_dir(family: str = "xtts") -> Path:
    """Where the Settings tab downloads a family's base model: ``models/xtts-v2/`` (XTTS-v2) or
    ``models/f5-tts-v1/`` (F5-TTS v1 Base and its Vocos vocoder)."""
    return models_dir() / {"xtts": "xtts-v2", "f5": "f5-tts-v1"}[family]


def list_voices() -> list[str]:
    """Names of the voices that have a recordings folder or a dataset, sorted."""
    names: set[str] = set()
    for base in (voices_dir(), datasets_dir()):
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if p.is_dir() and is_valid_name(p.name))
    return sorted(names)


def list_runs(voice: str) -> list[str]:
    """Names of the run folders of ``voice`` that hold a train.yaml, sorted."""
    base = voice_training_dir(voice)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "train.yaml").is_file())
