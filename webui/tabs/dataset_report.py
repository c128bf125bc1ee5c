"""The Dataset tab's quality report: a histogram of clip lengths and what is worth a listen
(clipping, loudness outliers, silence at the edges, words Whisper was unsure of).

The figures are :func:`engine.dataset.quality.quality_report`'s; this module only draws them
(a matplotlib figure for ``gr.Plot``, drawn without pyplot's global state) and words them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.dataset import quality as quality_module

NO_REPORT = "The quality report appears once the voice has a dataset."
CATEGORY_TEXT = {
    "clipping": "Clipping (over {clipping_flag_share:.1%} of samples at full scale)",
    "loudness": "Level more than {loudness_outlier_db:g} dB from the median clip's",
    "edge silence": "Silence over {edge_silence_seconds:g} s at the start or end",
    "low confidence": "Whisper unsure (log-probability under {low_avg_logprob:g} or words under {low_word_probability:.0%})",
}
MAX_NAMES = 6


def report_markdown(quality: dict | None) -> str:
    """The report in words: clips in training, lengths, median level, and per kind of flag the
    clips that have it (names of the first few; excluded clips are not counted)."""
    if not quality:
        return NO_REPORT
    durations, thresholds = quality["durations"], quality["thresholds"]
    if not quality["included"]:
        return f"All {quality['clips']} clips are excluded: restore some to train on them."
    lines = [
        f"**{quality['included']} clips in training**"
        + (f" ({quality['excluded']} excluded)" if quality["excluded"] else "")
        + f" · {durations['min']:.1f}–{durations['max']:.1f} s long, median {durations['median']:.1f} s,"
        f" {durations['total']:.0f} s in all · median level {quality['median_rms_dbfs']:.1f} dBFS",
        "",
    ]
    excluded = {row["audio_file"] for row in quality["per_clip"] if row["split"] == "excluded"}
    for category, text in CATEGORY_TEXT.items():
        names = [Path(name).name for name in quality["categories"][category] if name not in excluded]
        shown = ", ".join(names[:MAX_NAMES]) + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")
        lines.append(f"- {text.format(**thresholds)}: " + (f"**{len(names)}** — {shown}" if names else "none"))
    flagged = quality["flagged"]
    lines += [
        "",
        f"**{flagged} clip{'s' if flagged != 1 else ''} flagged.** Choose *Show: flagged* above the table to go "
        "through them; a saved transcript counts as checked."
        if flagged
        else "No clip is flagged.",
    ]
    return "\n".join(lines)


def duration_figure(quality: dict | None):
    """A bar chart of the training clips per length bin (a matplotlib Figure), or None."""
    if not quality or not quality["included"]:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    edges, counts = quality["durations"]["edges"], quality["durations"]["counts"]
    figure = Figure(figsize=(6.0, 2.6), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    axes.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#6366f1", edgecolor="white")
    axes.set_xlim(edges[0], edges[-1])
    axes.set_xticks(edges)
    axes.set_ylim(0, max(counts) * 1.15 + 0.2)  # room above the tallest bar for its tick label
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("clip length (s)")
    axes.set_ylabel("clips")
    axes.set_title("Lengths of the clips in training", fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def report_view(quality: dict | None) -> tuple:
    """Values for :data:`OUTPUT_KEYS`."""
    return duration_figure(quality), report_markdown(quality)


OUTPUT_KEYS = ("duration_plot", "report")


def build(ui: dict) -> None:
    """The report section, added to ``ui`` (inside the Dataset tab)."""
    with gr.Accordion("Quality report", open=True, elem_id="dataset-quality"):
        with gr.Row():
            with gr.Column(scale=1):
                ui["duration_plot"] = gr.Plot(
                    label="Clip lengths", show_label=False, format="png", elem_id="dataset-duration-plot"
                )
            with gr.Column(scale=1):
                ui["report"] = gr.Markdown(NO_REPORT, elem_id="dataset-report")
                thresholds = (
                    f"Loudness is the RMS level; silence is {quality_module.SILENCE_BELOW_RMS_DB:g} dB below it, "
                    "in 10 ms frames; clipping is measured before loudness normalisation."
                )
                gr.Markdown(thresholds, elem_classes=["dataset-report-note"])
