"""Dataset tab: pick or create a voice, upload its recordings, transcribe them into clips,
then review the clips.

Recordings are copied into ``voices/<voice>/`` under safe names (an existing file is never
overwritten: identical content is skipped, different content gets a ``-2`` suffix).
Transcribe runs :func:`engine.dataset.prepare.prepare_dataset`; the summary and the skipped list are
read back from ``datasets/<voice>/report.json``. The clips table and editing panel are
:mod:`webui.tabs.dataset_editor`'s, the quality report :mod:`webui.tabs.dataset_report`'s;
:func:`tab_values` gives all of them at once, so every change refreshes the whole tab.
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from engine import languages, paths
from engine.dataset import edit as dataset_edit
from engine.dataset import prepare as dataset
from engine.dataset import quality as dataset_quality
from engine.files import write_bytes_atomic
from engine.speech import audio, transcribe
from webui.tabs import (
    FormError,
    LogLines,
    TabContext,
    dataset_editor,
    dataset_report,
    engine_errors,
    named,
    progress_callable,
    upload_limit,
    voice_dropdown,
)

SKIPPED_COLUMNS = ["file", "part", "reason"]

LANGUAGE_CHOICES = [("Auto-detect", "auto")] + [
    (languages.label(code), languages.to_whisper(code)) for code in languages.CODES
]
"""The transcription languages offered: auto-detection and the 17 XTTS-v2 languages, as the
Whisper codes prepare takes (Whisper's ``zh`` for XTTS-v2's ``zh-cn``)."""
RECORDING_COLUMNS = ["file", "MB", "uploaded as"]


# --- handlers (plain functions; the tests call them directly) --------------------------------


def create_voice(name: str) -> str:
    """Create ``voices/<name>/`` (kept if it exists) and return the checked name."""
    voice = paths.check_name(name or "", "voice name")
    paths.voice_dir(voice).mkdir(parents=True, exist_ok=True)
    return voice


def safe_filename(name: str) -> str:
    """A recording's upload name reduced to letters, digits, ``.``, ``_`` and ``-``, never a
    Windows device name (``CON.wav`` → ``CON_.wav``)."""
    path = Path(name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._-")[:80] or "recording"
    return paths.safe_file_name(stem + path.suffix.lower())


def save_recordings(voice: str, files: list[str]) -> tuple[list[str], list[str]]:
    """Copy uploaded files into ``voices/<voice>/``; returns (saved names, notes on the rest).

    Unsupported extensions are refused; a file whose content is already there is skipped;
    a different file with a taken name is saved as ``<stem>-2<ext>`` (``-3`` …).
    """
    folder = paths.voice_dir(voice)
    folder.mkdir(parents=True, exist_ok=True)
    saved, notes, uploads = [], [], {}
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
        if target.name != source.name:
            uploads[target.name] = source.name
    if uploads:
        _save_upload_names(folder, uploads)
    return saved, notes


UPLOAD_NAMES_FILE = ".uploads.json"
"""``voices/<voice>/.uploads.json``: ``{saved name: name of the uploaded file}`` for recordings
saved under another name (a hidden file: prepare ignores it)."""


def upload_names(voice: str) -> dict[str, str]:
    """The original upload names of a voice's recordings that were renamed when saved."""
    try:
        data = json.loads((paths.voice_dir(voice) / UPLOAD_NAMES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_upload_names(folder: Path, new: dict[str, str]) -> None:
    names = {**upload_names(folder.name), **new}
    text = json.dumps(names, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    write_bytes_atomic(folder / UPLOAD_NAMES_FILE, text.encode("utf-8"))


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
        uploaded = upload_names(voice)
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in audio.SUPPORTED_EXTENSIONS:
                    size = round(path.stat().st_size / 1e6, 2)
                    rows.append([path.name, size, uploaded.get(path.name, "")])
    return pd.DataFrame(rows, columns=RECORDING_COLUMNS)


def read_report(voice: str) -> dict:
    """``datasets/<voice>/report.json``, or {} when there is none (or it cannot be read)."""
    path = paths.dataset_dir(voice) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_quality(voice: str | None) -> dict | None:
    """The voice's quality report (:func:`engine.dataset.quality.quality_report`) after
    bringing csv files left behind by an interrupted save up to date; for a dataset made
    outside Timbre (csv files, no report.json) its csv rows, marked ``"editable": False``;
    None without a dataset. Raises DatasetEditError for an unreadable report.json or edits.json."""
    if not voice:
        return None
    if (paths.dataset_dir(voice) / "report.json").is_file():
        dataset_edit.sync_metadata(voice)
        return dataset_quality.quality_report(voice)
    clips = dataset.load_clips(voice)
    if not clips:
        return None
    rows = [
        {**clip, "duration": clip.get("duration") or 0.0, "rms_dbfs": None, "flags": [], "origin": "whisper"}
        for clip in clips
    ]
    return {"editable": False, "per_clip": rows}


def summary_markdown(voice: str | None, quality: dict | None) -> str:
    """One line on the voice's dataset: clips per split, speech, recordings, the Whisper model."""
    if not voice:
        return "Choose or create a voice."
    if not quality:
        return f"**{voice}** has no dataset yet: add recordings and press Transcribe."
    rows = quality["per_clip"]
    count = {split: sum(row["split"] == split for row in rows) for split in ("train", "validation", "excluded")}
    seconds = sum(row["duration"] for row in rows if row["split"] != "excluded")
    parts = f"{count['train']} train, {count['validation']} validation"
    parts += f", {count['excluded']} excluded" if count["excluded"] else ""
    summary = f"**{voice}**: {len(rows)} clips ({parts}), {seconds:.1f} s of speech"
    report = read_report(voice)
    if report:
        summary += (
            f" from {report.get('recordings', '?')} recordings; {len(report.get('skipped', []))} skipped. "
            f"Transcribed with {report.get('backend')} `{report.get('model')}`"
        )
        if report.get("language"):
            how = "detected" if report.get("requested_language", "auto") == "auto" else "chosen"
            summary += f", language **{report['language']}** ({how})"
        summary += "."
        coverage = report.get("coverage") or {}
        if coverage.get("speech_seconds"):
            summary += (
                f" Speech found by the VAD: {coverage['speech_seconds']:.1f} s, of which "
                f"{coverage.get('clip_seconds', 0):.1f} s is in clips"
                f" ({len(coverage.get('uncovered', []))} stretches in no clip, listed under Skipped)."
            )
        mismatched = (report.get("verification") or {}).get("mismatched")
        if mismatched:
            summary += (
                f" {mismatched} clip{'s' if mismatched != 1 else ''} left out because the text does not match"
                " the audio (restore in the clip editor after a listen)."
            )
    edited = sum(row.get("origin", "whisper") != "whisper" for row in rows)
    if edited:
        summary += f" {edited} transcript{'s' if edited != 1 else ''} edited (✎)."
    if quality.get("editable") is False:
        summary += " Made outside Timbre (no report.json): transcribe the recordings to edit the clips."
    return summary


def skipped_table(voice: str | None) -> pd.DataFrame:
    """Recordings that made no clip, and stretches of recordings that were dropped, with why."""
    report = read_report(voice) if voice else {}
    rows = [[s.get("file", ""), "whole file", s.get("reason", "")] for s in report.get("skipped", [])]
    rows += [
        [
            d.get("file", ""),
            f"{d.get('start', 0):.1f}-{d.get('end', 0):.1f} s {d.get('text', '')!r}",
            d.get("reason", ""),
        ]
        for d in report.get("dropped", [])
    ]
    rows += [
        [
            u.get("file", ""),
            f"{u.get('start', 0):.1f}-{u.get('end', 0):.1f} s of speech in no clip",
            u.get("reason", ""),
        ]
        for u in (report.get("coverage") or {}).get("uncovered", [])
    ]
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS)


def transcription_settings(voice: str | None, settings) -> tuple[str, str, str]:
    """``(backend, whisper model, language)`` for the form: the voice's last used settings
    (:func:`engine.dataset.prepare.voice_settings`), else the app's Settings and auto-detection."""
    saved = dataset.voice_settings(voice) if voice else {}
    backend = saved.get("backend") or settings.whisper_backend
    model = saved["whisper_model"] if "whisper_model" in saved else settings.whisper_model
    return backend, model, saved.get("language") or "auto"


def tab_values(voice: str | None, show: str = "all", selected: str | None = None) -> dict:
    """Everything the tab shows for ``voice``, by the names of :data:`VIEW_KEYS`; the editing
    panel keeps ``selected`` (``wavs/…``) while that clip exists."""
    quality = read_quality(voice)
    report_quality = quality if quality and quality.get("editable") is not False else None
    values = {
        "recordings": recordings_table(voice),
        "summary": summary_markdown(voice, quality),
        "skipped": skipped_table(voice),
        "clips": dataset_editor.clip_table(quality, show),
    }
    values.update(zip(dataset_editor.PANEL_KEYS, dataset_editor.panel(voice, selected, quality), strict=True))
    values.update(zip(dataset_report.OUTPUT_KEYS, dataset_report.report_view(report_quality), strict=True))
    return values


VIEW_KEYS = ("recordings", "summary", "skipped", "clips", *dataset_editor.PANEL_KEYS, *dataset_report.OUTPUT_KEYS)


def clip_path(voice: str, audio_file: str) -> str:
    """The absolute path of a clip named in the table; raises FormError (a ValueError) outside the dataset."""
    base = paths.dataset_dir(voice).resolve()
    path = (base / audio_file).resolve()
    if base not in path.parents or not path.is_file():
        raise FormError(f"no clip {audio_file!r} in {base}")
    return str(path)


def run_transcription(form: dict, progress=None, log=print) -> dataset.DatasetReport:
    """Call :func:`engine.dataset.prepare.prepare_dataset` with the form's values."""
    if not form.get("voice"):
        raise FormError("choose or create a voice first")
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
                    label=f"Add recordings ({' '.join(audio.SUPPORTED_EXTENSIONS)}; up to {upload_limit(ctx)} each)",
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
                LANGUAGE_CHOICES,
                value="auto",
                allow_custom_value=True,
                label="Language",
                info="Auto: detected per recording (needs a multilingual model; *.en models are English-only).",
                elem_id="dataset-language",
            )
            ui["validation_fraction"] = gr.Slider(
                0.0, 0.5, value=0.15, step=0.05, label="Validation share", elem_id="dataset-validation"
            )
        ui["transcribe"] = gr.Button("Transcribe", variant="primary", elem_id="dataset-transcribe")
        ui["summary"] = gr.Markdown(elem_id="dataset-summary")  # filled on load
        dataset_editor.build(ui)
        dataset_report.build(ui)
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
    view = [ui[key] for key in VIEW_KEYS]

    def show(voice, show="all", selected=None):
        with engine_errors("Reading the dataset"):
            values = tab_values(voice, show or "all", selected)
        return tuple(values[key] for key in VIEW_KEYS)

    def refresh_voices(voice, show_choice, selected):
        update, voice = voice_dropdown(voice)
        return update, *show(voice, show_choice, selected)

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
        return log.text(), *show(form["voice"], form.get("show"), form.get("selected"))

    keep = [ui["voice"], ui["show"], ui["selected"]]
    ui["tab"].select(refresh_voices, keep, [ui["voice"], *view], show_progress="hidden")
    ctx.blocks.load(refresh_voices, keep, [ui["voice"], *view], show_progress="hidden")
    settings_outputs = [ui["backend"], ui["whisper_model"], ui["language"]]

    def on_voice_settings(voice):
        with engine_errors("Reading the voice's settings"):
            return transcription_settings(voice, ctx.settings)

    ui["voice"].input(show, ui["voice"], view).then(on_voice_settings, ui["voice"], settings_outputs)
    ctx.blocks.load(on_voice_settings, ui["voice"], settings_outputs, show_progress="hidden")
    ui["create"].click(on_create, ui["new_voice"], [ui["voice"], ui["new_voice"]]).then(show, ui["voice"], view)
    ui["new_voice"].submit(on_create, ui["new_voice"], [ui["voice"], ui["new_voice"]]).then(show, ui["voice"], view)
    ui["upload"].upload(on_upload, [ui["voice"], ui["upload"]], [ui["upload"], ui["recordings"]])
    ui["transcribe"].click(
        on_transcribe,
        {ui[k] for k in ("voice", "backend", "whisper_model", "language", "validation_fraction", "show", "selected")},
        [ui["log"], *view],
    )
    dataset_editor.wire(ui, show, view, read_quality)
