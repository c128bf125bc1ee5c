"""Training tab, part 4: the scores of a run's checkpoints (:mod:`engine.training.evaluation`).

The background evaluator makes every checkpoint (and the base model, the *baseline*) speak the
run's evaluation sentences and scores the speech: intelligibility (WER/CER of a Whisper
transcript) and speaker similarity (SECS). Everything here is read from
``eval/summary.json`` and ``eval/<name>/scores.json``:

- curves of WER/CER and SECS over steps, the baseline as a horizontal line, the best checkpoint
  starred (an inline SVG, as the loss plots in :mod:`training_plots`);
- a table of the scored checkpoints, the best marked;
- the evaluator's error, or why a checkpoint is (or none is yet) the best;
- a listening grid: one row per sentence, one column for the base model and each chosen
  checkpoint; each cell plays that WAV (a copy in Gradio's cache, :func:`page_file`, so the
  data folder is never served) with its CER and SECS.

:func:`refresh` runs on the tab's timer and re-reads only when the summary (or the evaluator's
pid file) changed, and sends the grid only when it changed, so a sentence being listened to is
not interrupted.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path
from urllib.parse import quote

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from engine import runs
from engine.config import ConfigError, TrainConfig
from engine.training import evaluation
from webui.tabs import browser_text, page_file
from webui.tabs import training_plots as tplots
from webui.tabs import training_runs as truns

BASELINE = evaluation.BASELINE
COLUMNS = ["checkpoint", "step", "WER", "CER", "median CER", "SECS", "SECS (XTTS, biased)", "pace ratio",
           "flagged", "best", "exists", "note"]  # fmt: skip
MAX_COLUMNS = 4  # checkpoints heard side by side, besides the base model
COLORS = {"wer": "#2563eb", "cer": "#ea580c", "secs": "#16a34a", "secs_xtts": "#9333ea"}
LABELS = {"wer": "WER", "cer": "CER", "secs": "SECS", "secs_xtts": "SECS (XTTS encoder, biased)"}
PANELS = (("intelligibility", "Intelligibility: WER and CER (lower is better)", ("wer", "cer")),
          ("similarity", "Speaker similarity: SECS (higher is better)", ("secs", "secs_xtts")))  # fmt: skip

GUIDE = """
### Reading the scores

Each checkpoint speaks the same held-out **evaluation sentences** with the same seeds as the
**base model** (dotted lines). **WER/CER**: how far Whisper's transcript is from the sentence
(0 = every word understood). **SECS**: how close the voice is to your dataset's clips (cosine of
speaker embeddings; higher is closer). **SECS (XTTS)** uses the model's own speaker encoder and
flatters the model: read it only when SECS is missing. **Pace ratio**: characters per second
against your dataset (about 1 is natural); a flagged sentence was rushed, cut or babbled.

The **best** checkpoint (★) is the highest SECS among those that stay intelligible; Generate
and Export accept it as **best**. Listen below before trusting any number.
"""


# --- reading -----------------------------------------------------------------------------------


def files_signature(folder: Path | None) -> tuple:
    """Sizes and times of the run's ``eval/summary.json`` and ``eval/evaluator.pid`` (stat only)."""
    if folder is None:
        return (None,)
    stats = []
    for name in (evaluation.SUMMARY_FILE, evaluation.PID_FILE):
        try:
            info = (evaluation.eval_dir(folder) / name).stat()
            stats.append((info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append(None)
    return tuple(stats)


def _number(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _flagged(scores: dict) -> str:
    """ "2 / 8" (flagged sentences of all), or the bare count from an older summary."""
    flagged, total = scores.get("flagged"), scores.get("sentences")
    if flagged is None:
        return ""
    return f"{flagged} / {total}" if total else str(flagged)


def _best_name(summary: dict) -> str | None:
    best = summary.get("best")
    return best.get("name") if isinstance(best, dict) else None


def scores_table(summary: dict) -> pd.DataFrame:
    """One row for the base model, then one per scored checkpoint in step order (:data:`COLUMNS`)."""
    rows = []
    best = _best_name(summary)

    def row(name, step, scores, exists, note):
        return [name, step, _number(scores.get("wer")), _number(scores.get("cer")), _number(scores.get("cer_median")),
                _number(scores.get("secs")), _number(scores.get("secs_xtts")), _number(scores.get("cps_ratio"), 2),
                _flagged(scores), "★ best" if name == best else "", exists, note]  # fmt: skip

    if isinstance(summary.get("baseline"), dict):
        rows.append(row("base model", "", summary["baseline"], "", "the baseline"))
    for c in summary.get("checkpoints") or []:
        note = "" if c.get("comparable", True) else "not comparable: scored with other sentences or Whisper model"
        rows.append(row(c.get("name", ""), c.get("step", ""), c, "yes" if c.get("exists") else "pruned", note))
    return pd.DataFrame(rows, columns=COLUMNS)


def evaluation_off(folder: Path) -> bool:
    """Whether the run's train.yaml turns checkpoint evaluation off."""
    try:
        return not TrainConfig.load(folder / "train.yaml").evaluate
    except (ConfigError, OSError):
        return False


def describe(folder: Path | None, summary: dict) -> str:
    """Markdown above the scores: the evaluator's error, the best checkpoint and why (or why
    none yet), whether the evaluator is running."""
    if folder is None:
        return ""
    lines = []
    if summary.get("error"):
        lines.append(f"**Evaluation failed:** {summary['error']}")
    best = summary.get("best")
    if isinstance(best, dict):
        by = best.get("by", "secs")
        lines.append(
            f"**Best checkpoint: {best.get('name')}** ({LABELS.get(by, by)} {_number(best.get(by))}, median CER "
            f"{_number(best.get('cer_median'))}): {summary.get('best_reason', '')}. Generate and Export offer it as "
            "“best”."
        )
    elif summary:
        lines.append(f"No best checkpoint yet: {summary.get('best_reason') or 'no checkpoint is scored yet'}.")
    elif evaluation_off(folder):
        lines.append("Checkpoint evaluation is off for this run (*Evaluate checkpoints* in its configuration).")
    else:
        lines.append("No scores yet: the evaluator scores the base model and then each checkpoint once it is saved.")
    if evaluation.evaluator_pid(folder) is not None:
        lines.append(
            "The evaluator is running in the background (a run on the CPU has its checkpoints scored once it ends)."
        )
    if summary.get("rule"):
        lines.append(f"*Rule:* {summary['rule']}.")
    return browser_text("  \n".join(lines))


def listen_choices(summary: dict) -> list[tuple[str, str]]:
    """(label, name) of the scored checkpoints, newest first; the best and pruned ones marked."""
    best = _best_name(summary)
    choices = []
    for c in reversed(summary.get("checkpoints") or []):
        notes = (["best"] if c.get("name") == best else []) + ([] if c.get("exists", True) else ["pruned"])
        choices.append((c["name"] + (f" ({', '.join(notes)})" if notes else ""), c["name"]))
    return choices


def default_listen(summary: dict) -> list[str]:
    """The checkpoints heard when none is chosen: the best, then the newest scored."""
    names = [_best_name(summary)] + [c.get("name") for c in (summary.get("checkpoints") or [])[-1:]]
    return list(dict.fromkeys(n for n in names if n))


# --- the curves --------------------------------------------------------------------------------


def render_figure(summary: dict) -> Figure:
    """Two panels against the step: WER/CER and SECS of the comparable checkpoints, the
    baseline's as dotted horizontal lines, the best checkpoint starred."""
    fig = Figure(figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.28, wspace=0.2)
    axes = dict(zip([key for key, _, _ in PANELS], fig.subplots(1, 2), strict=True))
    points = [c for c in summary.get("checkpoints") or [] if c.get("comparable", True)]
    baseline = summary.get("baseline") or {}
    best = summary.get("best") if isinstance(summary.get("best"), dict) else None
    for key, title, quantities in PANELS:
        ax = axes[key]
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel("optimizer step", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
        for quantity in quantities:
            shown = [(c["step"], c[quantity]) for c in points if c.get(quantity) is not None]
            style = {"lw": 1.8 if quantity in ("cer", "secs") else 1.1, "ms": 4, "color": COLORS[quantity]}
            if shown:
                ax.plot(*zip(*shown, strict=True), "o-", gid=f"eval-{quantity}", **style)
            if baseline.get(quantity) is not None:
                ax.axhline(baseline[quantity], color=COLORS[quantity], ls=":", lw=1.2, gid=f"eval-baseline-{quantity}")
            if best and quantity in ("cer", "secs"):
                row = next((c for c in points if c.get("name") == best.get("name")), None)
                if row and row.get(quantity) is not None:
                    ax.plot([row["step"]], [row[quantity]], "*", color="#eab308", mec="#713f12", ms=15,
                            gid=f"eval-best-{quantity}")  # fmt: skip
    handles = [Line2D([], [], color=COLORS[q], marker="o", label=LABELS[q]) for q in COLORS]
    handles += [
        Line2D([], [], color="#4b5563", ls=":", label="base model"),
        Line2D([], [], color="#eab308", mec="#713f12", ls="none", marker="*", ms=12, label="best checkpoint"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=6, frameon=False, fontsize=9)
    return fig


def plot_html(summary: dict) -> str:
    """The curves as HTML: a ``div.timbre-eval-plot`` with ``data-points`` (comparable scored
    checkpoints) and ``data-best``, or a note when nothing is scored yet."""
    points = [c for c in summary.get("checkpoints") or [] if c.get("comparable", True)]
    data = f'data-points="{len(points)}" data-best="{html.escape(_best_name(summary) or "")}"'
    if not points and not summary.get("baseline"):
        body = '<p class="timbre-plot-empty">No scores yet: the curves appear once a checkpoint is scored.</p>'
    else:
        body = tplots.figure_svg(render_figure(summary))
    return f'<div class="timbre-eval-plot" {data}>{body}</div>'


# --- the listening grid ------------------------------------------------------------------------


def _audio_url(path: Path) -> str | None:
    cached = page_file(path)
    return f"gradio_api/file={quote(cached)}" if cached else None


def _cell(folder: Path, name: str, row: dict | None, text: str) -> str:
    if row is None:
        return '<td class="eval-cell eval-missing">not scored</td>'
    url = _audio_url(evaluation.eval_dir(folder, name) / str(row.get("wav", "")))
    player = (
        f'<audio controls preload="metadata" src="{html.escape(url)}"></audio>' if url else "<em>audio missing</em>"
    )
    scores = f"CER {_number(row.get('cer'))} · SECS {_number(row.get('secs'))}"
    heard = html.escape(row.get("transcript") or "")
    flags = "".join(f'<div class="eval-flag">⚠ {html.escape(f)}</div>' for f in row.get("flags") or [])
    other = f'<div class="eval-flag">said: {html.escape(row["text"])}</div>' if row.get("text", text) != text else ""
    return (
        f'<td class="eval-cell" data-checkpoint="{html.escape(name)}">{player}<div class="eval-scores">{scores}</div>'
        f'<div class="eval-heard" title="What Whisper heard">“{heard}”</div>{flags}{other}</td>'
    )


def grid_html(folder: Path | None, names: list[str] | None, best: str | None = None) -> str:
    """The listening grid: a row per sentence (its text), a column for the base model and each
    of ``names`` (checkpoints with scores), each cell an ``<audio>`` with CER and SECS."""
    if folder is None:
        return ""
    columns = [BASELINE, *(n for n in names or [] if n != BASELINE)]
    scores = {name: evaluation.read_scores(folder, name) for name in columns}
    columns = [name for name in columns if scores[name] is not None]
    if not columns:
        return '<div class="timbre-eval-grid" data-columns=""><p>Nothing to listen to yet.</p></div>'
    rows = {name: {r.get("index"): r for r in scores[name].get("sentences") or []} for name in columns}
    indices = sorted({i for by_index in rows.values() for i in by_index if isinstance(i, int)})
    head = "".join(
        f"<th>{'base model' if n == BASELINE else html.escape(n) + (' ★ best' if n == best else '')}</th>"
        for n in columns
    )
    body = []
    for index in indices:
        text = next(rows[n][index].get("text", "") for n in columns if index in rows[n])
        cells = "".join(_cell(folder, n, rows[n].get(index), text) for n in columns)
        body.append(
            f'<tr data-index="{index}"><td>{index + 1}</td><td class="eval-text">{html.escape(text)}</td>{cells}</tr>'
        )
    return (
        f'<div class="timbre-eval-grid" data-columns="{html.escape(",".join(columns))}" '
        f'data-sentences="{len(indices)}"><table><thead><tr><th>#</th><th>Sentence</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --- the monitor -------------------------------------------------------------------------------


def _digest(value: str) -> str:
    return hashlib.sha1(value.encode("utf-8")).hexdigest()


def refresh(ui: dict, view: dict, voice: str | None, run: str | None, listen: list | None, force: bool = False) -> dict:
    """The evaluation's updates as {component: value}, only when the summary or the evaluator's
    pid file changed (or ``force``). The checkpoints heard follow the default (best and newest)
    until the user picks others; the grid is sent only when it changed."""
    folder = truns.existing_run(voice, run)
    key = (voice, run)
    signature = (key, files_signature(folder))
    if not force and signature == view.get("eval_signature"):
        return {}
    summary = evaluation.read_summary(folder) if folder else {}
    choices = listen_choices(summary)
    valid = {value for _, value in choices}
    default = default_listen(summary)
    kept = [name for name in listen or [] if name in valid]
    user_chose = view.get("eval_key") == key and list(listen or []) != view.get("eval_default") and kept
    selected = kept if user_chose else default
    grid = grid_html(folder, selected, _best_name(summary))
    out = {
        ui["eval_text"]: describe(folder, summary),
        ui["eval_plot"]: plot_html(summary),
        ui["eval_table"]: scores_table(summary),
        ui["eval_listen"]: gr.Dropdown(choices=choices, value=selected, multiselect=True),
    }
    if _digest(grid) != view.get("eval_grid") or view.get("eval_key") != key:
        out[ui["eval_grid"]] = grid
    view.update(eval_signature=signature, eval_default=default, eval_key=key, eval_grid=_digest(grid))
    return out


def listen(voice: str | None, run: str | None, names: list | None) -> str:
    """The grid for the checkpoints the user picked (the ``Listen to`` dropdown's handler)."""
    folder = truns.existing_run(voice, run)
    return grid_html(folder, list(names or []), runs.best_checkpoint_name(folder) if folder else None)


def build(ui: dict) -> None:
    """The scores section (curves, guide, table, listening grid); adds its components to ``ui``."""
    with gr.Accordion("Checkpoint scores: intelligibility and speaker similarity", open=True, elem_id="training-eval"):
        ui["eval_text"] = gr.Markdown(elem_id="training-eval-text")
        with gr.Row():
            with gr.Column(scale=3):
                ui["eval_plot"] = gr.HTML(plot_html({}), elem_id="training-eval-plot")
            with gr.Column(scale=1, min_width=280):
                gr.Markdown(GUIDE, elem_id="training-eval-guide")
        ui["eval_table"] = gr.Dataframe(
            headers=COLUMNS,
            label="Scored checkpoints",
            interactive=False,
            max_height=260,
            elem_id="training-eval-table",
        )
        ui["eval_listen"] = gr.Dropdown(
            label="Listen to", choices=[], value=[], multiselect=True, max_choices=MAX_COLUMNS,
            info=f"Up to {MAX_COLUMNS} checkpoints beside the base model; by default the best and the newest.",
            elem_id="training-eval-listen",
        )  # fmt: skip
        ui["eval_grid"] = gr.HTML(elem_id="training-eval-grid")
