"""The Dataset tab's clip editor: a table of every clip (excluded ones too) with its quality
flags, and a panel to listen to the selected clip, correct its transcript, exclude or restore
it, or re-transcribe it alone.

The changes are :mod:`engine.dataset.edit`'s (kept in ``datasets/<voice>/edits.json``, so a
later Transcribe keeps them); the flags are :func:`engine.dataset.quality.quality_report`'s.
:mod:`webui.tabs.dataset` lays the components out and refreshes the whole tab after a change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.dataset import edit as dataset_edit
from webui.tabs import FormError, engine_errors, named, page_file

CLIP_COLUMNS = ["clip", "split", "sec", "dBFS", "text", "flags"]
SHOW_CHOICES = ["all", "flagged", "excluded"]
PANEL_KEYS = ("selected", "clip_audio", "clip_info", "clip_text", "save_text", "revert_text", "exclude", "retranscribe")
NO_SELECTION = "Select a clip in the table to listen to it, correct its transcript, exclude or re-transcribe it."
READ_ONLY = "This dataset was not made by Transcribe (it has no report.json): its clips play but cannot be edited."


# --- views (plain functions; the tests call them directly) ------------------------------------


def visible_rows(quality: dict | None, show: str = "all") -> list[dict]:
    """The quality report's clip rows that the table shows: all, the flagged ones (of those
    in training), or the excluded ones."""
    rows = (quality or {}).get("per_clip", [])
    if show == "flagged":
        return [row for row in rows if row["flags"] and row["split"] != "excluded"]
    if show == "excluded":
        return [row for row in rows if row["split"] == "excluded"]
    return list(rows)


def clip_table(quality: dict | None, show: str = "all") -> pd.DataFrame:
    """The clips table: name (without ``.wav``), split (``excluded`` for a left-out clip),
    seconds (to 0.1 s), RMS level in dBFS (to 1 dB), the transcript trained on (``✎`` marks a
    typed or re-transcribed one) and the quality flags."""
    rows = []
    for row in visible_rows(quality, show):
        mark = "" if row.get("origin", "whisper") == "whisper" else "✎ "
        level = row.get("rms_dbfs")
        rows.append(
            [
                Path(row["audio_file"]).stem,
                row["split"],
                round(row["duration"], 1),
                None if level is None else round(level),
                mark + row["text"],
                "; ".join(row["flags"]),
            ]
        )
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def audio_file_of(quality: dict | None, name: str) -> str | None:
    """The ``wavs/…`` path of the clip shown as ``name`` (its file name without ``.wav``) in
    the table; None if unknown."""
    for row in (quality or {}).get("per_clip", []):
        if name in (Path(row["audio_file"]).stem, Path(row["audio_file"]).name, row["audio_file"]):
            return row["audio_file"]
    return None


def neighbour(quality: dict | None, show: str, selected: str | None, step: int) -> str | None:
    """The clip ``step`` rows after (``+1``) or before (``-1``) ``selected`` in the table as
    shown, stopping at the ends; the first row when nothing shown is selected."""
    names = [row["audio_file"] for row in visible_rows(quality, show)]
    if not names:
        return None
    if selected not in names:
        return names[0]
    return names[max(0, min(len(names) - 1, names.index(selected) + step))]


def panel(voice: str | None, audio_file: str | None, quality: dict | None) -> tuple:
    """Values for :data:`PANEL_KEYS`: the selected clip's audio, a description (split, length,
    where in which recording, Whisper's transcript when another is used, flags), its
    transcript, and the buttons (Exclude or Restore)."""
    clip = None
    off = gr.Button(interactive=False)
    if voice and audio_file and quality and quality.get("editable") is False:  # csv files only
        row = next((row for row in quality["per_clip"] if row["audio_file"] == audio_file), None)
        if row is not None:
            text = gr.Textbox(value=row["text"], interactive=False)
            return audio_file, page_file(row["path"]), READ_ONLY, text, off, off, off, off
    elif voice and audio_file and quality:
        clip = next((c for c in dataset_edit.list_clips(voice) if c["audio_file"] == audio_file), None)
    if clip is None:
        return None, None, NO_SELECTION, gr.Textbox(value="", interactive=False), off, off, off, off
    flags = next((row["flags"] for row in quality["per_clip"] if row["audio_file"] == audio_file), [])
    lines = [
        f"**{Path(audio_file).name}** · {clip['split']} · {clip['duration']:.2f} s · "
        f"{clip.get('source', '?')} {clip.get('start', 0):.2f}–{clip.get('end', 0):.2f} s"
    ]
    if clip["origin"] != "whisper":
        how = "typed" if clip["origin"] == "manual" else "re-transcribed"
        lines.append(f"Transcript {how}; Whisper heard: *{clip['whisper_text']}*")
    lines.append("Flags: " + ("; ".join(flags) if flags else "none"))
    excluded = clip["split"] == "excluded"
    return (
        audio_file,
        page_file(clip["path"]),  # a copy in Gradio's cache: the data folder is never served
        "\n\n".join(lines),
        gr.Textbox(value=clip["text"], interactive=True),
        gr.Button(interactive=True),
        gr.Button(interactive=clip["origin"] != "whisper"),
        gr.Button("Restore" if excluded else "Exclude", interactive=True),
        gr.Button(interactive=True),
    )


def apply_change(form: dict, action: str) -> str:
    """Make one change to the selected clip; returns a note for the user.

    ``form`` has ``voice``, ``selected`` (``wavs/…``), ``clip_text``, ``backend``,
    ``whisper_model``, ``language``; ``action`` is ``"save"``, ``"revert"``, ``"exclude"``
    (toggles: a left-out clip is restored) or ``"retranscribe"``. Raises FormError (no clip
    selected) or the engine's error with the reason (empty text, a failed transcription …), all
    ValueErrors; ValueError for an unknown ``action`` (a bug in the wiring).
    """
    voice, audio_file = form.get("voice"), form.get("selected")
    if not voice or not audio_file:
        raise FormError("select a clip in the table first")
    name = Path(audio_file).name
    if action == "save":
        dataset_edit.edit_text(voice, audio_file, form.get("clip_text") or "")
        return f"Saved the transcript of {name}."
    if action == "revert":
        dataset_edit.revert_text(voice, audio_file)
        return f"{name} uses Whisper's transcript again."
    if action == "exclude":
        clip = next((c for c in dataset_edit.list_clips(voice) if c["audio_file"] == audio_file), None)
        if clip is None:
            raise FormError(f"no clip {audio_file!r} in the dataset")
        restore = clip["split"] == "excluded"
        dataset_edit.set_excluded(voice, audio_file, excluded=not restore)
        return f"Restored {name}." if restore else f"Excluded {name} from training (kept in wavs/)."
    if action == "retranscribe":
        language = form.get("language") or "auto"
        clip = dataset_edit.retranscribe_clip(
            voice,
            audio_file,
            backend=form.get("backend") or "faster-whisper",
            whisper_model=(form.get("whisper_model") or "").strip() or None,
            language=None if language == "auto" else language,
        )
        return f"Re-transcribed {name}: “{clip['text']}”"
    raise ValueError(f"unknown action {action!r}")


# --- layout and wiring -----------------------------------------------------------------------


def build(ui: dict) -> None:
    """The clips table and the editing panel, added to ``ui`` (inside the Dataset tab)."""
    ui["selected"] = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            ui["show"] = gr.Radio(
                SHOW_CHOICES,
                value="all",
                label="Show",
                info="Flagged: clips in training that are worth a listen (see the flags column).",
                elem_id="dataset-show",
            )
            ui["clips"] = gr.Dataframe(
                pd.DataFrame(columns=CLIP_COLUMNS),
                label="Clips (select a row to listen and edit)",
                interactive=False,
                wrap=True,
                max_height=420,
                column_widths=["17%", "14%", "6%", "7%", "35%", "21%"],
                elem_id="dataset-clips",
            )
        with gr.Column(scale=3, elem_id="dataset-clip-panel"):
            ui["clip_audio"] = gr.Audio(
                label="Selected clip", type="filepath", interactive=False, elem_id="dataset-clip-audio"
            )
            ui["clip_info"] = gr.Markdown(NO_SELECTION, elem_id="dataset-clip-info")
            ui["clip_text"] = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="dataset-clip-text")
            with gr.Row():
                ui["save_text"] = gr.Button(
                    "Save text", variant="primary", interactive=False, elem_id="dataset-save-text"
                )
                ui["revert_text"] = gr.Button("Whisper's text", interactive=False, elem_id="dataset-revert-text")
            with gr.Row():
                ui["exclude"] = gr.Button("Exclude", variant="stop", interactive=False, elem_id="dataset-exclude")
                ui["retranscribe"] = gr.Button("Re-transcribe", interactive=False, elem_id="dataset-retranscribe")
            with gr.Row():
                ui["prev_clip"] = gr.Button("◀ Previous", size="sm", elem_id="dataset-prev-clip")
                ui["next_clip"] = gr.Button("Next ▶", size="sm", elem_id="dataset-next-clip")


def wire(ui: dict, refresh: Callable[..., tuple], outputs: list, read_quality: Callable[[str], dict | None]) -> None:
    """Connect the editor. ``refresh(voice, show, selected)`` gives the values of ``outputs``
    (the whole tab, this panel included) after a change; ``read_quality(voice)`` the quality
    report (None without a prepared dataset)."""
    panel_outputs = [ui[key] for key in PANEL_KEYS]

    def on_select(voice, show, evt: gr.SelectData):
        row = evt.row_value or []
        with engine_errors("Opening the clip"):
            quality = read_quality(voice) if voice else None
            return panel(voice, audio_file_of(quality, row[0]) if row else None, quality)

    def step(by: int):
        def on_step(voice, show, selected):
            with engine_errors("Opening the clip"):
                quality = read_quality(voice) if voice else None
                return panel(voice, neighbour(quality, show, selected, by), quality)

        return on_step

    def change(action: str):
        def on_change(values):
            form = named(values, ui)
            with engine_errors("Editing the clip"):
                note = apply_change(form, action)
            gr.Info(note)
            return refresh(form["voice"], form.get("show") or "all", form["selected"])

        return on_change

    form_inputs = {ui[k] for k in ("voice", "selected", "clip_text", "show", "backend", "whisper_model", "language")}
    for key in ("save_text", "revert_text", "exclude", "retranscribe"):
        action = {"save_text": "save", "revert_text": "revert"}.get(key, key)
        ui[key].click(change(action), form_inputs, outputs)
    ui["clips"].select(on_select, [ui["voice"], ui["show"]], panel_outputs)
    ui["prev_clip"].click(step(-1), [ui["voice"], ui["show"], ui["selected"]], panel_outputs)
    ui["next_clip"].click(step(+1), [ui["voice"], ui["show"], ui["selected"]], panel_outputs)
    ui["show"].change(
        lambda voice, show, selected: refresh(voice, show, selected),
        [ui["voice"], ui["show"], ui["selected"]],
        outputs,
    )
