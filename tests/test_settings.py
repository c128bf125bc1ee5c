"""App settings survive a restart (engine/settings.py) and --base-model wins for a session."""

from __future__ import annotations

import pytest

from engine.settings import AppSettings, SettingsError, load_settings, save_settings, settings_path
from webui.app import startup_settings


def test_settings_round_trip_and_defaults(timbre_home):
    assert load_settings() == AppSettings()
    save_settings(AppSettings(base_model="/models/x", whisper_backend="openai-whisper", whisper_model="tiny"))
    loaded = load_settings()
    assert (loaded.base_model, loaded.whisper_backend, loaded.whisper_model) == ("/models/x", "openai-whisper", "tiny")
    assert settings_path().parent == timbre_home


def test_unknown_keys_are_ignored_and_bad_json_names_the_file(timbre_home):
    settings_path().write_text('{"whisper_model": "base", "from_the_future": 1}')
    assert load_settings().whisper_model == "base"
    settings_path().write_text("{not json")
    with pytest.raises(SettingsError, match="settings.json"):
        load_settings()
    # the app still starts, with defaults, and leaves the file for the user to mend
    assert startup_settings().whisper_model == ""
    assert settings_path().read_text() == "{not json"


def test_base_model_argument_overrides_the_saved_folder_for_the_session(timbre_home):
    save_settings(AppSettings(base_model="/saved"))
    assert startup_settings("/from/argument").base_model == "/from/argument"
    assert startup_settings().base_model == "/saved"
    assert load_settings().base_model == "/saved"
