"""Dataset tab: pick or create a voice, upload its recordings, transcribe them into clips.

Recordings are copied into ``voices/<voice>/`` under safe names (an existing file is never
overwritten: identical content is skipped, different content gets a ``-2`` suffix).
Transcribe runs :func:`engine.dataset.prepare_dataset`; the clips table and the skipped
list are read back from ``datasets/<voice>/`` (train.csv, validation.csv, report.json).
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from engine import audio, dataset, paths, transcribe
from engine.models import LANGUAGES
from webui.tabs import (
    LogLines,
    TabContext,
    engine_errors,
    named,
    progress_callable,
    voice_dropdown,
)

CLIP_COLUMNS = ["audio_file", "text", "split", "seconds"]
SKIPPED_COLUMNS = ["file", "part", "reason"]
RECORDING_COLUMNS = ["file", "MB"]


# --- handlers (plain functions; the tests call them directly) --------------------------------


def create_voice(name: str) -> str:
    """Create ``voices/<name>/`` (kept if it exists) and return the checked name."""
    voice = paths.check_name(name or "", "voice name")
    paths.voice_dir(voice).mkdir(parents=True, exist_ok=True)
    return voice


def safe_filename(name: str) -> str:
    """A recording's upload name reduced to letters, digits, ``.``, ``_`` and ``-``."""
    path = Path(name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._-")[:80] or "recording"
    return stem + path.suffix.lower()


def save_recordings(voice: str, files: list[str]) -> tuple[list[str], list[str]]:
    """Copy uploaded files into ``voices/<voice>/``; returns (saved names, notes on the rest).

    Unsupported extensions are refused; a file whose content is already there is skipped;
    a different file with a taken name is saved as ``<stem>-2<ext>`` (``-3`` …).
    """
    folder = paths.voice_dir(voice)
    folder.mkdir(parents=True, exist_ok=True)
    saved, notes = [], []
    for source in map(Path, files or []):
        name = safe_filename(source.name)
        if Path(name).suffix not in audio.SUPPORTED_EXTENSIONS:
            notes.append(f"{source.name}: not a supported audio file ({', '.join(audio.SUPPORTED_EXTENSIONS)})")
            continue
        target = _free_target(folder, name, source)
        if target is None:
            notes.append(f"{source.name}: already in {voice}")
            continue
        _copy_exclusive(source, target)
        saved.append(target.name)
    return saved, notes


def _free_target(folder: Path, name: str, source: Path) -> Path | None:
    """The first untaken ``name``, ``name-2``, … in ``folder``; None if one holds the same bytes."""
    stem, ext = Path(name).stem, Path(name).suffix
    for number in range(1, 10_000):
        target = folder / (name if number == 1 else f"{stem}-{number}{ext}")
        if not target.exists():
            return target
        if filecmp.cmp(source, target, shallow=False):
            return None
    raise FileExistsError(f"too many recordings named {name} in {folder}")


def _copy_exclusive(source: Path, target: Path) -> None:
    """Copy with exclusive create, so a file that appeared meanwhile is never overwritten."""
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
    except BaseException:
        if target.exists() and target.stat().st_size == 0:
            target.unlink()
        raise


def recordings_table(voice: str | None) -> pd.DataFrame:
    """The recordings of ``voices/<voice>/`` with their sizes in MB."""
    rows = []
    if voice:
        folder = paths.voice_dir(voice)
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in audio.SUPPORTED_EXTENSIONS:
                    rows.append([path.name, round(path.stat().st_size / 1e6, 2)])
    return pd.DataFrame(rows, columns=RECORDING_COLUMNS)


def read_report(voice: str) -> dict:
    """``datasets/<voice>/report.json``, or {} when there is none (or it cannot be read)."""
    path = paths.dataset_dir(voice) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def dataset_view(voice: str | None) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(summary markdown, clips table, skipped table) of the voice's dataset."""
    empty = pd.DataFrame(columns=CLIP_COLUMNS), pd.DataFrame(columns=SKIPPED_COLUMNS)
    if not voice:
        return "Choose or create a voice.", *empty
    clips = dataset.load_clips(voice)
    report = read_report(voice)
    if not clips:
        return f"**{voice}** has no dataset yet: add recordings and press Transcribe.", *empty
    clip_rows = [
        [c["audio_file"], c["text"], c["split"], None if c.get("duration") is None else round(c["duration"], 2)]
        for c in clips
    ]
    skipped_rows = [[s.get("file", ""), "whole file", s.get("reason", "")] for s in report.get("skipped", [])]
    skipped_rows += [
        [
            d.get("file", ""),
            f"{d.get('start', 0):.1f}-{d.get('end', 0):.1f} s {d.get('text', '')!r}",
            d.get("reason", ""),
        ]
        for d in report.get("dropped", [])
    ]
    train = sum(c["split"] == "train" for c in clips)
    seconds = sum(c.get("duration") or 0 for c in clips)
    summary = (
        f"**{voice}**: {len(clips)} clips ({train} train, {len(clips) - train} validation), {seconds:.1f} s of speech"
    )
    if report:
        summary += (
            f" from {report.get('recordings', '?')} recordings; {len(report.get('skipped', []))} skipped. "
            f"Transcribed with {report.get('backend')} `{report.get('model')}`."
        )
    return summary, pd.DataFrame(clip_rows, columns=CLIP_COLUMNS), pd.DataFrame(skipped_rows, columns=SKIPPED_COLUMNS)


def clip_path(voice: str, audio_file: str) -> str:
    """The absolute path of a clip named in the table; raises ValueError outside the dataset."""
    base = paths.dataset_dir(voice).resolve()
    path = (base / audio_file).resolve()
    if base not in path.parents or not path.is_file():
        raise ValueError(f"no clip {audio_file!r} in {base}")
    return str(path)


def run_transcription(form: dict, progress=None, log=print) -> dataset.DatasetReport:
    """Call :func:`engine.dataset.prepare_dataset` with the form's values."""
    if not form.get("voice"):
        raise ValueError("choose or create a voice first")
    language = form.get("language") or "auto"
    return dataset.prepare_dataset(
        form["voice"],
        backend=form.get("backend") or "faster-whisper",
        whisper_model=(form.get("whisper_model") or "").strip() or None,
        language=None if language == "auto" else language,
        validation_fraction=float(form.get("validation_fraction", 0.15)),
        progress=progress,
        log=log,
    )


# --- layout and wiring -----------------------------------------------------------------------


def build(ctx: TabContext) -> dict:
    """The Dataset tab; returns its components by name."""
    ui: dict = {}
    with gr.Tab("Dataset", id="dataset", elem_id="tab-dataset") as ui["tab"]:
        with gr.Row(equal_height=True):
            ui["voice"] = gr.Dropdown(label="Voice", choices=[], elem_id="dataset-voice", scale=2)
            ui["new_voice"] = gr.Textbox(
                label="New voice name",
                placeholder="letters, digits, space, _ - .",
                elem_id="dataset-new-voice",
                scale=2,
            )
            ui["create"] = gr.Button("Create voice", elem_id="dataset-create-voice", scale=1)
        with gr.Row():
            with gr.Column(scale=3):
                ui["upload"] = gr.File(
                    label="Add recordings (" + " ".join(audio.SUPPORTED_EXTENSIONS) + ")",
                    file_count="multiple",
                    file_types=list(audio.SUPPORTED_EXTENSIONS),
                    elem_id="dataset-upload",
                    height=140,
                )
            with gr.Column(scale=2):
                ui["recordings"] = gr.Dataframe(
                    pd.DataFrame(columns=RECORDING_COLUMNS),
                    label="Recordings",
                    interactive=False,
                    max_height=220,
                    elem_id="dataset-recordings",
                )
        with gr.Row(equal_height=True):
            ui["backend"] = gr.Dropdown(
                list(transcribe.BACKENDS),
                value=lambda: ctx.settings.whisper_backend,
                label="Whisper backend",
                elem_id="dataset-backend",
            )
            ui["whisper_model"] = gr.Textbox(
                value=lambda: ctx.settings.whisper_model,
                label="Whisper model",
                placeholder="default: " + ", ".join(f"{b}: {m}" for b, m in transcribe.DEFAULT_MODELS.items()),
                info="A model name (downloaded into models/ on first use) or a local path.",
                elem_id="dataset-whisper-model",
            )
            ui["language"] = gr.Dropdown(
                ["auto", *LANGUAGES],
                value="en",
                allow_custom_value=True,
                label="Language",
                elem_id="dataset-language",
            )
            ui["validation_fraction"] = gr.Slider(
                0.0, 0.5, value=0.15, step=0.05, label="Validation share", elem_id="dataset-validation"
            )
        ui["transcribe"] = gr.Button("Transcribe", variant="primary", elem_id="dataset-transcribe")
        ui["summary"] = gr.Markdown(elem_id="dataset-summary")  # filled on load
        with gr.Row():
            with gr.Column(scale=3):
                ui["clips"] = gr.Dataframe(
                    pd.DataFrame(columns=CLIP_COLUMNS),
                    label="Clips (select a row to listen)",
                    interactive=False,
                    wrap=True,
                    max_height=360,
                    column_widths=["28%", "50%", "12%", "10%"],
                    elem_id="dataset-clips",
                )
            with gr.Column(scale=1):
                ui["clip_audio"] = gr.Audio(
                    label="Selected clip", type="filepath", interactive=False, elem_id="dataset-clip-audio"
                )
        ui["skipped"] = gr.Dataframe(
            pd.DataFrame(columns=SKIPPED_COLUMNS),
            label="Skipped",
            interactive=False,
            wrap=True,
            max_height=240,
            elem_id="dataset-skipped",
        )
        with gr.Accordion("Log", open=False):
            ui["log"] = gr.Textbox(show_label=False, lines=6, max_lines=20, elem_id="dataset-log")
    _wire(ctx, ui)
    return ui


def _wire(ctx: TabContext, ui: dict) -> None:
    view = [ui["recordings"], ui["summary"], ui["clips"], ui["skipped"]]

    def show(voice):
        with engine_errors("Reading the dataset"):
            return recordings_table(voice), *dataset_view(voice)

    def refresh_voices(voice):
        update, voice = voice_dropdown(voice)
        return update, *show(voice)

    def on_create(name):
        with engine_errors("Creating the voice"):
            voice = create_voice(name)
        return voice_dropdown(voice)[0], ""

    def on_upload(voice, files):
        if not voice:
            raise gr.Error("Choose or create a voice before adding recordings.")
        with engine_errors("Saving the recordings"):
            saved, notes = save_recordings(voice, files)
        for note in notes:
            gr.Warning(note)
        if saved:
            gr.Info(f"Added {len(saved)} recording(s) to {voice}.")
        return None, recordings_table(voice)

    def on_transcribe(values, progress=gr.Progress()):  # noqa: B008 (Gradio's documented pattern)
        form = named(values, ui)
        log = LogLines()
        with engine_errors("Transcription"):
            report = run_transcription(form, progress=progress_callable(progress), log=log)
        gr.Info(f"{report.clips} clips made from {report.recordings} recordings.")
        return log.text(), *show(form["voice"])

    def on_select(voice, evt: gr.SelectData):
        row = evt.row_value or []
        if not voice or not row:
            return None
        with engine_errors("Opening the clip"):
            return clip_path(voice, row[0])

    ui["tab"].select(refresh_voices, ui["voice"], [ui["voice"], *view], show_progress="hidden")
    ctx.blocks.load(refresh_voices, ui["voice"], [ui["voice"], *view], show_progress="hidden")
    ui["voice"].input(show, ui["voice"], view)
    ui["create"].click(on_create, ui["new_voice"], [ui["voice"], ui["new_voice"]]).then(show, ui["voice"], view)
    ui["new_voice"].submit(on_create, ui["new_voice"], [ui["voice"], ui["new_voice"]]).then(show, ui["voice"], view)
    ui["upload"].upload(on_upload, [ui["voice"], ui["upload"]], [ui["upload"], ui["recordings"]])
    ui["transcribe"].click(
        on_transcribe,
        {ui[k] for k in ("voice", "backend", "whisper_model", "language", "validation_fraction")},
        [ui["log"], *view],
    )
    ui["clips"].select(on_select, ui["voice"], ui["clip_audio"])
