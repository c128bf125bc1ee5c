"""Voice and run names: Unicode letters and digits work end to end (NFC-normalised), on a data
folder whose path holds spaces; Windows device names and unsafe characters are refused."""

from __future__ import annotations

import unicodedata

import pytest

from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from engine.dataset.prepare import prepare_dataset
from engine.generate.export import export_model
from engine.generate.synthesis import generate_speech
from engine.training import process
from webui.tabs import dataset as dataset_tab
from webui.tabs import training_plots as tplots

DEVICE_NAMES = ["CON", "con", "Prn", "AUX", "NUL", "nul.txt", "CON.wav", "com1", "COM9.tar.gz", "LPT1", "lpt9",
                "COM¹", "NUL ", "aux .wav"]  # fmt: skip
UNSAFE = ["../etc", "a/b", "a\\b", ".hidden", "a..b", "x.", "", " ", "a\tb", "a\nb", "a\u202eb", "a\u200bb",
          "a\u00a0b", "$(x)", "`x`", "a;b", "a|b", 'a"b', "a:b", "a*b", "\u0301a", "x" * 65]  # fmt: skip


@pytest.mark.parametrize("name", DEVICE_NAMES + UNSAFE)
def test_unsafe_and_device_names_are_refused(name, timbre_home):
    with pytest.raises(paths.InvalidNameError):
        paths.check_name(name)
    with pytest.raises(paths.InvalidNameError):
        dataset_tab.create_voice(name)
    if name:  # an empty run name means "not set yet"
        with pytest.raises(ConfigError):
            TrainConfig(voice="anna", run=name)
    assert not any(timbre_home.iterdir()), "nothing was created"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [("Zoë", "Zoë"), ("Zoe\u0308", "Zoë"), ("御坂美琴", "御坂美琴"), (" Ada Lovelace ", "Ada Lovelace"),
     ("किताब", "किताब"), ("Ørsted-2.1", "Ørsted-2.1"), ("COM10", "COM10"), ("CONSOLE", "CONSOLE"), ("x" * 64, "x" * 64)],
)  # fmt: skip
def test_names_in_any_script_are_accepted_nfc(typed, stored):
    assert paths.check_name(typed) == stored and unicodedata.is_normalized("NFC", stored)


def test_device_names_are_renamed_on_upload():
    assert [dataset_tab.safe_filename(n) for n in ("CON.wav", "nul.WAV", "Com1.flac", "aux", "console.wav")] == [
        "CON_.wav",
        "nul_.wav",
        "Com1_.flac",
        "aux_",
        "console.wav",
    ]


def test_plot_ids_keep_names_apart():
    assert len({tplots.slug(n) for n in ("Zoë", "Zoé", "Zoe", "御坂美琴", "御坂")}) == 5


@pytest.mark.parametrize("typed", ["Zoe\u0308", "御坂美琴"])
def test_a_unicode_voice_end_to_end(typed, speech_voice, tiny_model, faster_whisper_model_path, tmp_path, monkeypatch):
    """Create the voice (typed decomposed for Zoë), upload, transcribe, train through the
    launcher (a subprocess whose argv holds the name and the spaces), generate, export."""
    home = tmp_path / "data folder with spaces"
    monkeypatch.setenv("TIMBRE_HOME", str(home))
    voice = dataset_tab.create_voice(typed)
    assert voice == unicodedata.normalize("NFC", typed) and paths.list_voices() == [voice]
    saved, _ = dataset_tab.save_recordings(voice, [str(speech_voice.folder / name) for name in speech_voice.texts])
    assert len(saved) == len(speech_voice.texts)
    report = prepare_dataset(voice, whisper_model=faster_whisper_model_path, language="en", log=lambda _: None)
    assert report.clips >= 4

    run = f"{voice} first run"
    # Four recordings make about four clips, one for validation: allow three to train on.
    settings = dict(base_model=str(tiny_model), epochs=1, batch_size=2, min_training_clips=3)
    config = TrainConfig(voice=voice, run=run, **settings).save_new()
    assert config == home / "training" / voice / run / "train.yaml"
    process.start_training(config)
    assert process.wait_for_exit(config.parent, timeout=300) == 0, runs.log_tail(config.parent, 40)
    status = runs.run_status(voice, run)
    assert (status.voice, status.run, status.state) == (voice, run, "finished")
    assert paths.list_runs(voice) == [run]

    spoken = generate_speech(voice, "Hello there.", run=run, language="en", log=lambda _: None)
    assert spoken.parent == home / "outputs" / voice and spoken.stat().st_size > 1000
    exported = export_model(voice, run, log=lambda _: None)
    assert exported.is_file() and voice in exported.name
