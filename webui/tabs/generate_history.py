"""The Generate tab's history: every output of the voice (``outputs/<voice>/``, newest first)
in a table; selecting one plays it and shows its settings, and "Generate again with these
settings" fills the form from the output's JSON."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.generate import synthesis as generate
from webui.tabs import TabContext, engine_errors, pick
from webui.tabs import generate_form as gform

OUTPUT_COLUMNS = ["created", "text", "model", "checkpoint", "seed", "candidate", "seconds", "file"]
NOTHING_SELECTED = "Select an output in the table to play it and see its settings."


def outputs_table(voice: str | None) -> pd.DataFrame:
    """Past outputs of the voice, newest first, one row each (the file name last)."""
    rows = []
    for item in generate.list_outputs(voice) if voice else []:
        created = item.get("created")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else ""
        settings = item.get("settings") or {}
        # "latest" is resolved to the step it meant when the weights file is recorded.
        checkpoint = Path(item["weights"]).parent.name if item.get("weights") else item.get("checkpoint") or ""
        candidate = f"{item['candidate']} of {item['candidates']}" if item.get("candidates", 1) > 1 else ""
        rows.append([when, item.get("text", ""), item.get("run", ""), checkpoint, settings.get("seed"), candidate,
                     item.get("seconds"), item["name"]])  # fmt: skip
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def output_path(voice: str, name: str) -> str:
    """The path of a past output named in the table; raises ValueError outside outputs/<voice>/."""
    return generate.read_output(voice, name)["path"]


def describe_output(meta: dict) -> str:
    """Markdown: what made a past output (model, references, every setting)."""
    settings = meta.get("settings") or {}
    model = meta.get("run") or generate.BASE_MODEL
    if meta.get("checkpoint"):
        model += f" · {meta['checkpoint']}"
    refs = ", ".join(Path(r).name for r in meta.get("references") or []) or "the voice's recordings"
    shown = " · ".join(f"{name.replace('_', ' ')} {value}" for name, value in settings.items())
    extra = " · streamed" if meta.get("streamed") else ""
    if meta.get("candidates", 1) > 1:
        extra += f" · candidate {meta['candidate']} of {meta['candidates']}"
    return (
        f"**{meta.get('name', '')}** — “{meta.get('text', '')}”  \n"
        f"Model: {model} · language {meta.get('language', 'en')} · references: {refs}{extra}  \n"
        f"{shown}  \n{meta.get('seconds', '?')} s of speech, real-time factor {meta.get('real_time_factor', '?')}"
    )


def fill_form(voice: str, name: str) -> tuple[dict, list[str]]:
    """Form values (by field name) from the past output ``name``, limited to what the form can
    show now, and warnings for what is gone (a deleted run, checkpoint or reference)."""
    meta = generate.read_output(voice, name)
    values = gform.form_from_output(meta)
    warnings = []
    models = gform.run_choices(voice)
    if values["run"] not in models:
        warnings.append(f"{values['run']} no longer exists: using the base model")
        values["run"] = generate.BASE_MODEL
    checkpoints = gform.checkpoint_choices(voice, values["run"])
    if values["checkpoint"] not in checkpoints:
        if not warnings:  # a deleted run has no checkpoints to speak of
            warnings.append(f"checkpoint {values['checkpoint']} no longer exists: using the latest")
        values["checkpoint"] = gform.LATEST
    available = [ref_id for _, ref_id in gform.reference_choices(voice)]
    gone = [r for r in values["references"] if r not in available]
    if gone:
        warnings.append(f"reference clip(s) gone: {', '.join(gone)}")
        values["references"] = [r for r in values["references"] if r in available]
    return values, warnings


def build(ctx: TabContext, ui: dict) -> None:
    """The history section; adds its components to ``ui`` and wires them to the form in ``ui``."""
    with gr.Accordion("History", open=True, elem_id="generate-history"):
        ui["outputs"] = gr.Dataframe(
            pd.DataFrame(columns=OUTPUT_COLUMNS),
            label="Past outputs (select a row to play it)",
            interactive=False,
            wrap=True,
            max_height=320,
            column_widths=["12%", "26%", "17%", "11%", "6%", "8%", "7%", "13%"],
            elem_id="generate-outputs",
        )
        with gr.Row(equal_height=True):
            ui["history_audio"] = gr.Audio(
                label="Selected output", type="filepath", interactive=False, elem_id="generate-history-audio"
            )
            with gr.Column():
                ui["history_details"] = gr.Markdown(NOTHING_SELECTED, elem_id="generate-history-details")
                ui["reuse"] = gr.Button(
                    "Generate again with these settings", interactive=False, elem_id="generate-reuse"
                )
        ui["history_selected"] = gr.State(None)
    _wire(ui)


def _wire(ui: dict) -> None:
    settings = ui["settings"]
    filled = [ui[k] for k in ("run", "checkpoint", "language", "text", "seed", "references", "candidates")]
    filled += list(settings.values())

    def on_select(voice, evt: gr.SelectData):
        row = evt.row_value or []
        if not voice or not row:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        with engine_errors("Opening the output"):
            meta = generate.read_output(voice, row[-1])
        return meta["path"], describe_output(meta), gr.Button(interactive=True), meta["name"]

    def on_reuse(voice, name):
        if not voice or not name:
            raise gr.Error("Select an output in the history first")
        with engine_errors("Reading the output's settings"):
            values, warnings = fill_form(voice, name)
        for warning in warnings:
            gr.Warning(warning)
        models = gform.model_choices(voice)
        checkpoints = gform.checkpoint_choices(voice, values["run"])
        updates = [
            gr.Dropdown(choices=models, value=pick([v for _, v in models], values["run"])),
            gr.Dropdown(choices=checkpoints, value=values["checkpoint"]),
            values["language"],
            values["text"],
            values["seed"],
            gr.Dropdown(choices=gform.reference_choices(voice), value=values["references"]),
            values["candidates"],
        ]
        return updates + [values[name] for name in settings]

    selection = [ui["history_audio"], ui["history_details"], ui["reuse"], ui["history_selected"]]
    ui["outputs"].select(on_select, ui["voice"], selection, show_progress="hidden")
    ui["reuse"].click(on_reuse, [ui["voice"], ui["history_selected"]], filled, show_progress="hidden")


def cleared() -> list:
    """Updates that clear the selection (after the voice changes)."""
    return [None, NOTHING_SELECTED, gr.Button(interactive=False), None]
