"""Settings tab: the XTTS-v2 base-model folder (status, licence, download), Whisper defaults and
the upload limit.

The download only ever starts from the Download button, after the user ticks the licence box;
it calls :func:`engine.models.download_base_model` with a plain progress callable.
"""

from __future__ import annotations

import dataclasses

import gradio as gr

from engine import models, paths, transcribe
from engine.settings import format_size, parse_size
from webui.tabs import AppSettings, LogLines, TabContext, engine_errors, progress_callable


def model_status(directory: str) -> tuple[str, bool]:
    """(markdown describing the base-model folder, whether it is ready)."""
    status = models.base_model_status(directory or None)
    if status.ready:
        return f"**Ready.** {status.describe()}", True
    present = ", ".join(status.present) or "none"
    return f"**Not ready.** {status.describe()}  \nPresent: {present}", False


def license_markdown() -> str:
    return f"### Licence: {models.LICENSE_NAME}\n\n{models.LICENSE_SUMMARY}"


def download(directory: str, accepted: bool, progress=None, log=print):
    """Download the XTTS-v2 files after licence acceptance (PermissionError without it)."""
    return models.download_base_model(directory or None, accept_license=bool(accepted), progress=progress, log=log)


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
        ui["base_model"] = gr.Textbox(
            value=lambda: settings.base_model_dir(),
            label="Base model folder (XTTS-v2)",
            info="Holds model.pth, config.json, vocab.json, dvae.pth, mel_stats.pth.",
            elem_id="settings-base-model",
        )
        ui["model_status"] = gr.Markdown(elem_id="settings-model-status")
        ui["license"] = gr.Markdown(license_markdown(), elem_id="settings-license")
        with gr.Row(equal_height=True):
            ui["accept"] = gr.Checkbox(
                label=f"I accept the {models.LICENSE_NAME} (non-commercial use only)",
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

    def show_status(directory, accepted):
        with engine_errors("Checking the base model"):
            text, ready = model_status(directory)
        return text, gr.Button(interactive=bool(accepted) and not ready)

    def on_change(directory, backend, whisper_model, accepted):
        before = dataclasses.asdict(settings)
        apply_settings(settings, directory, backend, whisper_model)
        if dataclasses.asdict(settings) != before:  # the page filling in its fields on load is no change
            ctx.save_settings()
        return show_status(directory, accepted)

    def on_download(directory, accepted, progress=gr.Progress()):  # noqa: B008 (Gradio's documented pattern)
        log = LogLines()
        with engine_errors("Downloading XTTS-v2"):
            download(directory, accepted, progress=progress_callable(progress), log=log)
        text, ready = model_status(directory)
        return gr.Textbox(value=log.text(), visible=True), text, gr.Button(interactive=not ready)

    inputs = [ui["base_model"], ui["whisper_backend"], ui["whisper_model"], ui["accept"]]
    status_outputs = [ui["model_status"], ui["download"]]
    gr.on(
        [ui["base_model"].change, ui["whisper_backend"].change, ui["whisper_model"].change],
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
    ui["accept"].change(show_status, [ui["base_model"], ui["accept"]], status_outputs)
    ctx.blocks.load(show_status, [ui["base_model"], ui["accept"]], status_outputs, show_progress="hidden")
    ui["download"].click(
        on_download, [ui["base_model"], ui["accept"]], [ui["download_log"], ui["model_status"], ui["download"]]
    )
    return ui
