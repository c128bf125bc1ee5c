"""App-wide settings that survive a restart: ``settings.json`` in the data folder.

The Settings tab edits them; the other tabs read them. The file is small JSON written
atomically; unknown keys are ignored (a newer version may add some), a file that is not valid
JSON raises SettingsError naming it, and nothing else is ever lost.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import paths
from engine.config import write_text_atomic

SETTINGS_FILE = "settings.json"


class SettingsError(ValueError):
    """settings.json exists but cannot be read; the message names the file."""


@dataclass
class AppSettings:
    """Settings edited in the Settings tab.

    base_model: XTTS-v2 folder; empty means models/xtts-v2/.
    whisper_backend: default transcription backend ("faster-whisper" or "openai-whisper").
    whisper_model: default Whisper model name or local path; empty means the backend's default.
    language: default language of recordings and generated speech.
    """

    base_model: str = ""
    whisper_backend: str = "faster-whisper"
    whisper_model: str = ""
    language: str = "en"

    def base_model_dir(self) -> str:
        """The base-model folder the app uses: the setting or models/xtts-v2/."""
        return self.base_model or str(paths.default_base_model_dir())


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
