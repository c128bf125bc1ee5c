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

from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from engine.dataset import prepare as engine_dataset
from engine.generate import synthesis as engine_generate
from webui.app import build_app, parse_args
from webui.tabs import (
    AppSettings,
    LogLines,
    TabContext,
    dataset_editor,
    dataset_report,
    engine_errors,
    named,
    progress_callable,
)
from webui.tabs import dataset as dataset_tab
from webui.tabs import generate as generate_tab
from webui.tabs import generate_export as gexport
from webui.tabs import generate_form as gform
from webui.tabs import generate_history as ghistory
from webui.tabs import settings as settings_tab
from webui.tabs import training as training_tab
from webui.tabs import training_form as tform
from webui.tabs import training_plots as tplots
from webui.tabs import training_runs as truns

ROOT = Path(__file__).resolve().parent.parent


def default_form() -> dict:
    """The Training form's values as the page first shows them."""
    defaults = TrainConfig()
    return {f.name: tform.to_form_value(f.name, getattr(defaults, f.name)) for f in tform.form_fields()}


def write_dataset(voice: str, clips: int = 3) -> Path:
    """datasets/<voice>/ with tiny placeholder clips (not audio), csv files and a report, as
    engine.dataset.prepare writes them: the last clip is for validation."""
    folder = paths.dataset_dir(voice)
    (folder / "wavs").mkdir(parents=True)
    rows, per_clip = [], []
    for i in range(clips):
        name = f"wavs/take_{i:05d}.wav"
        (folder / name).write_bytes(b"RIFF")
        rows.append(f"{name}|Sentence number {i}.|{voice}")
        start, end = 10.0 * i, 10.0 * i + 1.5 + i
        per_clip.append(
            {"audio_file": name, "key": f"{'ab' * 32}:{start:.3f}:{end:.3f}", "split": "train", "source": "take.wav",
             "start": start, "end": end, "duration": 1.5 + i, "text": f"Sentence number {i}.", "rms_dbfs": -20.0 - i,
             "clipping": 0.0, "leading_silence": 0.1, "trailing_silence": 0.9 if i == 1 else 0.1,
             "avg_logprob": -0.3, "low_words": []}
        )  # fmt: skip
    per_clip[-1]["split"] = "validation"
    header = "audio_file|text|speaker_name\n"
    (folder / "train.csv").write_text(header + "\n".join(rows[:-1]) + "\n")
    (folder / "validation.csv").write_text(header + rows[-1] + "\n")
    report = {
        "voice": voice,
        "clips": clips,
        "train": clips - 1,
        "validation": 1,
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
        "dataset-show", "dataset-clip-audio", "dataset-clip-text", "dataset-save-text", "dataset-revert-text",
        "dataset-exclude", "dataset-retranscribe", "dataset-next-clip", "dataset-duration-plot", "dataset-report",
        "training-yaml", "training-start", "training-stop", "training-status", "training-plot", "training-log",
        "training-run-table", "training-compare", "training-axis", "training-checkpoint", "training-branch",
        "training-spike-branch", "training-checks", "training-suggestion", "train-epochs", "train-batch-size",
        "generate-run", "generate-checkpoint", "generate-button", "generate-audio", "generate-outputs",
        "settings-base-model", "settings-accept", "settings-download", "settings-license",
    ):  # fmt: skip
        assert elem_id in ids, elem_id
    assert any(isinstance(block, gr.Timer) for block in demo.blocks.values())


def test_training_monitor_has_its_own_concurrency_group(timbre_home):
    """The timer's refresh never queues behind a long transcription or generation: the app's
    default limit of 1 applies per concurrency group, and the monitor events have their own."""
    demo = build_app(base_model=timbre_home / "model")
    training = [fn for fn in demo.fns.values() if getattr(fn.fn, "__module__", "") == training_tab.__name__]
    monitor = {fn.name for fn in training if fn.concurrency_id == training_tab.MONITOR}
    assert monitor == {"on_tick", "on_change"}
    assert all(fn.concurrency_id != training_tab.MONITOR for fn in demo.fns.values() if fn.name not in monitor)


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


def test_dataset_view_reads_the_report_and_edits(timbre_home):
    values = dataset_tab.tab_values("anna")
    assert "no dataset yet" in values["summary"] and values["clips"].empty and values["skipped"].empty
    assert values["duration_plot"] is None and "appears once" in values["report"]
    folder = write_dataset("anna")
    values = dataset_tab.tab_values("anna")
    assert "3 clips (2 train, 1 validation)" in values["summary"] and "tiny.en" in values["summary"]
    clips = values["clips"]
    assert list(clips.columns) == dataset_editor.CLIP_COLUMNS
    assert list(clips["clip"]) == ["take_00000", "take_00001", "take_00002"]
    assert (
        list(clips["split"]) == ["train", "train", "validation"]
        and list(clips["sec"]) == [1.5, 2.5, 3.5]
        and list(clips["dBFS"]) == [-20, -21, -22]
    )
    assert list(clips["flags"]) == ["", "silence at end 0.9 s", ""]
    assert list(values["skipped"]["file"]) == ["notes.wav", "take.wav"]
    assert "too short" in values["skipped"]["reason"].iloc[1]
    assert "3 clips in training" in values["report"] and "**1** — take_00001.wav" in values["report"]
    assert values["duration_plot"] is not None
    assert dataset_tab.clip_path("anna", "wavs/take_00000.wav") == str((folder / "wavs/take_00000.wav").resolve())
    with pytest.raises(ValueError):
        dataset_tab.clip_path("anna", "../../voices/anna/x.wav")
    assert [len(t) for t in (dataset_tab.VIEW_KEYS, set(dataset_tab.VIEW_KEYS))] == [len(values)] * 2

    # A selected clip fills the panel; the editor's changes show in the table and the summary.
    values = dataset_tab.tab_values("anna", selected="wavs/take_00001.wav")
    assert values["selected"] == "wavs/take_00001.wav" and values["clip_audio"].endswith("take_00001.wav")
    assert values["clip_text"].value == "Sentence number 1." and "silence at end" in values["clip_info"]
    form = {"voice": "anna", "selected": "wavs/take_00001.wav", "clip_text": "Sentence one, corrected."}
    assert "Saved" in dataset_editor.apply_change(form, "save")
    assert "Excluded" in dataset_editor.apply_change(form, "exclude")
    values = dataset_tab.tab_values("anna", "excluded", "wavs/take_00001.wav")
    assert list(values["clips"]["text"]) == ["✎ Sentence one, corrected."]
    assert "1 excluded" in values["summary"] and "1 transcript edited" in values["summary"]
    assert values["exclude"].value == "Restore" and "Whisper heard: *Sentence number 1.*" in values["clip_info"]
    assert "take_00001" not in (folder / "train.csv").read_text()
    assert "Restored" in dataset_editor.apply_change(form, "exclude")
    assert "Whisper's transcript" in dataset_editor.apply_change(form, "revert")
    assert (folder / "train.csv").read_text().count("Sentence number") == 2
    with pytest.raises(ValueError, match="select a clip"):
        dataset_editor.apply_change({**form, "selected": None}, "save")


def test_clip_editor_lists_steps_and_retranscribes(timbre_home, monkeypatch):
    write_dataset("anna")
    quality = dataset_tab.read_quality("anna")
    assert [r["audio_file"] for r in dataset_editor.visible_rows(quality, "flagged")] == ["wavs/take_00001.wav"]
    assert dataset_editor.visible_rows(quality, "excluded") == []
    assert dataset_editor.neighbour(quality, "all", None, +1) == "wavs/take_00000.wav"
    assert dataset_editor.neighbour(quality, "all", "wavs/take_00000.wav", +1) == "wavs/take_00001.wav"
    assert dataset_editor.neighbour(quality, "all", "wavs/take_00000.wav", -1) == "wavs/take_00000.wav"
    assert dataset_editor.neighbour(quality, "all", "wavs/take_00002.wav", +1) == "wavs/take_00002.wav"
    assert dataset_editor.neighbour(quality, "excluded", None, +1) is None
    assert dataset_editor.audio_file_of(quality, "take_00002") == "wavs/take_00002.wav"

    calls = {}
    monkeypatch.setattr(
        dataset_editor.dataset_edit,
        "retranscribe_clip",
        lambda voice, audio_file, **kw: calls.update(voice=voice, audio_file=audio_file, **kw) or {"text": "Heard."},
    )
    form = {"voice": "anna", "selected": "wavs/take_00000.wav", "backend": "openai-whisper", "whisper_model": " ",
            "language": "auto"}  # fmt: skip
    assert dataset_editor.apply_change(form, "retranscribe") == "Re-transcribed take_00000.wav: “Heard.”"
    assert calls == {"voice": "anna", "audio_file": "wavs/take_00000.wav", "backend": "openai-whisper",
                     "whisper_model": None, "language": None}  # fmt: skip


def test_dataset_made_outside_timbre_is_shown_read_only(home):
    """datasets/anna/ of conftest has csv files and no report.json: listed and playable, not editable."""
    values = dataset_tab.tab_values("anna", selected="wavs/clip0.wav")
    assert len(values["clips"]) == 6 and "Made outside Timbre" in values["summary"]
    assert values["clip_audio"].endswith("clip0.wav") and "cannot be edited" in values["clip_info"]
    assert values["save_text"].interactive is False and values["duration_plot"] is None


def test_quality_report_in_words_and_figure():
    quality = {
        "clips": 3, "included": 2, "excluded": 1, "flagged": 1, "median_rms_dbfs": -20.0,
        "thresholds": {"clipping_flag_share": 0.001, "loudness_outlier_db": 6.0, "edge_silence_seconds": 0.5,
                       "low_avg_logprob": -1.0, "low_word_probability": 0.5},
        "durations": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [0, 1, 1], "min": 1.2, "median": 1.8, "max": 2.4,
                      "total": 3.6},
        "categories": {"clipping": ["wavs/a.wav", "wavs/x.wav"], "loudness": [], "edge silence": [],
                       "low confidence": []},
        "per_clip": [{"audio_file": "wavs/x.wav", "split": "excluded"}],
    }  # fmt: skip
    text = dataset_report.report_markdown(quality)
    assert "**2 clips in training** (1 excluded)" in text and "**1** — a.wav" in text and "x.wav" not in text
    assert "1 clip flagged." in text and "none" in text
    figure = dataset_report.duration_figure(quality)
    assert [round(p.get_height()) for p in figure.axes[0].patches] == [0, 1, 1]
    assert dataset_report.duration_figure({**quality, "included": 0}) is None
    assert "All 3 clips are excluded" in dataset_report.report_markdown({**quality, "included": 0})


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
    names = [name for _, fields, _ in tform.sections() for name in fields]
    expected = {f.name for f in dataclasses.fields(TrainConfig)} - set(tform.SELECTOR_FIELDS)
    assert sorted(names) == sorted(expected)


def test_form_to_config_round_trip():
    form = default_form()
    assert tform.form_to_config(form, "anna", "run-1") == TrainConfig(voice="anna", run="run-1")
    form.update(milestones="2, 4", gpus="0, 1", epochs=6.0, batch_size=4, freeze=["text_embedding"], learning_rate=1e-5)
    config = tform.form_to_config(form, "anna", "run-1")
    assert config.milestones == [2, 4] and config.gpus == [0, 1] and config.epochs == 6
    assert config.freeze == ["text_embedding"] and config.learning_rate == 1e-5
    assert tform.form_to_config({**form, "gpus": "2"}, "anna", "r").gpus == 2
    with pytest.raises(ConfigError, match="epochs: must be a whole number"):
        tform.form_to_config({**form, "epochs": 2.5}, "anna", "r")
    with pytest.raises(ConfigError, match="milestones"):
        tform.form_to_config({**form, "milestones": "two"}, "anna", "r")


def test_yaml_preview_shows_the_yaml_or_the_error():
    form = default_form()
    text = tform.yaml_preview({**form, "epochs": 2}, "anna", "run-1")
    assert TrainConfig.from_dict(yaml.safe_load(text)).epochs == 2
    broken = tform.yaml_preview({**form, "batch_size": 3, "gradient_accumulation": 2}, "anna", "run-1")
    assert broken.startswith("# Not a valid configuration") and "batch_size" in broken and "try 2 or 4" in broken
    assert "invalid run" in tform.yaml_preview(form, "anna", "../x")


def test_config_checks_read_the_dataset(timbre_home):
    form = default_form()  # batch_size 4, validate_every 1, save_every 1, 10 epochs
    assert "0 training and 0 validation clips" in tform.config_checks(form, "anna", "r")
    write_dataset("anna", clips=3)  # 2 training clips, 1 validation clip
    checks = tform.config_checks(form, "anna", "r")
    assert "2 training and 1 validation clips" in checks and "larger than the 2 training clips" in checks
    checks = tform.config_checks({**form, "batch_size": 2, "save_every": 20}, "anna", "r", existing=True)
    assert "save_every 20" in checks and "Resume" in checks and "larger than" not in checks
    assert tform.config_checks({**form, "epochs": 0}, "anna", "r").startswith("**Not valid:** epochs")
    assert "starts from the weights in `/w/init.safetensors`" in tform.config_checks(
        {**form, "init_weights": "/w/init.safetensors"}, "anna", "r"
    )
    suggestion = tform.batch_suggestion(form, "anna", [])
    assert (suggestion.batch_size, suggestion.gradient_accumulation) == (2, 1) and "No GPU" in suggestion.reason


def set_dataset_language(voice: str, language) -> None:
    """Record ``language`` (a Whisper code) in datasets/<voice>/report.json, as the dataset step does."""
    path = paths.dataset_dir(voice) / "report.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "language": language}))


def wired(demo: gr.Blocks, module, name: str):
    """The event ``name`` that ``module`` wired into the app (the first found): ``.fn`` is the
    handler, ``.outputs`` its output components."""
    return next(fn for fn in demo.fns.values() if fn.name == name and fn.fn.__module__ == module.__name__)


def test_training_form_takes_the_dataset_language(timbre_home):
    assert tform.default_language("anna") == "en"  # no dataset
    write_dataset("anna")
    set_dataset_language("anna", "es")
    assert tform.default_language("anna") == "es"
    form = default_form()
    assert "The dataset is in Spanish (es)" in tform.config_checks(form, "anna", "r")  # the form says en
    assert "dataset is in" not in tform.config_checks({**form, "language": "es"}, "anna", "r")
    assert "**Not valid:** language: must be one of" in tform.config_checks({**form, "language": "sv"}, "anna", "r")
    set_dataset_language("anna", "zh")
    assert tform.default_language("anna") == "zh-cn"
    set_dataset_language("anna", "sv")
    assert tform.default_language("anna") == "en"
    assert "'sv', which XTTS-v2 cannot speak" in tform.config_checks(form, "anna", "r")

    # Choosing the voice in the page sets the form's language (the last output of on_voice).
    set_dataset_language("anna", "es")
    on_voice = wired(build_app(base_model=timbre_home / "model"), training_tab, "on_voice")
    language = on_voice.outputs[-1]
    assert language.elem_id == "train-language"
    assert ("Spanish (es)", "es") in language.choices and len(language.choices) == 17
    assert on_voice.fn("anna")[-1] == "es"


def test_start_new_run_then_resume(timbre_home, monkeypatch):
    started = []
    monkeypatch.setattr(truns.process, "start_training", lambda path: started.append(Path(path)) or 123)
    form = {**default_form(), "epochs": 2}
    with pytest.raises(FileNotFoundError, match="no dataset"):
        truns.start_run(form, "anna", "run-1", "/models/tiny")
    assert not (timbre_home / "training").exists()

    write_dataset("anna")
    folder, resumed = truns.start_run(form, "anna", "run-1", "/models/tiny")
    assert not resumed and folder == paths.run_dir("anna", "run-1")
    config = TrainConfig.load(folder / "train.yaml")
    assert (config.epochs, config.base_model) == (2, "/models/tiny")

    # Start on an existing run resumes it with its own train.yaml (the form is not written).
    folder, resumed = truns.start_run({**form, "epochs": 9}, "anna", "run-1", "")
    assert resumed and TrainConfig.load(folder / "train.yaml").epochs == 2
    assert started == [folder / "train.yaml"] * 2
    assert truns.suggest_run_name("anna") == "run-2"

    def busy(path):
        raise truns.process.TrainingAlreadyRunning("GPU 0 already used")

    monkeypatch.setattr(truns.process, "start_training", busy)
    with pytest.raises(truns.process.TrainingAlreadyRunning):
        truns.start_run(form, "anna", "run-2", "")
    assert not paths.run_dir("anna", "run-2").exists()  # a refused new run leaves nothing behind
    with pytest.raises(truns.process.TrainingAlreadyRunning):
        truns.start_run(form, "anna", "run-1", "")
    assert (folder / "train.yaml").is_file()  # a refused resume keeps the run
    monkeypatch.setattr(truns.process, "start_training", lambda path: started.append(Path(path)) or 123)

    # A new run from a checkpoint's weights: its own folder, the weights copied, the LR scaled.
    checkpoint = folder / "checkpoints" / "step-0000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "COMPLETE").write_text("")
    new = truns.branch_and_start("anna", "run-1", "run-1b", "step-0000004", 0.5)
    assert (new / "init.safetensors").read_bytes() == b"weights" and started[-1] == new / "train.yaml"
    assert TrainConfig.load(new / "train.yaml").learning_rate == pytest.approx(2.5e-6)
    with pytest.raises(paths.InvalidNameError):
        truns.branch_and_start("anna", "run-1", "../x", "latest", 1.0)


def test_monitor_and_status_line(timbre_home):
    assert truns.monitor(None, None)[2] is None
    assert "new run" in truns.monitor("anna", "r")[0]
    assert "invalid run name" in truns.monitor("anna", "run.")[0]  # typed half-way: no error toast
    config = TrainConfig(voice="anna", run="r")
    folder = config.save_new().parent
    runs.write_status(
        folder, {"state": "failed", "step": 3, "epoch": 1, "message": "CUDA out of memory", "exit_code": 1}
    )
    (folder / "train.log").write_text("step 3\ntraining failed:\nTraceback (most recent call last):\n  File x\nOOM\n")
    text, log, status = truns.monitor("anna", "r")
    assert text.startswith("**failed** · exit code 1 · step 3") and "Hint:" in text
    assert "```text\nTraceback (most recent call last):\n  File x\nOOM\n```" in text
    assert status.state == "failed" and "training failed" in log
    status = runs.RunStatus("anna", "r", "running", 5, 1, 10, "training", None, 1, 4, 1, 2.0, 75.0, epoch_progress=1.5)
    line = truns.describe_status(dataclasses.replace(status, epochs=4), best=(4, 1.25))
    assert line.startswith(
        "**running** · step 5 / 10 · epoch 1.5 / 4 · 2.0 samples/s · ETA 0:01:15 · latest checkpoint step-0000004"
    )
    assert "Best validation loss 1.2500 at step-0000004" in line


def test_runs_table_and_checkpoint_choices(timbre_home):
    first = TrainConfig(voice="anna", run="a").save_new().parent
    TrainConfig(voice="anna", run="b").save_new()
    for step in (2, 4, 6):
        (first / "checkpoints" / runs.checkpoint_name(step)).mkdir(parents=True)
        (first / "checkpoints" / runs.checkpoint_name(step) / "COMPLETE").write_text("")
    runs.write_status(first, {"state": "stopped", "step": 6, "epoch": 3.0, "message": "stopped at step 6"})
    table = truns.runs_table("anna")
    assert list(table["run"]) == ["a", "b"] and list(table["state"]) == ["stopped", "new"]
    assert table["checkpoint"][0] == "step-0000006" and "resumable" in table["note"][0]
    assert truns.checkpoint_choices("anna", "a", best_step=4, last_good_step=2) == [
        ("step-0000006 (newest)", "step-0000006"),
        ("step-0000004 (best validation)", "step-0000004"),
        ("step-0000002 (last good before a spike)", "step-0000002"),
    ]
    assert truns.checkpoint_choices("anna", "nope") == [] and truns.runs_table("../x").empty


def test_refresh_sends_only_what_changed(timbre_home):
    write_dataset("anna")
    folder = TrainConfig(voice="anna", run="r").save_new().parent
    ui = {name: name for name in ("view", "plot", "status", "log", "run_table", "start", "stop", "checkpoint",
                                  "spike", "config_box", "compare", "branch_name", "runs")}  # fmt: skip
    view = training_tab.new_view()
    out = training_tab.refresh(ui, view, "anna", "r", [], "step")
    assert "No metrics yet" in out["plot"] and "**new**" in out["status"] and out["start"].value == "Resume"
    assert set(training_tab.refresh(ui, view, "anna", "r", [], "step")) == {"view"}  # nothing changed

    row = {"step": 1, "epoch": 0.5, "split": "train", "loss_text_ce": 3.0, "loss_mel_ce": 5.0, "lr": 1e-5}
    (folder / "metrics.jsonl").write_text(json.dumps({**row, "grad_norm": 0.7}) + "\n")
    out = training_tab.refresh(ui, view, "anna", "r", [], "step")
    assert "plot" not in out and "status" in out  # drawn less than a second ago: the next tick draws
    view["drawn_at"] -= training_tab.MIN_REDRAW_S
    out = training_tab.refresh(ui, view, "anna", "r", [], "step")
    assert 'data-last-step="1"' in out["plot"] and 'id="curve-r-mel_ce-train"' in out["plot"]
    out = training_tab.refresh(ui, view, "anna", "r", ["r", "missing"], "epoch")  # a new selection redraws
    assert 'data-runs="r"' in out["plot"] and 'data-axis="epoch"' in out["plot"]


def test_plot_html_marks_events(tmp_path):
    from engine.metrics import RunSeries

    rows = [{"step": s, "epoch": s / 4, "split": "train", "loss_text_ce": 3.0, "loss_mel_ce": 5.0 - s / 10,
             "lr": 1e-5, "grad_norm": 1.0} for s in range(1, 41)]  # fmt: skip
    rows += [
        {"event": "checkpoint", "step": 8, "epoch": 2.0},
        {"event": "spike", "step": 9, "epoch": 2.25, "loss": 20.0, "last_good_step": 8},
        {"event": "skipped_step", "step": 10, "epoch": 2.5},
        {"step": 8, "epoch": 2.0, "split": "validation", "loss_text_ce": 3.1, "loss_mel_ce": 4.0, "loss": 4.03},
    ]
    series = RunSeries()
    series.add_rows(rows)
    html = tplots.plot_html({"run 1": series, "other": RunSeries()}, "step")
    for gid in ("curve-run_1-mel_ce-train", "curve-run_1-mel_ce-smooth", "curve-run_1-text_ce-validation",
                "curve-run_1-lr-train", "curve-run_1-grad_norm-train", "marks-run_1-spike", "marks-run_1-skipped-lr",
                "marks-run_1-checkpoint-mel_ce", "marks-run_1-best"):  # fmt: skip
        assert f'id="{gid}"' in html, gid
    assert 'data-points="41"' in html and 'data-runs="run 1,other"' in html
    assert "<svg" in html and 'width="100%"' in html
    assert "No metrics yet" in tplots.plot_html({"r": RunSeries()})


# --- Generate tab ----------------------------------------------------------------------------


def test_generation_choices_and_settings(timbre_home):
    assert gform.run_choices("anna") == [engine_generate.BASE_MODEL]
    assert gform.default_model("anna") == engine_generate.BASE_MODEL
    folder = TrainConfig(voice="anna", run="r").save_new().parent
    for step, complete in ((2, True), (4, True), (6, False)):
        checkpoint = folder / "checkpoints" / runs.checkpoint_name(step)
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "COMPLETE").write_text("")
    (engine_generate.imported_model_dir("imp") / "model.pth").parent.mkdir(parents=True)
    (engine_generate.imported_model_dir("imp") / "model.pth").write_bytes(b"")
    assert gform.run_choices("anna") == [engine_generate.BASE_MODEL, "r", "imported:imp"]
    assert gform.model_choices("anna")[-1] == ("imp (imported)", "imported:imp")
    assert gform.default_model("anna") == "r"
    assert gform.checkpoint_choices("anna", "r") == ["latest", "step-0000004", "step-0000002"]
    assert gform.checkpoint_choices("anna", engine_generate.BASE_MODEL) == ["latest"]
    assert gform.checkpoint_choices("anna", "imported:imp") == ["latest"]

    assert gform.reference_choices("anna") == []
    assert "no recordings" in gform.references_info("anna")
    (paths.voice_dir("anna")).mkdir(parents=True)
    (paths.voice_dir("anna") / "take.wav").write_bytes(b"RIFF")
    (paths.dataset_dir("anna") / "wavs").mkdir(parents=True)
    (paths.dataset_dir("anna") / "wavs" / "c1.wav").write_bytes(b"RIFF")
    assert gform.reference_choices("anna") == [
        ("take.wav (recording)", "voices/anna/take.wav"),
        ("c1.wav (dataset clip)", "datasets/anna/wavs/c1.wav"),
    ]
    assert gform.references_info("anna").startswith("Empty: the voice's recording.")

    settings = gform.make_settings({"temperature": 0.5, "top_k": 20.0, "split_sentences": False, "seed": " 12 "})
    assert (settings.temperature, settings.top_k, settings.split_sentences, settings.seed) == (0.5, 20, False, 12)
    assert gform.make_settings({"seed": ""}).seed is None
    with pytest.raises(ValueError, match="seed"):
        gform.make_settings({"seed": "abc"})
    assert gform.settings_help()["top_p"].startswith("Sample only within")
    assert gform.candidate_count({"candidates": 3.0}) == 3
    with pytest.raises(ValueError, match="candidates"):
        gform.candidate_count({"candidates": 9})


def test_generate_language_defaults_to_the_run_then_the_dataset(timbre_home):
    write_dataset("anna")
    set_dataset_language("anna", "es")
    demo = build_app(base_model=timbre_home / "model")
    on_voice, on_run = wired(demo, generate_tab, "on_voice"), wired(demo, generate_tab, "on_run")
    language = on_run.outputs[1]
    assert language.elem_id == "generate-language"
    assert ("Spanish (es)", "es") in language.choices and len(language.choices) == 17
    at = on_voice.outputs.index(language)
    assert on_voice.fn("anna")[at] == "es"  # no run yet: the base model, the dataset's language
    TrainConfig(voice="anna", run="german", language="de").save_new()
    assert on_voice.fn("anna")[at] == "de"  # the newest run is shown: its train.yaml's language
    assert on_run.fn("anna", engine_generate.BASE_MODEL)[1] == "es"
    assert on_run.fn("anna", "german")[1] == "de"


def test_speak_uses_the_app_synthesizer(timbre_home, monkeypatch):
    calls = []

    def fake_candidates(voice, text, candidates=1, **kwargs):
        calls.append((voice, text, candidates, kwargs))
        out = paths.output_dir(voice) / "x.wav"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"RIFF")
        weights = "/h/training/anna/r/checkpoints/step-0000004/model.safetensors"
        meta = {"text": text, "run": "r", "checkpoint": "step-0000004", "weights": weights, "language": "de",
                "references": ["voices/anna/take.wav", "voices/anna/gone.wav"], "candidate": 2, "candidates": 2,
                "settings": {"seed": 3, "temperature": 0.4, "max_seconds": 1.5, "unknown": 1}}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(meta))
        return [out]

    monkeypatch.setattr(engine_generate, "generate_candidates", fake_candidates)
    ctx = TabContext(blocks=None, settings=AppSettings(base_model="/models/tiny"))
    form = {"voice": "anna", "run": engine_generate.BASE_MODEL, "text": "Hi.", "seed": "3", "checkpoint": "latest",
            "references": ["voices/anna/take.wav"], "candidates": 2}  # fmt: skip
    path = gform.speak_candidates(ctx, form)[0]
    voice, text, count, kwargs = calls[0]
    assert (voice, text, count, kwargs["run"], kwargs["base_model"]) == ("anna", "Hi.", 2, None, "/models/tiny")
    assert kwargs["settings"].seed == 3 and kwargs["synthesizer"] is ctx.synthesizer
    assert kwargs["references"] == ["voices/anna/take.wav"]
    synthesizer = ctx.synthesizer
    gform.speak(ctx, {**form, "run": "r", "references": []})
    assert calls[1][2] == 1 and calls[1][3]["run"] == "r" and calls[1][3]["references"] is None
    assert ctx.synthesizer is synthesizer  # kept between calls
    ctx.release_models()
    assert ctx.synthesizer is None

    table = ghistory.outputs_table("anna")
    assert list(table["file"]) == ["x.wav"] and list(table["seed"]) == [3]
    assert list(table["checkpoint"]) == ["step-0000004"] and list(table["candidate"]) == ["2 of 2"]
    assert ghistory.output_path("anna", "x.wav") == str(path.resolve())
    with pytest.raises(ValueError):
        ghistory.output_path("anna", "../../voices/anna/secret.wav")
    with pytest.raises(ValueError, match="choose a voice"):
        gform.speak(ctx, {**form, "voice": ""})

    # "Generate again with these settings": the output's JSON back into form values.
    values = gform.form_from_output(engine_generate.read_output("anna", "x.wav"))
    assert (values["text"], values["run"], values["checkpoint"], values["language"]) == (
        "Hi.",
        "r",
        "step-0000004",
        "de",
    )
    assert (values["seed"], values["temperature"], values["max_seconds"], values["candidates"]) == ("3", 0.4, 1.5, 1)
    assert values["top_k"] == engine_generate.GenerationSettings().top_k  # not recorded: the default
    assert "Model: r · step-0000004" in ghistory.describe_output(engine_generate.read_output("anna", "x.wav"))
    # What is gone by now falls back, with a warning each: the run, then the missing reference.
    values, warnings = ghistory.fill_form("anna", "x.wav")
    assert values["run"] == engine_generate.BASE_MODEL and values["checkpoint"] == "latest"
    assert values["references"] == []
    assert len(warnings) == 2 and "r no longer exists" in warnings[0] and "gone.wav" in warnings[1]


def test_streamed_generation_streams_the_first_candidate_then_speaks_the_rest(timbre_home, monkeypatch):
    first = paths.output_dir("anna") / "first.wav"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"RIFF")
    first.with_suffix(".json").write_text(json.dumps({"settings": {"seed": 20}}))
    calls = {}

    def fake_stream(ctx, values, log=print, candidates=1):
        calls["stream"] = candidates
        yield from ()  # no chunk: the generator only returns its path
        return first

    def fake_candidates(ctx, values, log=print, progress=None, numbering=None):
        calls["rest"] = (values["seed"], values["candidates"], numbering)
        return [first.with_name("second.wav")]

    monkeypatch.setattr(gform, "speak_streaming", fake_stream)
    monkeypatch.setattr(gform, "speak_candidates", fake_candidates)
    ui = {"stream_audio": object()}
    streamed = generate_tab._streamed(None, ui, {"seed": ""}, 2, [])
    with pytest.raises(StopIteration) as done:
        next(streamed)
    assert [p.name for p in done.value.value] == ["first.wav", "second.wav"]
    assert calls == {"stream": 2, "rest": ("21", 1, (2, 2))}


def test_export_and_import_handlers_check_their_input(timbre_home):
    ctx = TabContext(blocks=None, settings=AppSettings(base_model="/models/tiny"))
    with pytest.raises(ValueError, match="choose a voice"):
        gexport.export_zip(ctx, {"voice": "", "run": "r"})
    with pytest.raises(ValueError, match="only a fine-tune can be exported"):
        gexport.export_zip(ctx, {"voice": "anna", "run": engine_generate.BASE_MODEL})
    assert gexport.suggested_name("/tmp/gradio/x/anna-ft-step-0000004.zip") == "anna-ft-step-0000004"
    assert gexport.suggested_name("/tmp/My voice (v2)!.zip") == "My voice -v2"
    assert gexport.suggested_name(None) == ""
    assert generate_tab.wav_bytes([0.0, 0.5, -2.0])[:4] == b"RIFF"


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
