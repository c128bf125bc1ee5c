"""Export a fine-tune as one zip its family's own library loads, and import such a zip: the
family-neutral entry (:func:`export_model`, :func:`import_model`) and what every export shares
(its path, the dataset size, the final losses and checkpoint scores for the model card, safe
unpacking). The formats are the families': XTTS-v2 (``engine.models.xtts.export``: a zip coqui-tts's
``Xtts`` loads) and F5-TTS (``engine.models.f5.export``: a zip f5_tts's ``load_model`` loads).

An export of run ``<run>`` of voice ``<voice>`` at checkpoint ``step-NNNNNNN`` is written to
``outputs/<voice>/exports/<voice>-<run>-step-NNNNNNN.zip``; :func:`import_model` unpacks such a
zip into ``models/imported/<name>/``, where the Generate tab lists it as ``imported:<name>``.
"""

from __future__ import annotations

import os
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

from engine import models, paths, runs
from engine.errors import TimbreError
from engine.files import zip_members
from engine.generate import synthesis as generate

EXPORTS_DIR = "exports"
MANIFEST = "timbre.json"
MODEL_CARD = "MODEL_CARD.md"
SPEAKERS_FILE = "speakers_xtts.pth"
#: Files stored uncompressed: weights and audio gain little from deflate and cost time.
_STORED = (".pth", ".wav", ".mp3", ".flac", ".ogg", ".m4a", ".safetensors")


class ExportError(TimbreError, ValueError):
    """An export or import that cannot be done; the message names the run, file or zip member."""


def exports_dir(voice: str) -> Path:
    """``outputs/<voice>/exports/``. Raises InvalidNameError."""
    return paths.output_dir(voice) / EXPORTS_DIR


def export_path(voice: str, run: str, checkpoint: str) -> Path:
    """``outputs/<voice>/exports/<voice>-<run>-<checkpoint>.zip`` (spaces become ``_``)."""
    return exports_dir(voice) / f"{voice}-{run}-{checkpoint}.zip".replace(" ", "_")


def dataset_size(voice: str) -> dict:
    """Clips and seconds of ``datasets/<voice>/`` now: ``{"train_clips", "validation_clips",
    "seconds"}``; durations from report.json, else the WAV header (0 for unreadable files)."""
    from engine.dataset.prepare import load_clips

    size = {"train_clips": 0, "validation_clips": 0, "seconds": 0.0}
    for clip in load_clips(voice):
        size[f"{clip['split']}_clips"] += 1
        seconds = clip.get("duration")
        if seconds is None:
            try:
                with wave.open(clip["path"], "rb") as reader:
                    seconds = reader.getnframes() / reader.getframerate()
            except (OSError, wave.Error, EOFError, ZeroDivisionError):
                seconds = 0.0
        size["seconds"] += float(seconds)
    size["seconds"] = round(size["seconds"], 1)
    return size


def final_metrics(run_dir: Path) -> dict:
    """The last train row and last validation row of ``metrics.jsonl`` (None when absent), and
    the run's status (state, step, total_steps) from :func:`engine.runs.run_status`."""
    rows, _ = runs.read_metrics(run_dir)
    rows = [r for r in rows if "event" not in r and not r.get("skipped")]
    last = {split: next((r for r in reversed(rows) if r.get("split") == split), None)
            for split in ("train", "validation")}  # fmt: skip
    status = runs.run_status(run_dir.parent.name, run_dir.name)
    return {**last, "state": status.state, "step": status.step, "total_steps": status.total_steps}


def loss_line(row: dict | None) -> str:
    if not row:
        return "none recorded"
    if "loss_flow" in row:  # F5-TTS: one loss
        return f"flow-matching loss {row['loss_flow']:.4f} (step {row.get('step')})"
    return (f"text CE {row.get('loss_text_ce', float('nan')):.4f}, mel CE {row.get('loss_mel_ce', float('nan')):.4f}, "
            f"loss {row.get('loss', float('nan')):.4f} (step {row.get('step')})")  # fmt: skip


def scores_section(run_dir: Path, checkpoint: str) -> str:
    """The checkpoint's evaluation scores against the base model's (engine.training.evaluation), as a
    Markdown section; empty when it was not scored."""
    from engine.training import evaluation

    scores, baseline = evaluation.read_scores(run_dir, checkpoint), evaluation.read_scores(run_dir, evaluation.BASELINE)
    if not scores or not baseline or scores.get("setup") != baseline.get("setup"):
        return ""

    def cell(data: dict, key: str) -> str:
        value = data.get("aggregate", {}).get(key)
        return "" if value is None else f"{value:.3f}"

    keys = (("WER (mean)", "wer"), ("CER (median)", "cer_median"), ("SECS (Resemblyzer, mean)", "secs"),
            ("SECS (XTTS speaker encoder, biased)", "secs_xtts"))  # fmt: skip
    lines = "\n".join(f"| {label} | {cell(scores, key)} | {cell(baseline, key)} |" for label, key in keys)
    best = runs.best_checkpoint_name(run_dir)
    note = " It is the run's best checkpoint by Timbre's rule." if best == checkpoint else ""
    count = len(scores.get("sentences", []))
    return f"""
## Scores

{count} held-out sentences spoken by this checkpoint and by the base model with the same seeds and
references, transcribed by Whisper (`{scores.get("scorer", {}).get("whisper_model", "?")}`); SECS is the
cosine to the dataset's validation clips.{note}

| Score | This checkpoint | Base model |
|---|---|---|
{lines}
"""


def export_model(
    voice: str,
    run: str,
    checkpoint: str = "latest",
    references: list[str] | None = None,
    out: str | os.PathLike | None = None,
    base_model: str | os.PathLike | None = None,
    synthesizer: generate.Synthesizer | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Pack run ``run`` of ``voice`` at ``checkpoint`` into a zip (module docstring); returns its path.

    Args:
        checkpoint: "latest" (resolved to its step) or "step-NNNNNNN".
        references: reference ids (:mod:`engine.generate.conditioning`); None: all recordings.
        out: the zip (default :func:`export_path`); written to a temporary file, then renamed.
        base_model: fallback base-model folder when the run's train.yaml names a missing one.
        synthesizer: a loaded :class:`engine.generate.synthesis.Synthesizer` to reuse for the latents
            (only used when the latents are not cached on disk).

    Raises ExportError (not a run, mismatched weights), GenerationError (unknown run or
    checkpoint), ConditioningError (no usable reference), models.BaseModelError.
    """
    report = progress or (lambda fraction, desc: None)
    if not run or run == generate.BASE_MODEL or run.startswith(generate.IMPORTED_PREFIX):
        raise ExportError("choose a run of the voice to export: only a fine-tune can be exported")
    weights = generate.resolve_model(voice, run, checkpoint, base_model)
    family = models.get_family(models.family_of(weights.model_dir))
    return family.export_run(voice, run, weights, out, report, log, references=references, synthesizer=synthesizer)


# --------------------------------------------------------------------------------------------
# Import


def safe_members(archive: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """:func:`engine.files.zip_members`, raising ExportError for an unsafe member (zip-slip)."""
    return zip_members(archive, source, ExportError)


def import_model(
    zip_path: str | os.PathLike, name: str, log: Callable[[str], None] = print
) -> Path:  # fmt: skip
    """Unpack an export zip into ``models/imported/<name>/``; returns that folder. The Generate
    tab then lists it as ``imported:<name>`` (:func:`engine.generate.synthesis.list_imported_models`).

    ``name`` is checked with :func:`engine.paths.check_name`. The zip must hold the XTTS-v2
    files :data:`engine.models.REQUIRED_FILES` at its root (or under one top folder). Files are
    unpacked into a hidden temporary folder that is renamed into place when complete.

    Raises InvalidNameError (bad name), FileExistsError (the name is taken: nothing is
    overwritten), ExportError (not a zip, unsafe paths, missing files, unreadable model; the
    message names the zip), OSError (disk full).
    """
    zip_path = Path(zip_path)
    target = generate.imported_model_dir(name)
    if target.exists():
        raise FileExistsError(f"an imported model named {target.name!r} already exists in {target.parent}")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{zip_path.name}: not a readable zip file ({exc})") from None
    with archive:
        members = safe_members(archive, zip_path)
    family = next((models.get_family(f) for f in models.FAMILIES if models.get_family(f).is_export(set(members))), None)
    if family is None:
        raise ExportError(
            f"{zip_path.name}: not a model export of a known family (XTTS-v2: {', '.join(models.REQUIRED_FILES)}; "
            "F5-TTS: model.safetensors, vocab.txt, vocoder/)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = family.import_export(zip_path, target, log)
    log(f"imported {zip_path.name} ({family.title}) as {folder}")
    return folder
