"""The web UI without a browser: the app builds, and the tabs' handler logic (plain functions)
does the right thing, with the slow engine calls monkeypatched where they would train or synthesise."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import yaml

from engine import dataset as engine_dataset
from engine import generate as engine_generate
from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from webui.app import build_app, parse_args
from webui.tabs import AppSettings, LogLines, TabContext, engine_errors, named, progress_callable
from webui.tabs import dataset as dataset_tab
from webui.tabs import generate as generate_tab
from webui.tabs import settings as settings_tab
from webui.tabs import training as training_tab

ROOT = Path(__file__).resolve().parent.parent


def default_form() -> dict:
    """The Training form's values as the page first shows them."""
    defaults = TrainConfig()
    return {f.name: training_tab.to_form_value(f.name, getattr(defaults, f.name)) for f in training_tab.form_fields()}


def write_dataset(voice: str, clips: int = 3) -> Path:
    """datasets/<voice>/ with tiny silent clips, csv files and a report, as engine.dataset writes it."""
    folder = paths.dataset_dir(voice)
    (folder / "wavs").mkdir(parents=True)
    rows, per_clip = [], []
    for i in range(clips):
        name = f"wavs/take_{i:05d}.wav"
        (folder / name).write_bytes(b"RIFF")
        rows.append(f"{name}|Sentence number {i}.|{voice}")
        per_clip.append({"audio_file": name, "duration": 1.5 + i})
    header = "audio_file|text|speaker_name\n"
    (folder / "train.csv").write_text(header + "\n".join(rows[:-1]) + "\n")
    (folder / "validation.csv").write_text(header + rows[-1] + "\n")
    report = {
        "recordings": 2,
        "backend": "faster-whisper",
        "model": "tiny.en",
        "skipped": [{"file": "notes.wav", "reason": "cannot be decoded as audio"}],
        "dropped": [{"file": "take.wav", "start": 0.0, "end": 0.4, "text": "uh", "reason": "too short"}],
        "per_clip": per_clip,
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


# --- the app ---------------------------------------------------------------------------------


def test_app_builds_with_tabs_and_stable_ids(timbre_home):
    demo = build_app(base_model=timbre_home / "model")
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for tab in ("dataset", "training", "generate", "settings"):
        assert f"tab-{tab}" in ids
    for elem_id in (
        "dataset-voice", "dataset-upload", "dataset-transcribe", "dataset-clips", "dataset-skipped",
        "training-yaml", "training-start", "training-stop", "training-status", "training-plot-text",
        "training-plot-mel", "training-plot-validation", "training-log", "train-epochs", "train-batch-size",
        "generate-run", "generate-checkpoint", "generate-button", "generate-audio", "generate-outputs",
        "settings-base-model", "settings-accept", "settings-download", "settings-license",
    ):  # fmt: skip
        assert elem_id in ids, elem_id
    assert any(isinstance(block, gr.Timer) for block in demo.blocks.values())


def test_importing_builds_nothing_and_cli_parses():
    code = "import gradio, webui.app, webui.tabs.training; print(len(gradio.context.Context.root_block or []))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    args = parse_args(["--port", "7999", "--base-model", "/models/x"])
    assert (args.host, args.port, args.base_model) == ("127.0.0.1", 7999, "/models/x")


def test_engine_errors_become_gradio_errors():
    with pytest.raises(gr.Error, match="Transcription: no recordings"):
        with engine_errors("Transcription"):
            raise engine_dataset.DatasetError("no recordings")
    with pytest.raises(KeyboardInterrupt):
        with engine_errors("x"):
            raise KeyboardInterrupt
    seen = []
    report = progress_callable(lambda fraction, desc: seen.append((fraction, desc)))
    report(1.5, "done")
    report(-1, "start")
    assert seen == [(1.0, "done"), (0.0, "start")]
    log = LogLines()
    log("a")
    log("b")
    assert log.text() == "a\nb"
    first, second = gr.Textbox(render=False), gr.Number(render=False)
    assert named({first: "x", second: 2}, {"text": first, "number": second, "absent": gr.Checkbox(render=False)}) == {
        "text": "x",
        "number": 2,
    }


# --- Dataset tab -----------------------------------------------------------------------------


def test_create_voice_checks_the_name(timbre_home):
    assert dataset_tab.create_voice(" anna ") == "anna"
    assert (timbre_home / "voices" / "anna").is_dir()
    for bad in ("", "../etc", ".hidden", "a/b"):
        with pytest.raises(paths.InvalidNameError):
            dataset_tab.create_voice(bad)


def test_save_recordings_never_overwrites(timbre_home, tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "My Take #1.WAV").write_bytes(b"first")
    (upload / "notes.txt").write_text("not audio")
    saved, notes = dataset_tab.save_recordings("anna", [str(upload / "My Take #1.WAV"), str(upload / "notes.txt")])
    assert saved == ["My_Take_1.wav"]
    assert "notes.txt" in notes[0] and "not a supported audio file" in notes[0]

    # The same content again is skipped; different content under the same name gets a suffix.
    saved, notes = dataset_tab.save_recordings("anna", [str(upload / "My Take #1.WAV")])
    assert saved == [] and "already in anna" in notes[0]
    other = tmp_path / "other" / "My Take #1.wav"
    other.parent.mkdir()
    other.write_bytes(b"second")
    saved, _ = dataset_tab.save_recordings("anna", [str(other)])
    assert saved == ["My_Take_1-2.wav"]
    folder = timbre_home / "voices" / "anna"
    assert (folder / "My_Take_1.wav").read_bytes() == b"first"
    assert (folder / "My_Take_1-2.wav").read_bytes() == b"second"
    assert list(dataset_tab.recordings_table("anna")["file"]) == ["My_Take_1-2.wav", "My_Take_1.wav"]


def test_safe_filename():
    assert dataset_tab.safe_filename("../../etc/passwd.wav") == "passwd.wav"
    assert dataset_tab.safe_filename("..wav") == "recording.wav"
    assert dataset_tab.safe_filename("Émile — take 2.MP3") == "mile_take_2.mp3"


def test_dataset_view_reads_csv_and_report(timbre_home):
    summary, clips, skipped = dataset_tab.dataset_view("anna")
    assert "no dataset yet" in summary and clips.empty and skipped.empty
    folder = write_dataset("anna")
    summary, clips, skipped = dataset_tab.dataset_view("anna")
    assert "3 clips (2 train, 1 validation)" in summary and "tiny.en" in summary
    assert list(clips["split"]) == ["train", "train", "validation"]
    assert list(clips["seconds"]) == [1.5, 2.5, 3.5]
    assert list(skipped["file"]) == ["notes.wav", "take.wav"]
    assert "too short" in skipped["reason"].iloc[1]
    assert dataset_tab.clip_path("anna", "wavs/take_00000.wav") == str((folder / "wavs/take_00000.wav").resolve())
    with pytest.raises(ValueError):
        dataset_tab.clip_path("anna", "../../voices/anna/x.wav")


def test_transcription_passes_the_form(timbre_home, monkeypatch):
    calls = {}
    monkeypatch.setattr(engine_dataset, "prepare_dataset", lambda voice, **kw: calls.update(voice=voice, **kw) or "r")
    form = {"voice": "anna", "backend": "openai-whisper", "whisper_model": "  ", "language": "auto"}
    assert dataset_tab.run_transcription({**form, "validation_fraction": 0.2}) == "r"
    assert calls["voice"] == "anna" and calls["backend"] == "openai-whisper"
    assert calls["whisper_model"] is None and calls["language"] is None and calls["validation_fraction"] == 0.2
    with pytest.raises(ValueError, match="choose or create a voice"):
        dataset_tab.run_transcription({**form, "voice": None})


# --- Training tab ----------------------------------------------------------------------------


def test_form_covers_every_config_field_once():
    names = [name for _, fields, _ in training_tab.sections() for name in fields]
    expected = {f.name for f in dataclasses.fields(TrainConfig)} - set(training_tab.SELECTOR_FIELDS)
    assert sorted(names) == sorted(expected)


def test_form_to_config_round_trip():
    form = default_form()
    assert training_tab.form_to_config(form, "anna", "run-1") == TrainConfig(voice="anna", run="run-1")
    form.update(milestones="2, 4", gpus="0, 1", epochs=6.0, batch_size=4, freeze=["text_embedding"], learning_rate=1e-5)
    config = training_tab.form_to_config(form, "anna", "run-1")
    assert config.milestones == [2, 4] and config.gpus == [0, 1] and config.epochs == 6
    assert config.freeze == ["text_embedding"] and config.learning_rate == 1e-5
    assert training_tab.form_to_config({**form, "gpus": "2"}, "anna", "r").gpus == 2
    with pytest.raises(ConfigError, match="epochs: must be a whole number"):
        training_tab.form_to_config({**form, "epochs": 2.5}, "anna", "r")
    with pytest.raises(ConfigError, match="milestones"):
        training_tab.form_to_config({**form, "milestones": "two"}, "anna", "r")


def test_yaml_preview_shows_the_yaml_or_the_error():
    form = default_form()
    text = training_tab.yaml_preview({**form, "epochs": 2}, "anna", "run-1")
    assert TrainConfig.from_dict(yaml.safe_load(text)).epochs == 2
    broken = training_tab.yaml_preview({**form, "batch_size": 3, "gradient_accumulation": 2}, "anna", "run-1")
    assert broken.startswith("# Not a valid configuration") and "batch_size" in broken
    assert "invalid run" in training_tab.yaml_preview(form, "anna", "../x")


def test_start_new_run_then_resume(timbre_home, monkeypatch):
    started = []
    monkeypatch.setattr(training_tab.process, "start_training", lambda path: started.append(Path(path)) or 123)
    form = {**default_form(), "epochs": 2}
    with pytest.raises(FileNotFoundError, match="no dataset"):
        training_tab.start_run(form, "anna", "run-1", "/models/tiny")
    assert not (timbre_home / "training").exists()

    write_dataset("anna")
    folder, resumed = training_tab.start_run(form, "anna", "run-1", "/models/tiny")
    assert not resumed and folder == paths.run_dir("anna", "run-1")
    config = TrainConfig.load(folder / "train.yaml")
    assert (config.epochs, config.base_model) == (2, "/models/tiny")

    # Start on an existing run resumes it with its own train.yaml (the form is not written).
    folder, resumed = training_tab.start_run({**form, "epochs": 9}, "anna", "run-1", "")
    assert resumed and TrainConfig.load(folder / "train.yaml").epochs == 2
    assert started == [folder / "train.yaml"] * 2
    assert training_tab.suggest_run_name("anna") == "run-2"


def test_tail_metrics_reads_from_an_offset(timbre_home):
    folder = TrainConfig(voice="anna", run="r").save_new().parent
    rows = [
        {"step": 1, "epoch": 1, "split": "train", "loss_text_ce": 3.0, "loss_mel_ce": 5.0, "loss": 5.03},
        {"event": "checkpoint", "step": 1},
        {"step": 1, "epoch": 1, "split": "validation", "loss_text_ce": 3.1, "loss_mel_ce": 5.1, "loss": 5.13},
    ]
    metrics = folder / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + '{"step": 2, "spl')  # last line half-written
    tail, grew = training_tab.tail_metrics(None, "anna", "r")
    assert grew and len(tail["rows"]) == 1 and tail["offset"] > 0
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tail, grew = training_tab.tail_metrics(tail, "anna", "r")
    assert grew and [r["split"] for r in tail["rows"]] == ["train", "validation"]
    assert training_tab.tail_metrics(tail, "anna", "r") == (tail, False)
    # Another run starts from 0.
    assert training_tab.tail_metrics(tail, "anna", "other")[0] == training_tab.new_tail("anna", "other")

    text, mel, validation = training_tab.loss_frames(tail["rows"])
    assert list(text["value"]) == [3.0] and list(mel["value"]) == [5.0]
    assert list(validation["series"]) == ["text CE", "mel CE"] and list(validation["value"]) == [3.1, 5.1]
    assert training_tab.loss_frames([]) == (None, None, None)  # never an empty frame


def test_monitor_and_status_line(timbre_home):
    assert training_tab.monitor(None, None)[2] is False
    assert "new run" in training_tab.monitor("anna", "r")[0]
    assert "invalid run name" in training_tab.monitor("anna", "run.")[0]  # typed half-way: no error toast
    assert training_tab.tail_metrics(None, "anna", "../x") == (training_tab.new_tail("anna", "../x"), False)
    config = TrainConfig(voice="anna", run="r")
    folder = config.save_new().parent
    runs.write_status(folder, {"state": "failed", "step": 3, "epoch": 1, "message": "CUDA out of memory"})
    status, log, running = training_tab.monitor("anna", "r")
    assert status.startswith("**failed**") and "step 3" in status and "Hint:" in status
    assert running is False and log == ""
    line = training_tab.describe_status(
        runs.RunStatus("anna", "r", "running", 5, 1, 10, "training", None, 1, 4, 1, 2.0, 75.0)
    )
    assert line.startswith("**running** · step 5 / 10 · epoch 1 · ETA 0:01:15 · latest checkpoint step-0000004")


# --- Generate tab ----------------------------------------------------------------------------


def test_generation_choices_and_settings(timbre_home):
    assert generate_tab.run_choices("anna") == [engine_generate.BASE_MODEL]
    folder = TrainConfig(voice="anna", run="r").save_new().parent
    for step, complete in ((2, True), (4, True), (6, False)):
        checkpoint = folder / "checkpoints" / runs.checkpoint_name(step)
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "COMPLETE").write_text("")
    assert generate_tab.run_choices("anna") == [engine_generate.BASE_MODEL, "r"]
    assert generate_tab.checkpoint_choices("anna", "r") == ["latest", "step-0000004", "step-0000002"]
    assert generate_tab.checkpoint_choices("anna", engine_generate.BASE_MODEL) == ["latest"]

    settings = generate_tab.make_settings({"temperature": 0.5, "top_k": 20.0, "split_sentences": False, "seed": " 12 "})
    assert (settings.temperature, settings.top_k, settings.split_sentences, settings.seed) == (0.5, 20, False, 12)
    assert generate_tab.make_settings({"seed": ""}).seed is None
    with pytest.raises(ValueError, match="seed"):
        generate_tab.make_settings({"seed": "abc"})
    assert generate_tab.settings_help()["top_p"].startswith("Sampling restricted")


def test_speak_uses_the_app_synthesizer(timbre_home, monkeypatch):
    calls = []

    def fake_generate(voice, text, **kwargs):
        calls.append((voice, text, kwargs))
        out = paths.output_dir(voice) / "x.wav"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"RIFF")
        weights = "/h/training/anna/r/checkpoints/step-0000004/model.safetensors"
        meta = {"text": text, "run": "r", "checkpoint": "latest", "weights": weights, "settings": {"seed": 3}}
        out.with_suffix(".json").write_text(json.dumps(meta))
        return out

    monkeypatch.setattr(engine_generate, "generate_speech", fake_generate)
    ctx = TabContext(blocks=None, settings=AppSettings(base_model="/models/tiny"))
    form = {"voice": "anna", "run": engine_generate.BASE_MODEL, "text": "Hi.", "seed": "3", "checkpoint": "latest"}
    path = generate_tab.speak(ctx, form)
    voice, text, kwargs = calls[0]
    assert (voice, text, kwargs["run"], kwargs["base_model"]) == ("anna", "Hi.", None, "/models/tiny")
    assert kwargs["settings"].seed == 3 and kwargs["synthesizer"] is ctx.synthesizer
    synthesizer = ctx.synthesizer
    generate_tab.speak(ctx, {**form, "run": "r"})
    assert calls[1][2]["run"] == "r" and ctx.synthesizer is synthesizer  # kept between calls
    ctx.release_models()
    assert ctx.synthesizer is None

    table = generate_tab.outputs_table("anna")
    assert list(table["file"]) == ["x.wav"] and list(table["seed"]) == [3]
    assert list(table["checkpoint"]) == ["step-0000004"]
    assert generate_tab.output_path("anna", "x.wav") == str(path.resolve())
    with pytest.raises(ValueError):
        generate_tab.output_path("anna", "../../voices/anna/secret.wav")
    with pytest.raises(ValueError, match="choose a voice"):
        generate_tab.speak(ctx, {**form, "voice": ""})


# --- Settings tab ----------------------------------------------------------------------------


def test_settings_status_licence_and_no_download_without_acceptance(tiny_model, tmp_path):
    text, ready = settings_tab.model_status(str(tiny_model))
    assert ready and "Ready" in text
    text, ready = settings_tab.model_status(str(tmp_path))
    assert not ready and "model.pth" in text
    assert "non-commercial" in settings_tab.license_markdown()
    with pytest.raises(PermissionError):
        settings_tab.download(str(tmp_path), accepted=False)
    settings = AppSettings()
    settings_tab.apply_settings(settings, " /m ", "openai-whisper", " tiny ")
    assert (settings.base_model, settings.whisper_backend, settings.whisper_model) == ("/m", "openai-whisper", "tiny")
    assert AppSettings().base_model_dir() == str(paths.default_base_model_dir())
