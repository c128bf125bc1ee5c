"""Generate tab: speak a text with a voice — the base model, a run's checkpoint or an imported
model — conditioned on chosen reference clips; several candidates at once, optionally streamed.

Three modules: :mod:`generate_form` (choices, form ⇄ settings, engine calls),
:mod:`generate_history` (past outputs: play, inspect, generate again) and
:mod:`generate_export` (export a fine-tune as a coqui-loadable zip, import one). This one lays
out the form and the players and wires generation. The app keeps one
:class:`engine.generate.synthesis.Synthesizer` (``ctx.synthesizer``): the model loads once, switching
models reloads only GPT weights, and conditioning latents are cached.
"""

from __future__ import annotations

import io
import shutil
import wave

import gradio as gr
import numpy as np

from engine import languages, paths
from engine.generate import synthesis as generate
from engine.models import OUTPUT_SAMPLE_RATE
from webui.tabs import (
    ENGINE_ERRORS,
    LogLines,
    TabContext,
    browser_text,
    engine_errors,
    named,
    pick,
    progress_callable,
    voice_dropdown,
)
from webui.tabs import generate_export as gexport
from webui.tabs import generate_form as gform
from webui.tabs import generate_history as ghistory
from webui.tabs.generate_form import LATEST, checkpoint_labels

STREAM_HELP = "Play the first candidate while it is being spoken (needs ffmpeg on the server)."
RANK_HELP = (
    "With several candidates: transcribe each with Whisper and compare it with the voice's dataset, then show "
    "them best first (understood first, then the closest voice by SECS) with their CER and SECS."
)
NO_FFMPEG = "Streaming needs the ffmpeg program on the server (Gradio encodes the stream with it); it is not installed."


def can_stream() -> bool:
    """Whether Gradio can stream audio here: its stream encoder runs the ``ffmpeg`` program."""
    return shutil.which("ffmpeg") is not None


def wav_bytes(samples) -> bytes:
    """A streamed chunk (1-D float samples in [-1, 1] at 24 kHz) as 16-bit mono WAV bytes."""
    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(OUTPUT_SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def describe_result(paths: list, log: list[str]) -> str:
    """The line under the players: how many outputs, their seeds, and whether the conditioning
    latents were computed now or came from the cache."""
    metas = [generate.read_output(p.parent.name, p.name) for p in paths]  # outputs/<voice>/<name>
    seeds = ", ".join(str((m.get("settings") or {}).get("seed")) for m in metas)
    seconds = sum(m.get("seconds") or 0 for m in metas)
    computed = any(line.startswith("computing conditioning latents") for line in log)
    latents = "conditioning latents computed and cached" if computed else "conditioning latents from the cache"
    loaded = any(line.startswith("loading the model") for line in log)
    model = " · model loaded" if loaded else ""
    word = "output" if len(paths) == 1 else "candidates"
    return f"{len(paths)} {word} (seed {seeds}), {seconds:.1f} s of speech · {latents}{model}"


def build(ctx: TabContext) -> dict:
    """The Generate tab; returns its components by name (sampling settings under ``ui["settings"]``,
    candidate players under ``ui["players"]``)."""
    ui: dict = {"settings": {}}
    # Outputs and export zips (gigabytes for real XTTS-v2) are served from outputs/ in place
    # instead of being copied into Gradio's cache; they are never changed once written.
    gr.set_static_paths([paths.outputs_dir()])
    defaults = generate.GenerationSettings()
    help_text = gform.settings_help()
    with gr.Tab("Generate", id="generate", elem_id="tab-generate") as ui["tab"]:
        with gr.Row(equal_height=True):
            ui["voice"] = gr.Dropdown(label="Voice", choices=[], elem_id="generate-voice")
            ui["run"] = gr.Dropdown(
                label="Model",
                choices=[(generate.BASE_MODEL, generate.BASE_MODEL)],
                value=generate.BASE_MODEL,
                scale=2,
                elem_id="generate-run",
            )
            ui["checkpoint"] = gr.Dropdown(
                label="Checkpoint", choices=[LATEST], value=LATEST, elem_id="generate-checkpoint"
            )
            ui["language"] = gr.Dropdown(
                languages.choices(), value=languages.DEFAULT_LANGUAGE, label="Language", elem_id="generate-language",
                info="Defaults to the language of the model's run, else of the voice's dataset.",
            )  # fmt: skip
        ui["references"] = gr.Dropdown(
            label="Reference clips", choices=[], value=[], multiselect=True, info=gform.references_info(None),
            elem_id="generate-references",
        )  # fmt: skip
        ui["text"] = gr.Textbox(
            label="Text", lines=3, placeholder="What should the voice say? Long text is spoken sentence by sentence.",
            elem_id="generate-text",
        )  # fmt: skip
        with gr.Row(equal_height=True):
            ui["seed"] = gr.Textbox(label="Seed", placeholder="random", info=help_text["seed"], elem_id="generate-seed")
            ui["candidates"] = gr.Slider(
                1, gform.MAX_CANDIDATES, value=1, step=1, label="Candidates",
                info="Outputs with seeds seed, seed+1, …", elem_id="generate-candidates",
            )  # fmt: skip
            streamable = can_stream()
            ui["stream"] = gr.Checkbox(
                label="Stream", value=False, interactive=streamable, info=STREAM_HELP if streamable else NO_FFMPEG,
                elem_id="generate-stream-toggle",
            )  # fmt: skip
            ui["rank"] = gr.Checkbox(
                label="Rank candidates by score (best of N)", value=False, info=RANK_HELP, elem_id="generate-rank"
            )
            ui["generate"] = gr.Button("Generate", variant="primary", scale=0, min_width=160, elem_id="generate-button")
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                for f in gform.settings_fields():
                    _setting_component(ui, f, getattr(defaults, f.name), help_text.get(f.name))
        ui["stream_audio"] = gr.Audio(
            label="Speaking (streamed)", streaming=True, autoplay=True, interactive=False, visible=False,
            elem_id="generate-stream",
        )  # fmt: skip
        with gr.Row():
            ui["players"] = [
                gr.Audio(
                    label="Speech" if i == 0 else f"Candidate {i + 1}",
                    type="filepath",
                    interactive=False,
                    visible=i == 0,
                    elem_id="generate-audio" if i == 0 else f"generate-candidate-{i + 1}",
                )  # fmt: skip
                for i in range(gform.MAX_CANDIDATES)
            ]
        ui["audio"] = ui["players"][0]
        ui["info"] = gr.Markdown(elem_id="generate-info")
        ghistory.build(ctx, ui)
        gexport.build(ctx, ui)
    _wire(ctx, ui)
    return ui


def _setting_component(ui: dict, f, value, info: str | None) -> None:
    common = {"label": f.name.replace("_", " ").capitalize(), "info": info, "value": value}
    common["elem_id"] = f"generate-{f.name.replace('_', '-')}"
    if isinstance(value, bool):
        ui["settings"][f.name] = gr.Checkbox(**common)
    elif f.name in gform.RANGES:
        low, high, step = gform.RANGES[f.name]
        ui["settings"][f.name] = gr.Slider(low, high, step=step, min_width=220, **common)
    else:
        ui["settings"][f.name] = gr.Number(min_width=220, **common)


def _score_label(row: dict) -> str:
    secs = "–" if row.get("secs") is None else f"{row['secs']:.3f}"
    flags = "".join(f" · ⚠ {flag}" for flag in row.get("flags") or [])
    return f" · CER {row.get('cer', 0):.3f} · SECS {secs}{flags}"


def player_updates(paths: list, ranked: list[dict] | None = None) -> list:
    """One update per candidate player: the output with its seed in the label, or hidden.
    With ``ranked`` (:func:`gform.rank_outputs`, best first) the players follow its order and
    their labels give the rank, CER and SECS."""
    scores = {}
    if ranked:
        scores = {row["path"]: row for row in ranked}
        paths = [next(p for p in paths if str(p) == row["path"]) for row in ranked]
    updates = []
    for i in range(gform.MAX_CANDIDATES):
        if i < len(paths):
            seed = (generate.read_output(paths[i].parent.name, paths[i].name).get("settings") or {}).get("seed")
            label = f"Candidate {i + 1} · seed {seed}" if len(paths) > 1 else f"Speech · seed {seed}"
            if str(paths[i]) in scores:
                label = f"#{i + 1} of {len(paths)} · seed {seed}" + _score_label(scores[str(paths[i])])
            updates.append(gr.Audio(value=str(paths[i]), label=label, visible=True))
        else:
            updates.append(gr.Audio(value=None, visible=i == 0))
    return updates


def rank_if_asked(ctx: TabContext, values: dict, paths: list, log) -> list[dict] | None:
    """The candidates ranked best first when the form asks for it and there are several; a
    voice that cannot be scored (no dataset, an English-only Whisper model) warns and leaves
    them unranked rather than losing the speech just made."""
    if not values.get("rank") or len(paths) < 2:
        return None
    try:
        return gform.rank_outputs(ctx, values, paths, log=log)
    except ENGINE_ERRORS as exc:
        gr.Warning(browser_text(f"Candidates not ranked: {exc}"))
        return None


def _wire(ctx: TabContext, ui: dict) -> None:
    form = {k: ui[k] for k in gform.FORM_FIELDS} | ui["settings"]
    results = [*ui["players"], ui["info"], ui["outputs"]]
    history_selection = [ui["history_audio"], ui["history_details"], ui["reuse"], ui["history_selected"]]

    def voice_updates(voice, run=None, checkpoint=None, references=None, language=None):
        """Choices for ``voice``, keeping the given picks that still apply; the language is kept
        when given, else the default of the model shown (its run's, else the dataset's)."""
        choices = gform.model_choices(voice)
        run = pick([v for _, v in choices], run, gform.default_model(voice))
        checkpoints = gform.checkpoint_choices(voice, run)
        refs = gform.reference_choices(voice)
        kept = [r for r in references or [] if r in {ref_id for _, ref_id in refs}]
        return [
            gr.Dropdown(choices=choices, value=run),
            gr.Dropdown(choices=checkpoint_labels(voice, run), value=pick(checkpoints, checkpoint)),
            gr.Dropdown(choices=refs, value=kept, info=gform.references_info(voice)),
            language if language in languages.CODES else generate.default_language(voice, run),
            ghistory.outputs_table(voice),
        ]

    def on_voice(voice):
        with engine_errors("Listing the voice's models"):
            return voice_updates(voice) + ghistory.cleared()

    def on_show(voice, run, checkpoint, references, language):
        update, shown = voice_dropdown(voice)
        with engine_errors("Listing the voice's models"):
            if shown != voice:
                return [update, *voice_updates(shown), *ghistory.cleared()]
            return [update, *voice_updates(voice, run, checkpoint, references, language), *[gr.skip()] * 4]

    def on_run(voice, run):
        with engine_errors("Listing checkpoints"):
            checkpoints = gr.Dropdown(choices=checkpoint_labels(voice, run), value=LATEST)
            return checkpoints, generate.default_language(voice, run)

    def on_generate(values, progress=gr.Progress()):  # noqa: B008 (Gradio's documented pattern)
        values = named(values, form)
        log = LogLines()
        with engine_errors("Generation"):
            count = gform.candidate_count(values)
            if values.get("stream") and can_stream():
                paths = yield from _streamed(ctx, ui, values, count, log)
            else:
                paths = gform.speak_candidates(ctx, values, log=log, progress=progress_callable(progress))
            table = ghistory.outputs_table(values["voice"])
        ranked = rank_if_asked(ctx, values, paths, log)
        info = describe_result(paths, log) + (" · ranked best first by score" if ranked else "")
        yield dict(zip(results, [*player_updates(paths, ranked), info, table], strict=True))

    chooser = [ui["voice"], ui["run"], ui["checkpoint"], ui["references"], ui["language"]]
    shown = [*chooser, ui["outputs"], *history_selection]
    ctx.blocks.load(on_show, chooser, shown, show_progress="hidden")
    ui["tab"].select(on_show, chooser, shown, show_progress="hidden")
    ui["voice"].input(on_voice, ui["voice"], shown[1:], show_progress="hidden")
    ui["run"].input(on_run, [ui["voice"], ui["run"]], [ui["checkpoint"], ui["language"]], show_progress="hidden")
    ui["stream"].change(lambda on: gr.Audio(visible=bool(on)), ui["stream"], ui["stream_audio"])
    ui["generate"].click(on_generate, set(form.values()), [*results, ui["stream_audio"]], **gform.SYNTHESIZER_QUEUE)


def _streamed(ctx: TabContext, ui: dict, values: dict, count: int, log):
    """Stream the first candidate into the streaming player, then speak the others; returns the paths."""
    stream = gform.speak_streaming(ctx, values, log=log, candidates=count)
    while True:
        try:
            chunk = next(stream)
        except StopIteration as done:
            first = done.value
            break
        yield {ui["stream_audio"]: wav_bytes(chunk.numpy())}
    paths = [first]
    if count > 1:
        seed = (generate.read_output(first.parent.name, first.name).get("settings") or {}).get("seed")
        rest = {**values, "seed": str(seed + 1), "candidates": count - 1}
        paths += gform.speak_candidates(ctx, rest, log=log, numbering=(2, count))
    return paths
