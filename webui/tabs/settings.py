"""Settings tab: the XTTS-v2 base-model folder (status, licence, download), Whisper defaults and
the upload limit.

The download only ever starts from the Download button, after the user ticks the licence box;
it calls :func:`engine.models.download_base_model` with a plain progress callable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr

from engine import models, paths
from engine.settings import format_size, parse_size
from engine.speech import transcribe
from webui.tabs import AppSettings, LogLines, TabContext, engine_errors, progress_callable

#: The families a base model can be of (label, value).
FAMILY_CHOICES = [("XTTS-v2", "xtts"), ("F5-TTS v1", "f5")]


def model_status(directory: str, family: str = "xtts") -> tuple[str, bool]:
    """(markdown describing the base-model folder for ``family``, whether it is ready)."""
    if family == "xtts":
        status = models.base_model_status(directory or None)
        if status.ready:
            return f"**Ready.** {status.describe()}", True
        present = ", ".join(status.present) or "none"
        return f"**Not ready.** {status.describe()}  \nPresent: {present}", False
    folder = Path(directory) if directory else paths.default_base_model_dir(family)
    spec = models.get_family(family)
    missing = spec.missing_files(folder)
    if not missing:
        return f"**Ready.** {spec.title} base model ready in {folder}", True
    return f"**Not ready.** {spec.title} base model missing in {folder}: {', '.join(missing)}", False


def license_markdown(family: str = "xtts") -> str:
    spec = models.get_family(family)
    return f"### Licence of {spec.title}: {spec.license_name}\n\n{spec.license_summary}"


def download(directory: str, accepted: bool, progress=None, log=print, family: str = "xtts"):
    """Download the family's base-model files after licence acceptance (PermissionError without it)."""
    if family == "xtts":
        return models.download_base_model(directory or None, accept_license=bool(accepted), progress=progress, log=log)
    from engine.models.f5 import download_base_model

    folder = directory or str(paths.default_base_model_dir(family))
    return download_base_model(folder, accept_license=bool(accepted), progress=progress, log=log)


def family_of_folder(directory: str) -> str:
    """The family of the folder in the Settings box (XTTS-v2 for an empty or unknown one)."""
    return models.family_of(Path(directory)) if directory else "xtts"


def apply_settings(settings: AppSettings, base_model: str, backend: str, whisper_model: str) -> None:
    """Store the Settings tab's values where the other tabs' handlers read them."""
    settings.base_model = (base_model or "").strip()
    settings.whisper_backend = backend or settings.whisper_backend
    settings.whisper_model = (whisper_model or "").strip()


def set_upload_limit(settings: AppSettings, text: str) -> tuple[str, bool]:
    """Store the upload limit typed in the Settings tab: (note for the page, whether it changed).
    A size :func:`engine.settings.parse_size` refuses leaves the setting as it was."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        return f"⚠ {exc}; the limit stays {settings.max_file_size}.", False
    if text.strip() == settings.max_file_size:
        return "", False
    settings.max_file_size = text.strip()
    return f"Uploads up to {format_size(size)} per file from the next start of the app.", True


def build(ctx: TabContext) -> dict:
    """The Settings tab; returns its components by name."""
    settings = ctx.settings
    ui: dict = {}
    with gr.Tab("Settings", id="settings", elem_id="tab-settings") as ui["tab"]:
        gr.Markdown(f"Data folder: `{paths.home()}` (set `TIMBRE_HOME` to move it).", elem_id="settings-home")
        ui["family"] = gr.Radio(
            FAMILY_CHOICES,
            value=lambda: family_of_folder(settings.base_model_dir()),
            label="Model family",
            info="XTTS-v2 (a GPT over audio codes) or F5-TTS v1 (flow matching); the folder below decides it.",
            elem_id="settings-family",
        )
        ui["base_model"] = gr.Textbox(
            value=lambda: settings.base_model_dir(),
            label="Base model folder",
            info="XTTS-v2: model.pth, config.json, vocab.json, dvae.pth, mel_stats.pth. F5-TTS v1: a model "
            "safetensors, vocab.txt and vocoder/ (Vocos).",
            elem_id="settings-base-model",
        )
        ui["model_status"] = gr.Markdown(elem_id="settings-model-status")
        ui["license"] = gr.Markdown(license_markdown(), elem_id="settings-license")
        with gr.Row(equal_height=True):
            ui["accept"] = gr.Checkbox(
                label="I accept the licence above (non-commercial use only)",
                value=False,
                elem_id="settings-accept",
            )
            ui["download"] = gr.Button("Download XTTS-v2", interactive=False, elem_id="settings-download")
        ui["download_log"] = gr.Textbox(label="Download log", lines=4, visible=False, elem_id="settings-download-log")
        gr.Markdown("### Transcription defaults")
        with gr.Row():
            ui["whisper_backend"] = gr.Dropdown(
                list(transcribe.BACKENDS),
                value=lambda: settings.whisper_backend,
                label="Default Whisper backend",
                elem_id="settings-whisper-backend",
            )
            ui["whisper_model"] = gr.Textbox(
                value=lambda: settings.whisper_model,
                label="Default Whisper model",
                placeholder="default: " + ", ".join(f"{b}: {m}" for b, m in transcribe.DEFAULT_MODELS.items()),
                info="A model name or a local path.",
                elem_id="settings-whisper-model",
            )
        gr.Markdown("### Uploads")
        ui["max_file_size"] = gr.Textbox(
            value=lambda: settings.max_file_size,
            label="Upload limit per file",
            info="For example 500mb or 4gb. The server refuses larger uploads (HTTP 413). Applies from the next "
            "start; python -m webui --max-file-size overrides it.",
            elem_id="settings-max-file-size",
        )
        ui["max_file_size_note"] = gr.Markdown(elem_id="settings-max-file-size-note")

    def show_status(directory, accepted, family="xtts"):
        with engine_errors("Checking the base model"):
            text, ready = model_status(directory, family)
        title = models.get_family(family).title
        return text, gr.Button(f"Download {title}", interactive=bool(accepted) and not ready)

    def on_family(family, directory, accepted):
        """Another family: its licence, its download, and its default folder in place of the other's."""
        defaults = {str(paths.default_base_model_dir(value)) for _, value in FAMILY_CHOICES}
        if not directory or directory in defaults:
            directory = str(paths.default_base_model_dir(family))
        return (directory, license_markdown(family), gr.Checkbox(value=False), *show_status(directory, False, family))

    def on_folder(directory, family):
        """A folder of the other family typed in: the family follows it."""
        found = family_of_folder(directory)
        ready = not models.get_family(found).missing_files(Path(directory)) if directory else False
        if not ready or found == family:
            return gr.skip(), gr.skip()
        return found, license_markdown(found)

    def on_change(directory, backend, whisper_model, accepted, family):
        before = dataclasses.asdict(settings)
        apply_settings(settings, directory, backend, whisper_model)
        if dataclasses.asdict(settings) != before:  # the page filling in its fields on load is no change
            ctx.save_settings()
        return show_status(directory, accepted, family)

    def on_download(directory, accepted, family, progress=gr.Progress()):  # noqa: B008 (Gradio's documented pattern)
        log = LogLines()
        with engine_errors(f"Downloading {models.get_family(family).title}"):
            download(directory, accepted, progress=progress_callable(progress), log=log, family=family)
        text, ready = model_status(directory, family)
        return gr.Textbox(value=log.text(), visible=True), text, gr.Button(interactive=not ready)

    inputs = [ui["base_model"], ui["whisper_backend"], ui["whisper_model"], ui["accept"], ui["family"]]
    status_outputs = [ui["model_status"], ui["download"]]
    ui["family"].input(
        on_family, [ui["family"], ui["base_model"], ui["accept"]],
        [ui["base_model"], ui["license"], ui["accept"], *status_outputs],
    )  # fmt: skip
    ui["base_model"].input(on_folder, [ui["base_model"], ui["family"]], [ui["family"], ui["license"]])
    gr.on(
        [ui["base_model"].change, ui["whisper_backend"].change, ui["whisper_model"].change, ui["family"].change],
        on_change,
        inputs,
        status_outputs,
        show_progress="hidden",
    )

    def on_upload_limit(text):
        note, changed = set_upload_limit(settings, text)
        if changed:
            ctx.save_settings()
        return note

    ui["max_file_size"].change(on_upload_limit, ui["max_file_size"], ui["max_file_size_note"], show_progress="hidden")
    status_inputs = [ui["base_model"], ui["accept"], ui["family"]]
    ui["accept"].change(show_status, status_inputs, status_outputs)
    ctx.blocks.load(show_status, status_inputs, status_outputs, show_progress="hidden")
    ctx.blocks.load(lambda family: license_markdown(family), ui["family"], ui["license"], show_progress="hidden")
    ui["download"].click(on_download, status_inputs, [ui["download_log"], ui["model_status"], ui["download"]])
    return ui
