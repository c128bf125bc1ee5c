"""The data folders, and safe conversion of user-typed names into paths inside them.

Layout (all under ``home()``, the project root unless ``TIMBRE_HOME`` is set)::

    voices/<voice>/            the user's recordings (also the reference clips)
    datasets/<voice>/          wavs/, train.csv, validation.csv, transcription.json, report.json
    training/<voice>/<run>/    train.yaml, metrics.jsonl, checkpoints/, train.log
    outputs/<voice>/           generated audio with its settings beside it
    models/                    base models (models/xtts-v2/ by default)

Every function that takes a voice or run name validates it with :func:`check_name`, so a
name such as ``../etc`` can never address a file outside these folders (the path-traversal
bugs of several voice UIs came from joining raw names).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")


class InvalidNameError(ValueError):
    """A voice or run name that cannot be used as a folder name."""


def home() -> Path:
    """The folder that holds voices/, datasets/, training/, outputs/ and models/.

    ``$TIMBRE_HOME`` when set (tests point it at a temporary folder), else the project root.
    """
    env = os.environ.get("TIMBRE_HOME")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` stripped if it is a safe single folder name, else raise InvalidNameError.

    Allowed: 1–64 characters, letters, digits, space, ``_``, ``-`` and ``.``, starting with a
    letter or digit, not ending with a space or dot (Windows drops those) and not ``..``.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be text, got {type(name).__name__}")
    stripped = name.strip()
    if not _NAME.match(stripped) or stripped.endswith((".", " ")) or ".." in stripped:
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, spaces, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return stripped


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


def default_base_model_dir() -> Path:
    """``models/xtts-v2/``: where the Settings tab downloads the XTTS-v2 files."""
    return models_dir() / "xtts-v2"


def list_voices() -> list[str]:
    """Names of the voices that have a recordings folder or a dataset, sorted."""
    names: set[str] = set()
    for base in (voices_dir(), datasets_dir()):
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if p.is_dir() and _NAME.match(p.name))
    return sorted(names)


def list_runs(voice: str) -> list[str]:
    """Names of the run folders of ``voice`` that hold a train.yaml, sorted."""
    base = voice_training_dir(voice)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "train.yaml").is_file())
