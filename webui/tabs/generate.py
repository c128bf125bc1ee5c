"""Generate tab: speak a text with a voice, using a run's checkpoint or the base model.

Calls :func:`engine.generate.generate_speech` with a :class:`engine.generate.Synthesizer` kept
in the app context (the model loads once; switching checkpoints reloads only GPT weights).
Past outputs are listed from ``outputs/<voice>/`` with the settings saved beside each file.
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing
from pathlib import Path

import gradio as gr
import pandas as pd

from engine import generate, paths, runs
from engine.models import LANGUAGES
from webui.tabs import LogLines, TabContext, engine_errors, named, pick, voice_dropdown

OUTPUT_COLUMNS = ["created", "text", "run", "checkpoint", "seed", "file"]
LATEST = "latest"
#: Slider ranges (minimum, maximum, step) of the sampling settings.
RANGES = {
    "temperature": (0.05, 1.5, 0.05),
    "top_k": (1, 100, 1),
    "top_p": (0.05, 1.0, 0.05),
    "repetition_penalty": (1.0, 20.0, 0.5),
    "length_penalty": (0.5, 2.0, 0.1),
    "speed": (0.5, 2.0, 0.05),
    "max_seconds": (0.0, 30.0, 0.5),
}
FIELDS_SET_ELSEWHERE = ("seed",)


def settings_help() -> dict[str, str]:
    """Help per GenerationSettings field, from the ``name: text`` lines of its docstring."""
    help_text: dict[str, str] = {}
    current: list[str] = []
    for line in (generate.GenerationSettings.__doc__ or "").splitlines():
        match = re.match(r"^\s{4}([a-z_, ]+):\s+(.*)$", line)
        if match:
            current = [n.strip() for n in match.group(1).split(",")]
            for name in current:
                help_text[name] = match.group(2)
        elif line.strip() and current and line.startswith(" " * 8):
            for name in current:
                help_text[name] += " " + line.strip()
        else:
            current = []
    return {name: text[:1].upper() + text[1:] for name, text in help_text.items()}


def settings_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(generate.GenerationSettings) if f.name not in FIELDS_SET_ELSEWHERE]


def run_choices(voice: str | None) -> list[str]:
    """The base model, then the voice's runs."""
    return [generate.BASE_MODEL, *(paths.list_runs(voice) if voice else [])]


def checkpoint_choices(voice: str | None, run: str | None) -> list[str]:
    """ "latest", then the run's complete checkpoints, newest first (only "latest" for the base model)."""
    if not voice or not run or run == generate.BASE_MODEL:
        return [LATEST]
    complete = [c.name for c in runs.list_checkpoints(paths.run_dir(voice, run)) if c.complete]
    return [LATEST, *reversed(complete)]


def outputs_table(voice: str | None) -> pd.DataFrame:
    """Past outputs of the voice, newest first."""
    rows = []
    for item in generate.list_outputs(voice) if voice else []:
        created = item.get("created")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if isinstance(created, (int, float)) else ""
        seed = (item.get("settings") or {}).get("seed")
        # "latest" is resolved to the step it meant when the weights file is recorded.
        checkpoint = Path(item["weights"]).parent.name if item.get("weights") else item.get("checkpoint") or ""
        rows.append(
            [
                when,
                item.get("text", ""),
                item.get("run", ""),
                checkpoint,
                seed,
                Path(item["path"]).name,
            ]
        )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def output_path(voice: str, name: str) -> str:
    """The path of a past output named in the table; raises ValueError outside outputs/<voice>/."""
    base = paths.output_dir(voice).resolve()
    path = (base / name).resolve()
    if path.parent != base or not path.is_file():
        raise ValueError(f"no output {name!r} in {base}")
    return str(path)


def make_settings(form: dict) -> generate.GenerationSettings:
    """GenerationSettings from the form; an empty seed draws one."""
    hints = typing.get_type_hints(generate.GenerationSettings)
    values = {}
    for f in settings_fields():
        if f.name in form and form[f.name] is not None:
            values[f.name] = hints[f.name](form[f.name]) if hints[f.name] in (int, float, bool) else form[f.name]
    seed = str(form.get("seed") or "").strip()
    if seed and not seed.isdigit():
        raise ValueError(f"seed must be a whole number or empty, got {seed!r}")
    return generate.GenerationSettings(**values, seed=int(seed) if seed else None)


def speak(ctx: TabContext, form: dict, log=print) -> Path:
    """Generate speech from the form's values with the app's synthesizer; returns the WAV path."""
    voice = form.get("voice")
    if not voice:
        raise ValueError("choose a voice first")
    base_model = ctx.settings.base_model_dir()
    if ctx.synthesizer is None or Path(ctx.synthesizer.base_model) != Path(base_model):
        ctx.synthesizer = generate.Synthesizer(base_model)
    run = form.get("run") or generate.BASE_MODEL
    return generate.generate_speech(
        voice,
        form.get("text") or "",
        run=None if run == generate.BASE_MODEL else run,
        checkpoint=form.get("checkpoint") or LATEST,
        base_model=base_model,
        settings=make_settings(form),
        language=form.get("language") or "en",
        synthesizer=ctx.synthesizer,
        log=log,
    )


def build(ctx: TabContext) -> dict:
    """The Generate tab; returns its components by name (sampling settings under ``ui["settings"]``)."""
    ui: dict = {"settings": {}}
    defaults = generate.GenerationSettings()
    help_text = settings_help()
    with gr.Tab("Generate", id="generate", elem_id="tab-generate") as ui["tab"]:
        with gr.Row(equal_height=True):
            ui["voice"] = gr.Dropdown(label="Voice", choices=[], elem_id="generate-voice")
            ui["run"] = gr.Dropdown(
                label="Run", choices=[generate.BASE_MODEL], value=generate.BASE_MODEL, elem_id="generate-run"
            )
            ui["checkpoint"] = gr.Dropdown(
                label="Checkpoint", choices=[LATEST], value=LATEST, elem_id="generate-checkpoint"
            )
            ui["language"] = gr.Dropdown(
                list(LANGUAGES), value="en", allow_custom_value=True, label="Language", elem_id="generate-language"
            )
            ui["seed"] = gr.Textbox(label="Seed", placeholder="random", elem_id="generate-seed")
        ui["text"] = gr.Textbox(
            label="Text", lines=3, placeholder="What should the voice say?", elem_id="generate-text"
        )
        ui["generate"] = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                for f in settings_fields():
                    common = {
                        "label": f.name.replace("_", " ").capitalize(),
                        "info": help_text.get(f.name),
                        "value": getattr(defaults, f.name),
                    }
                    common["elem_id"] = f"generate-{f.name.replace('_', '-')}"
                    if isinstance(common["value"], bool):
                        ui["settings"][f.name] = gr.Checkbox(**common)
                    elif f.name in RANGES:
                        low, high, step = RANGES[f.name]
                        ui["settings"][f.name] = gr.Slider(low, high, step=step, min_width=220, **common)
                    else:
                        ui["settings"][f.name] = gr.Number(min_width=220, **common)
        ui["audio"] = gr.Audio(label="Speech", type="filepath", interactive=False, elem_id="generate-audio")
        ui["info"] = gr.Markdown(elem_id="generate-info")
        ui["outputs"] = gr.Dataframe(
            pd.DataFrame(columns=OUTPUT_COLUMNS),
            label="Past outputs (select a row to play it)",
            interactive=False,
            wrap=True,
            max_height=300,
            elem_id="generate-outputs",
        )
    _wire(ctx, ui)
    return ui


def _wire(ctx: TabContext, ui: dict) -> None:
    form = {k: ui[k] for k in ("voice", "run", "checkpoint", "language", "text", "seed")} | ui["settings"]

    def on_voice(voice):
        with engine_errors("Listing runs"):
            choices = run_choices(voice)
            run = choices[-1]  # the newest-named run, else the base model
            checkpoints = checkpoint_choices(voice, run)
            return (
                gr.Dropdown(choices=choices, value=run),
                gr.Dropdown(choices=checkpoints, value=LATEST),
                outputs_table(voice),
            )

    def on_refresh(voice, run, checkpoint):
        update, shown = voice_dropdown(voice)
        if shown != voice:
            return update, *on_voice(shown)
        with engine_errors("Listing runs"):
            choices = run_choices(voice)
            run = pick(choices, run, choices[-1])
            checkpoints = checkpoint_choices(voice, run)
            return (
                update,
                gr.Dropdown(choices=choices, value=run),
                gr.Dropdown(choices=checkpoints, value=pick(checkpoints, checkpoint)),
                outputs_table(voice),
            )

    def on_run(voice, run):
        with engine_errors("Listing checkpoints"):
            return gr.Dropdown(choices=checkpoint_choices(voice, run), value=LATEST)

    def on_generate(values):
        log = LogLines()
        with engine_errors("Generation"):
            path = speak(ctx, named(values, form), log=log)
        voice = values[ui["voice"]]
        return str(path), "  \n".join(log[-2:]), outputs_table(voice)

    def on_select(voice, evt: gr.SelectData):
        row = evt.row_value or []
        if not voice or not row:
            return gr.skip()
        with engine_errors("Opening the output"):
            return output_path(voice, row[-1])

    choosers = [ui["voice"], ui["run"], ui["checkpoint"]]
    refresh_outputs = [*choosers, ui["outputs"]]
    ctx.blocks.load(on_refresh, choosers, refresh_outputs, show_progress="hidden")
    ui["tab"].select(on_refresh, choosers, refresh_outputs, show_progress="hidden")
    ui["voice"].input(on_voice, ui["voice"], [ui["run"], ui["checkpoint"], ui["outputs"]])
    ui["run"].input(on_run, [ui["voice"], ui["run"]], ui["checkpoint"])
    ui["generate"].click(on_generate, set(form.values()), [ui["audio"], ui["info"], ui["outputs"]])
    ui["outputs"].select(on_select, ui["voice"], ui["audio"])
