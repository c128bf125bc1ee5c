"""The Generate tab's export and import: one click packs the chosen run and checkpoint, with the
chosen reference clips and their conditioning latents, into a zip that coqui-tts loads directly
(:func:`engine.generate.export.export_model`); a zip made that way is imported into
``models/imported/<name>/`` (:func:`engine.generate.export.import_model`) and then appears in the Model
list of every voice."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from engine.generate import export
from engine.generate import synthesis as generate
from webui.tabs import FormError, LogLines, TabContext, engine_errors, progress_callable
from webui.tabs import generate_form as gform

EXPORT_HELP = (
    "Packs the chosen run and checkpoint into a zip that coqui-tts loads directly: config.json, "
    "vocab.json, model.pth (the base model with the fine-tuned GPT merged in), dvae.pth, mel_stats.pth, "
    "speakers_xtts.pth with this voice's conditioning latents, the reference clips and a model card "
    "(licence: non-commercial, like XTTS-v2)."
)
BEST_HELP = (
    "The checkpoint that scored best (the highest speaker similarity among those still understood), "
    "instead of the one chosen above; the run's checkpoints must have been scored."
)
IMPORT_HELP = (
    "A zip exported by Timbre (or any zip with an XTTS-v2 folder's files) becomes a model you can choose above."
)


def export_zip(ctx: TabContext, form: dict, log=print, progress=None) -> Path:
    """Export the form's voice, run and checkpoint (the best scored one with ``export_best``)
    with its reference clips; returns the zip."""
    voice, run = form.get("voice"), form.get("run")
    if not voice:
        raise FormError("choose a voice first")
    if not run or run == generate.BASE_MODEL or run.startswith(generate.IMPORTED_PREFIX):
        raise FormError("choose one of the voice's runs as the model: only a fine-tune can be exported")
    checkpoint = gform.BEST if form.get("export_best") else form.get("checkpoint") or gform.LATEST
    return export.export_model(
        voice, run, checkpoint, references=list(form.get("references") or []) or None,
        base_model=ctx.settings.base_model_dir(), synthesizer=gform.synthesizer(ctx), progress=progress, log=log,
    )  # fmt: skip


def suggested_name(zip_path: str | None) -> str:
    """A model name from an uploaded zip's file name (``anna-ft-step-0000004.zip`` → ``anna-ft-step-0000004``)."""
    if not zip_path:
        return ""
    stem = re.sub(r"[^A-Za-z0-9 _.\-]+", "-", Path(zip_path).stem).strip(" .-_")
    return stem[:64].rstrip(" .")


def build(ctx: TabContext, ui: dict) -> None:
    """The export and import section; adds its components to ``ui`` and wires them."""
    with gr.Accordion("Export and import", open=True, elem_id="generate-export-section"):
        with gr.Row(equal_height=True):
            with gr.Column(scale=3):
                gr.Markdown(EXPORT_HELP, elem_classes="generate-help")
                ui["export_best"] = gr.Checkbox(
                    label="Use the best checkpoint", value=False, info=BEST_HELP, elem_id="generate-export-best"
                )
                ui["export"] = gr.Button("Export the chosen run as a zip", elem_id="generate-export")
                ui["export_status"] = gr.Markdown(elem_id="generate-export-status")
            ui["export_file"] = gr.File(
                label="Exported model", interactive=False, scale=2, elem_id="generate-export-file"
            )
        with gr.Row(equal_height=True):
            with gr.Column(scale=3):
                gr.Markdown(IMPORT_HELP, elem_classes="generate-help")
                ui["import_name"] = gr.Textbox(
                    label="Name of the imported model", placeholder="from the file name", elem_id="generate-import-name"
                )
                ui["import"] = gr.Button("Import", elem_id="generate-import")
                ui["import_status"] = gr.Markdown(elem_id="generate-import-status")
            ui["import_file"] = gr.File(
                label="Model zip to import",
                file_types=[".zip"],
                type="filepath",
                scale=2,
                elem_id="generate-import-file",
            )
    _wire(ctx, ui)


def _wire(ctx: TabContext, ui: dict) -> None:
    export_form = {k: ui[k] for k in ("voice", "run", "checkpoint", "references", "export_best")}

    def on_export(values, progress=gr.Progress()):  # noqa: B008 (Gradio's documented pattern)
        log = LogLines()
        form = {name: values[comp] for name, comp in export_form.items()}
        with engine_errors("Export"):
            path = export_zip(ctx, form, log=log, progress=progress_callable(progress))
        return str(path), f"Exported **{path.name}** into `{path.parent}`."

    def on_upload(zip_path, name):
        return gr.skip() if (name or "").strip() else suggested_name(zip_path)

    def on_import(zip_path, name, voice, run):
        if not zip_path:
            raise gr.Error("Choose a zip to import first")
        log = LogLines()
        with engine_errors("Import"):
            folder = export.import_model(zip_path, name or suggested_name(zip_path), log=log)
        choices = gform.model_choices(voice)
        status = f"Imported as **{folder.name}**: choose “{folder.name} (imported)” as the model to speak with it."
        return gr.Dropdown(choices=choices, value=run), status, None, ""

    export_outputs = [ui["export_file"], ui["export_status"]]
    ui["export"].click(on_export, set(export_form.values()), export_outputs, **gform.SYNTHESIZER_QUEUE)
    ui["import_file"].upload(on_upload, [ui["import_file"], ui["import_name"]], ui["import_name"])
    ui["import"].click(
        on_import,
        [ui["import_file"], ui["import_name"], ui["voice"], ui["run"]],
        [ui["run"], ui["import_status"], ui["import_file"], ui["import_name"]],
    )
