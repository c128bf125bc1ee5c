"""Training tab, part 3: the live plots (an inline SVG drawn by matplotlib) and their guide.

Why not ``gr.LinePlot``: in Gradio 6.31 an empty frame breaks it for good and a series absent
from its first frame is never drawn, and it has no markers for events. Why SVG in ``gr.HTML``
rather than ``gr.Plot``: ``gr.Plot`` sends matplotlib figures as a bitmap, while an inline SVG
stays sharp, and every curve is an element with an id (``curve-<run>-<quantity>-<split>``,
matplotlib's ``gid``) that a test can read, plus ``data-`` attributes on the wrapper saying
what is drawn (runs, axis, points, newest step).

The figure has four panels against step or epoch: mel and text cross-entropy (train thin,
its moving average bold, validation dashed with dots), learning rate, gradient norm. Marks:
checkpoints (triangles along the bottom), loss spikes (red crosses at the loss), skipped
steps (orange dashed lines), recovered CUDA out-of-memory errors (purple triangles along the
top) and the best validation loss (a star). Runs overlaid for comparison get one colour each.
"""

from __future__ import annotations

import html
import io
import re
import threading

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from engine.metrics import RunSeries, smooth, thin

MAX_POINTS = 1500  # per curve: a long run is thinned to this many points
SMOOTH_FROM = 30  # train curves with at least this many points also get a moving average
COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#be123c", "#a16207", "#4b5563")
LOSS_PANELS = (("mel_ce", "Mel cross-entropy (the voice)"), ("text_ce", "Text cross-entropy"))
#: An F5-TTS run logs one loss: its second panel shows the training speed instead.
FLOW_PANELS = (("flow", "Flow-matching loss (the voice)"), ("speed", "Training speed (clips per second)"))
_RENDER_LOCK = threading.Lock()  # rc_context changes matplotlib's global settings while saving

GUIDE = """
### Reading the curves

**Mel cross-entropy** is how well the model predicts the audio codes of your clips: the voice
itself. It should fall, fast at first and then slowly. **Text cross-entropy** comes from
predicting the transcript tokens; its weight is small (0.01), and for a voice in a language the
model already knows it need not fall much.

**Validation** (dashed, dots) is measured on clips the model never trains on. While it falls
with the training curve the model is learning the voice. When it **rises while training still
falls**, the model is over-fitting (memorising the clips): use the checkpoint from before the
rise. The trainer always keeps the best checkpoint by validation loss (★).

A **spike** (✕) is a sudden jump in the training loss. If the curve does not come back down,
start a new run from the last good checkpoint at a lower learning rate (the button above
appears when the trainer logged one).

The **learning rate** steps down by *gamma* at each milestone epoch. The **gradient norm**
above *max grad norm* is clipped; steady large values often come before a spike.

Train curves are noisy step to step: read the bold moving average. With a few dozen clips,
expect a few hundred steps before the voice settles.

An **F5-TTS** run logs one loss, the **flow-matching loss** (mean squared error of the predicted
flow on the masked mel frames): it falls slowly and stays noisy, so read the average, and let the
checkpoint scores (intelligibility and speaker similarity) choose.
"""


def slug(name: str) -> str:
    """A run name as it appears in element ids (letters, digits, ``-`` and ``_``): other ASCII
    characters become ``_``, others ``_u<hex>`` (``Zoë`` → ``Zo_ueb``), so names in another
    script (``Zoë``, ``Zoé``) keep ids of their own."""
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: "_" if m.group().isascii() else f"_u{ord(m.group()):x}", name)


def _xy(points, axis: str) -> tuple[list, list]:
    keep = thin(len(points), MAX_POINTS)
    xs, values = points.x(axis), points.value
    return [xs[i] for i in keep], [values[i] for i in keep]


def _x_at(series: RunSeries, event, axis: str) -> float:
    return event.step if axis == "step" else event.epoch


def _panels(series_by_run: dict[str, RunSeries]) -> tuple[tuple[str, str], ...]:
    """The two loss panels: the first run's family decides (F5-TTS's flow loss, or XTTS's CEs)."""
    first = next(iter(series_by_run.values()), None)
    return FLOW_PANELS if first is not None and first.main_loss() == "flow" else LOSS_PANELS


def _draw_run(axes: dict, name: str, series: RunSeries, axis: str, color: str) -> None:
    tag = slug(name)
    panels = tuple((key, title) for key, title in axes["panels"])
    for key, _ in panels:
        ax = axes[key]
        train = series.train[key]
        if len(train):
            xs, ys = _xy(train, axis)
            smoothed = len(train) >= SMOOTH_FROM
            dots = {"marker": "o", "ms": 3} if len(train) < 3 else {}  # one point draws no line
            ax.plot(
                xs, ys, color=color, lw=0.8, alpha=0.35 if smoothed else 0.9, gid=f"curve-{tag}-{key}-train", **dots
            )
            if smoothed:
                average = smooth(train.value, 0.9)
                keep = thin(len(train), MAX_POINTS)
                ax.plot(xs, [average[i] for i in keep], color=color, lw=1.8, gid=f"curve-{tag}-{key}-smooth")
        validation = series.validation.get(key)  # none for the speed panel
        if validation is not None and len(validation):
            xs, ys = _xy(validation, axis)
            ax.plot(xs, ys, "o--", color=color, lw=1.2, ms=4, gid=f"curve-{tag}-{key}-validation")
    for key in ("lr", "grad_norm"):
        points = series.train[key]
        if len(points):
            xs, ys = _xy(points, axis)
            style = {"drawstyle": "steps-post"} if key == "lr" else {}
            style |= {"marker": "o", "ms": 3} if len(points) < 3 else {}
            axes[key].plot(xs, ys, color=color, lw=1.2, gid=f"curve-{tag}-{key}-train", **style)
    _draw_events(axes, tag, series, axis, color)


def _draw_events(axes: dict, tag: str, series: RunSeries, axis: str, color: str) -> None:
    main, panels = axes["panels"][0][0], axes["panels"]
    mel = axes[main]
    checkpoints = [_x_at(series, e, axis) for e in series.events_of("checkpoint")]
    if checkpoints:
        for key, _ in panels:
            axes[key].plot(
                checkpoints, [0.02] * len(checkpoints), "^", color=color, ms=6, alpha=0.8,
                transform=axes[key].get_xaxis_transform(), clip_on=False, gid=f"marks-{tag}-checkpoint-{key}",
            )  # fmt: skip
    spikes = series.events_of("spike")
    if spikes:
        train = series.train[main]
        values = dict(zip(train.step, train.value, strict=True))
        ys = [values.get(e.step, e.value) for e in spikes]
        mel.plot([_x_at(series, e, axis) for e in spikes], ys, "X", color="#dc2626", ms=9, gid=f"marks-{tag}-spike")
    skipped = [_x_at(series, e, axis) for e in series.events_of("skipped_step")]
    if skipped:
        for key, ax in axes.items():
            if key == "panels":
                continue
            ax.vlines(
                skipped, 0, 1, transform=ax.get_xaxis_transform(), colors="#f59e0b", linestyles="--", lw=1,
                gid=f"marks-{tag}-skipped-{key}",
            )  # fmt: skip
    ooms = [_x_at(series, e, axis) for e in series.events if e.kind.startswith("oom")]
    if ooms:
        mel.plot(
            ooms, [0.98] * len(ooms), "v", color="#7c3aed", ms=7, transform=mel.get_xaxis_transform(),
            clip_on=False, gid=f"marks-{tag}-oom",
        )  # fmt: skip
    best = series.best_validation()
    validation = series.validation[main]
    if best and best[0] in validation.step:
        i = validation.step.index(best[0])
        x = validation.step[i] if axis == "step" else validation.epoch[i]
        mel.plot([x], [validation.value[i]], "*", color="#eab308", mec="#713f12", ms=15, gid=f"marks-{tag}-best")


def _legend(fig: Figure, names: list[str]) -> None:
    grey = "#4b5563"
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=2, label=name) for i, name in enumerate(names)]
    handles += [
        Line2D([], [], color=grey, lw=0.8, alpha=0.5, label="train"),
        Line2D([], [], color=grey, lw=1.8, label="train (average)"),
        Line2D([], [], color=grey, ls="--", marker="o", ms=4, label="validation"),
        Line2D([], [], color=grey, ls="none", marker="^", label="checkpoint"),
        Line2D([], [], color="#dc2626", ls="none", marker="X", ms=8, label="spike"),
        Line2D([], [], color="#f59e0b", ls="--", label="skipped step"),
        Line2D([], [], color="#eab308", mec="#713f12", ls="none", marker="*", ms=12, label="best validation"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 6), frameon=False, fontsize=9)


def render_figure(series_by_run: dict[str, RunSeries], axis: str = "step") -> Figure:
    """The four-panel figure of the runs in ``series_by_run`` (first = the selected run) against
    ``axis`` ("step" or "epoch")."""
    rows_of_legend = -(-(len(series_by_run) + 7) // 6)
    fig = Figure(figsize=(10, 6.2 + 0.25 * rows_of_legend))
    # A fixed layout: "constrained" draws the figure twice, doubling the time of each update.
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.08 + 0.05 * rows_of_legend, hspace=0.28, wspace=0.2)
    grid = fig.subplots(2, 2, sharex=True)
    panels = _panels(series_by_run)
    axes = {panels[0][0]: grid[0, 0], panels[1][0]: grid[0, 1], "lr": grid[1, 0], "grad_norm": grid[1, 1]}
    titles = {**dict(panels), "lr": "Learning rate", "grad_norm": "Gradient norm (before clipping)"}
    for key, ax in axes.items():
        ax.set_title(titles[key], fontsize=11, loc="left")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    for ax in (axes["lr"], axes["grad_norm"]):
        ax.set_xlabel("optimizer step" if axis == "step" else "epoch", fontsize=10)
    axes["lr"].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}"))
    axes["panels"] = panels
    for i, (name, series) in enumerate(series_by_run.items()):
        _draw_run(axes, name, series, axis, COLORS[i % len(COLORS)])
    _legend(fig, list(series_by_run))
    return fig


def figure_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element that scales to its container's width."""
    buffer = io.StringIO()
    with _RENDER_LOCK, rc_context({"svg.fonttype": "none", "svg.hashsalt": "timbre"}):
        fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(
        r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%" style="height:auto"', svg, count=1
    )


def plot_html(series_by_run: dict[str, RunSeries], axis: str = "step") -> str:
    """The plot as HTML for ``gr.HTML``: a ``div.timbre-plot`` with ``data-runs``, ``data-axis``,
    ``data-points`` (train + validation points of the first run) and ``data-last-step``, holding
    the SVG, or a short note when no run has metrics yet."""
    first = next(iter(series_by_run.values()), None)
    attributes = {
        "runs": ",".join(series_by_run),
        "axis": axis,
        "points": first.point_count() if first else 0,
        "last-step": first.last_step if first else 0,
    }
    data = " ".join(f'data-{key}="{html.escape(str(value))}"' for key, value in attributes.items())
    if not any(s.point_count() for s in series_by_run.values()):
        body = '<p class="timbre-plot-empty">No metrics yet: the curves appear after the first training step.</p>'
    else:
        body = figure_svg(render_figure(series_by_run, axis))
    return f'<div class="timbre-plot" {data}>{body}</div>'
