"""Model families behind one seam (engine.models.family): ``xtts`` (XTTS-v2, coqui-tts) and
``f5`` (F5-TTS v1, f5-tts). :func:`get_family` by name, :func:`family_of` by a base-model
folder's files. A family package is imported only when it is asked for, so the app starts without
importing f5-tts.

The XTTS-v2 base-model names (``load_xtts``, ``require_base_model``, ``SAMPLE_RATE``, ...) are
re-exported from ``engine.models.xtts.files`` for the callers that predate the seam.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from engine.errors import TimbreError
from engine.models.family import ModelFamily, Trainee
from engine.models.xtts.files import (
    ALL_FILES,
    CODE_STRIDE,
    HUB_REPO,
    LANGUAGES,
    LICENSE_NAME,
    LICENSE_SUMMARY,
    OPTIONAL_FILES,
    OUTPUT_SAMPLE_RATE,
    RANDOM_MODEL_MARKER,
    RANDOM_MODEL_SIZES,
    REQUIRED_FILES,
    SAMPLE_RATE,
    BaseModelError,
    BaseModelStatus,
    RandomModelSize,
    base_model_status,
    build_dvae,
    download_base_model,
    dvae_mel_transform,
    is_random_model,
    load_dvae,
    load_mel_stats,
    load_xtts,
    load_xtts_config,
    random_model_config,
    random_model_tokenizer,
    require_base_model,
    style_mel_transform,
    write_random_model,
    write_tiny_model,
)

#: Family name -> the package holding its ``FAMILY``. The first is the default.
FAMILIES = {"xtts": "engine.models.xtts", "f5": "engine.models.f5"}
DEFAULT_FAMILY = "xtts"


class UnknownFamilyError(TimbreError, ValueError):
    """A family name that is not one of :data:`FAMILIES`."""


def get_family(name: str) -> ModelFamily:
    """The :class:`ModelFamily` called ``name``. Raises UnknownFamilyError naming the choices."""
    if name not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_of(directory: str | os.PathLike) -> str:
    """The family whose files ``directory`` holds; :data:`DEFAULT_FAMILY` when none matches (an
    empty or missing folder is an XTTS-v2 folder still to be downloaded)."""
    directory = Path(directory)
    for name in FAMILIES:
        if name != DEFAULT_FAMILY and get_family(name).detect(directory):
            return name
    return DEFAULT_FAMILY


__all__ = [
    "ALL_FILES", "CODE_STRIDE", "DEFAULT_FAMILY", "FAMILIES", "HUB_REPO", "LANGUAGES", "LICENSE_NAME",
    "LICENSE_SUMMARY", "OPTIONAL_FILES", "OUTPUT_SAMPLE_RATE", "RANDOM_MODEL_MARKER", "RANDOM_MODEL_SIZES",
    "REQUIRED_FILES", "SAMPLE_RATE", "BaseModelError", "BaseModelStatus", "ModelFamily", "RandomModelSize",
    "Trainee", "UnknownFamilyError", "base_model_status", "build_dvae", "download_base_model", "dvae_mel_transform",
    "family_of", "get_family", "is_random_model", "load_dvae", "load_mel_stats", "load_xtts", "load_xtts_config",
    "random_model_config", "random_model_tokenizer", "require_base_model", "style_mel_transform",
    "write_random_model", "write_tiny_model",
]  # fmt: skip
