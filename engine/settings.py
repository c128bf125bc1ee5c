"""App-wide settings that survive a restart: ``settings.json`` in the data folder.

The Settings tab edits them; the other tabs read them. The file is small JSON written
atomically; unknown keys are ignored (a newer version may add some), a file that is not valid
JSON raises SettingsError naming it, and nothing else is ever lost.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import paths
from engine.errors import TimbreError
from engine.files import write_text_atomic

SETTINGS_FILE = "settings.json"


class SettingsError(TimbreError, ValueError):
    """settings.json exists but cannot be read; the message names the file."""


@dataclass
class AppSettings:
    """Settings edited in the Settings tab.

    base_model: XTTS-v2 folder; empty means models/xtts-v2/.
    whisper_backend: default transcription backend ("faster-whisper" or "openai-whisper").
    whisper_model: default Whisper model name or local path; empty means the backend's default.
    language: default language of recordings and generated speech.
    max_file_size: largest upload the web server accepts, per file (:func:`parse_size`:
        "500mb", "4gb"); a larger one is refused with HTTP 413. Read at start.
    """

    base_model: str = ""
    whisper_backend: str = "faster-whisper"
    whisper_model: str = ""
    language: str = "en"
    max_file_size: str = "4gb"

    def base_model_dir(self) -> str:
        """The base-model folder the app uses: the setting or models/xtts-v2/."""
        return self.base_model or str(paths.default_base_model_dir())


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``"500mb"``, ``"4 GB"``, ``"1.5g"``, ``"300KiB"`` or ``1048576``.

    Units are binary (1 kb = 1024 bytes), as Gradio's ``max_file_size`` counts them; case and
    spaces do not matter; no unit means bytes. Raises SettingsError (a ValueError) for anything
    else and for a size under 1 byte.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise SettingsError(f"not a size: {text!r} (write it like 500mb or 4gb)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise SettingsError(f"a size must be at least 1 byte, got {text!r}")
    return size


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it at or above 1: ``"4 GB"``, ``"1.5 GB"``, ``"500 MB"``."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = _UNITS[unit[0].lower()]
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def settings_path() -> Path:
    return paths.home() / SETTINGS_FILE


def load_settings() -> AppSettings:
    """The saved settings, or the defaults when there is no file. Raises SettingsError."""
    path = settings_path()
    if not path.is_file():
        return AppSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read as settings ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(AppSettings)}
    return AppSettings(**{k: str(v) for k, v in data.items() if k in known and v is not None})


def save_settings(settings: AppSettings) -> Path:
    """Write the settings atomically; returns the file."""
    path = settings_path()
    write_text_atomic(path, json.dumps(asdict(settings), indent=2) + "\n")
    return path
