"""Export a fine-tune as one zip that coqui-tts loads directly, and import such a zip.

An export of run ``<run>`` of voice ``<voice>`` at checkpoint ``step-NNNNNNN`` is written to
``outputs/<voice>/exports/<voice>-<run>-step-NNNNNNN.zip`` and holds, at its root::

    config.json, vocab.json    the base model's, unchanged
    model.pth                  {"model": state_dict}: the base model's state dict (same keys) with the
                               fine-tuned GPT (``gpt.*``) and mel_stats.pth's statistics merged in
    dvae.pth, mel_stats.pth    the base model's (fine-tuning never changes them)
    speakers_xtts.pth          the base model's speakers, if any, plus "<voice>": its conditioning
                               latents under the fine-tuned GPT ({"gpt_cond_latent", "speaker_embedding"})
    references/recordings/…, references/clips/…   the reference clips the latents came from
    MODEL_CARD.md              base model and licence, training settings, dataset size, final metrics
    timbre.json                what was exported (voice, run, checkpoint, references), for Timbre

Loading it is coqui's documented path (``XttsConfig().load_json``, ``Xtts.init_from_config``,
``model.load_checkpoint(config, checkpoint_dir=…, eval=True)``), then
``model.synthesize(text, speaker="<voice>", language="en")``. ``mel_stats`` is merged into
model.pth because coqui's loader reads the statistics from there, not from mel_stats.pth.

:func:`import_model` unpacks such a zip into ``models/imported/<name>/``, where the Generate tab
lists it as ``imported:<name>``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import load_file

from engine import models, paths, runs
from engine.config import TrainConfig
from engine.errors import TimbreError
from engine.generate import conditioning
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


def merged_state_dict(model_dir: Path, gpt_weights: Path) -> dict[str, torch.Tensor]:
    """The base model's state dict (``model_dir/model.pth``) with the GPT weights of a checkpoint's
    ``model.safetensors`` in place of its ``gpt.*`` tensors, and ``mel_stats`` from mel_stats.pth.
    Raises ExportError when a checkpoint tensor has no counterpart of the same shape."""
    state = dict(generate.read_state_dict(model_dir / "model.pth"))
    for key, value in load_file(str(gpt_weights)).items():
        base = state.get(f"gpt.{key}")
        if base is None or base.shape != value.shape:
            raise ExportError(f"{gpt_weights}: tensor {key!r} does not match the base model in {model_dir}")
        state[f"gpt.{key}"] = value
    if "mel_stats" in state:
        state["mel_stats"] = models.load_mel_stats(model_dir)
    return state


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


def _loss_line(row: dict | None) -> str:
    if not row:
        return "none recorded"
    if "loss_flow" in row:  # F5-TTS: one loss
        return f"flow-matching loss {row['loss_flow']:.4f} (step {row.get('step')})"
    return (f"text CE {row.get('loss_text_ce', float('nan')):.4f}, mel CE {row.get('loss_mel_ce', float('nan')):.4f}, "
            f"loss {row.get('loss', float('nan')):.4f} (step {row.get('step')})")  # fmt: skip


def model_card(voice: str, run: str, checkpoint: str, model_dir: Path, references: list[conditioning.Reference]) -> str:
    """MODEL_CARD.md of an export (Markdown): base model and its licence, how to load it,
    training settings (train.yaml), dataset size, final metrics and the reference clips."""
    run_dir = paths.run_dir(voice, run)
    train_yaml = (run_dir / "train.yaml").read_text(encoding="utf-8")
    config = TrainConfig.load(run_dir / "train.yaml")
    size = dataset_size(voice)
    metrics = final_metrics(run_dir)
    random_weights = models.is_random_model(model_dir)
    total = f" of {metrics['total_steps']}" if metrics["total_steps"] else ""
    refs = "\n".join(f"- `references/{_reference_member(r)}` ({r.kind})" for r in references)
    rows = [
        ("Steps", f"{metrics['step']}{total} ({metrics['state']})"),
        ("Epochs", config.epochs),
        ("Batch size x gradient accumulation", f"{config.batch_size} x {config.gradient_accumulation}"),
        ("Learning rate", f"{config.learning_rate:g}"),
        ("Text / mel loss weights", f"{config.text_loss_weight:g} / {config.mel_loss_weight:g}"),
        ("Precision", config.precision),
        ("Final training loss", _loss_line(metrics["train"])),
        ("Final validation loss", _loss_line(metrics["validation"])),
        ("Dataset (at export)", f"{size['train_clips']} training + {size['validation_clips']} validation clips, "
                                f"{size['seconds']:.1f} s of speech"),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    scores = _scores_section(run_dir, checkpoint)
    base = "a random test model with the XTTS-v2 layout, not real XTTS-v2" if random_weights else "Coqui XTTS-v2"
    return f"""# {voice}: a fine-tuned XTTS-v2 voice

Run `{run}` of voice `{voice}` at checkpoint `{checkpoint}`, exported by Timbre on {time.strftime("%Y-%m-%d %H:%M")}.

## Base model and licence

- Base model: {base} (`{model_dir.name}`; the model hub's `{models.HUB_REPO}`).
- Licence: **{models.LICENSE_NAME}**, https://coqui.ai/cpml. This fine-tune is a derivative of
  XTTS-v2 under the same licence: it and the speech it makes may be used for **non-commercial
  purposes only**.
- Only the GPT was fine-tuned; the HiFi-GAN decoder, the DVAE and the tokenizer are the base model's.

## Use it with coqui-tts

```python
from TTS.tts.configs.xtts_config import XttsConfig
from TTS.tts.models.xtts import Xtts

config = XttsConfig()
config.load_json("config.json")
model = Xtts(config)  # older coqui-tts: Xtts.init_from_config(config)
model.load_checkpoint(config, checkpoint_dir=".", eval=True)
out = model.synthesize("Hello.", speaker="{voice}", language="{config.language}")  # out["wav"]: 24 kHz
```

`speakers_xtts.pth` holds the voice's conditioning latents under the fine-tuned GPT as speaker
`{voice}`; to condition on other clips use `model.synthesize(text, speaker_wav=[...], language=...)`.

## Training

| Setting | Value |
|---|---|
{table}
{scores}

The run's `train.yaml`:

```yaml
{train_yaml.rstrip()}
```

## Reference clips

{refs}
"""


def _scores_section(run_dir: Path, checkpoint: str) -> str:
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


def _reference_member(ref: conditioning.Reference) -> str:
    return f"{'recordings' if ref.kind == conditioning.RECORDING else 'clips'}/{ref.path.name}"


def _latents(voice, weights, references, synthesizer, log):
    """The voice's latents under ``weights``: from the disk cache, else computed (loads the model)."""
    files = [r.path for r in references]
    cached = conditioning.load_cached(
        conditioning.cache_path(voice, conditioning.latents_key(files, weights.identity()))
    )
    if cached is not None:
        return cached
    synthesizer = synthesizer or generate.Synthesizer(weights.model_dir)
    synthesizer.load(weights, log=log)
    return synthesizer.conditioning(files, cache_dir=paths.output_dir(voice) / conditioning.LATENTS_DIR, log=log)


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
    if models.family_of(weights.model_dir) == "f5":
        return export_f5(voice, run, weights, out, report, log)
    model_dir = models.require_base_model(weights.model_dir)
    references = conditioning.resolve_references(voice, references)
    report(0.05, "conditioning latents")
    latents, speaker = _latents(voice, weights, references, synthesizer, log)
    out = Path(out) if out else export_path(voice, run, weights.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as staging:
        staging = Path(staging)
        report(0.2, "merging the GPT weights into model.pth")
        torch.save({"model": merged_state_dict(model_dir, weights.gpt)}, staging / "model.pth")
        speakers = {}
        if (model_dir / SPEAKERS_FILE).is_file():
            speakers = torch.load(model_dir / SPEAKERS_FILE, map_location="cpu", weights_only=True)
        speakers[voice] = {"gpt_cond_latent": latents.detach().cpu(), "speaker_embedding": speaker.detach().cpu()}
        torch.save(speakers, staging / SPEAKERS_FILE)
        manifest = {
            "format": 1, "voice": voice, "run": run, "checkpoint": weights.checkpoint,
            "base_model": str(model_dir), "speaker": voice, "created": time.time(),
            "references": [{"id": r.id, "kind": r.kind, "file": f"references/{_reference_member(r)}",
                            "sha256": conditioning.file_sha256(r.path)} for r in references],
        }  # fmt: skip
        card = model_card(voice, run, weights.checkpoint, model_dir, references)
        members = {name: model_dir / name for name in ("config.json", "vocab.json", "dvae.pth", "mel_stats.pth")}
        members |= {"model.pth": staging / "model.pth", SPEAKERS_FILE: staging / SPEAKERS_FILE}
        members |= {f"references/{_reference_member(r)}": r.path for r in references}
        report(0.6, "writing the zip")
        part = staging / out.name
        with zipfile.ZipFile(part, "w", allowZip64=True) as archive:
            for name, source in members.items():
                if source.is_file():
                    stored = name.endswith(_STORED)
                    archive.write(source, name, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
            archive.writestr(MODEL_CARD, card, zipfile.ZIP_DEFLATED)
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n", zipfile.ZIP_DEFLATED)
        os.chmod(part, 0o644)
        os.replace(part, out)
    report(1.0, "done")
    log(f"exported {voice}/{run} {weights.checkpoint} to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def export_f5(voice: str, run: str, weights, out, report, log) -> Path:
    """An F5-TTS run's checkpoint as a zip that f5_tts's own loaders read
    (engine.models.f5.export: model.safetensors, vocab.txt, model.yaml, vocoder/, MODEL_CARD.md);
    the checkpoint's EMA weights when it has them."""
    from engine.models.f5 import export as f5_export
    from engine.models.f5 import files as f5_files

    ema_file = weights.gpt.parent / runs.EMA_FILE
    ema = ema_file.is_file()
    state = load_file(str(ema_file if ema else weights.gpt))
    out = Path(out) if out else export_path(voice, run, weights.checkpoint)
    run_dir = paths.run_dir(voice, run)
    config = TrainConfig.load(run_dir / "train.yaml")
    metrics, size = final_metrics(run_dir), dataset_size(voice)
    base = (
        "a random test model with the F5-TTS layout"
        if f5_files.is_random_model(weights.model_dir)
        else "F5-TTS v1 Base"
    )
    batch = f"{config.batch_frames} frames per GPU" if config.batch_frames else f"{config.batch_size} clips"
    card = f"""# {voice}: a fine-tuned F5-TTS voice

Run `{run}` of voice `{voice}` at checkpoint `{weights.checkpoint}` ({"EMA" if ema else "raw"} weights), exported by
Timbre on {time.strftime("%Y-%m-%d %H:%M")}. Base model: {base} (`{weights.model_dir.name}`).

## Licence

**{models.get_family("f5").license_name}**: the F5-TTS v1 weights and this fine-tune of them, and the
speech they make, may be used for **non-commercial purposes only**, with attribution. Code: f5-tts (MIT);
vocoder: Vocos (MIT).

## Training

| Setting | Value |
|---|---|
| Steps | {metrics["step"]} ({metrics["state"]}) |
| Epochs | {config.epochs} |
| Batch | {batch} x {config.gradient_accumulation} accumulation |
| Learning rate | {config.learning_rate:g} ({config.lr_schedule}) |
| EMA decay | {config.ema_decay:g} |
| Precision | {config.precision} |
| Final training loss | {_loss_line(metrics["train"])} |
| Final validation loss | {_loss_line(metrics["validation"])} |
| Dataset (at export) | {size["train_clips"]} training + {size["validation_clips"]} validation clips, {size["seconds"]:.1f} s |
{_scores_section(run_dir, weights.checkpoint)}
"""
    report(0.3, "writing the zip")
    f5_export.export_model(weights.model_dir, state, out, card, ema=ema)
    report(1.0, "done")
    log(f"exported {voice}/{run} {weights.checkpoint} to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


# --------------------------------------------------------------------------------------------
# Import


def _safe_members(archive: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """Regular-file members by their path below the model's root (the zip root, or its one top
    folder). Raises ExportError for absolute or ``..`` paths and links (zip-slip)."""
    files = {}
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or is_link:
            raise ExportError(f"{source.name}: unsafe member {info.filename!r}")
        if not info.is_dir():
            files[str(name)] = info
    if "config.json" not in files:
        tops = {name.split("/", 1)[0] for name in files}
        if len(tops) == 1 and "/" in next(iter(files), ""):
            top = tops.pop() + "/"
            files = {name[len(top) :]: info for name, info in files.items() if name.startswith(top)}
    return files


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
        members = _safe_members(archive, zip_path)
        if "vocab.txt" in members and "model.pth" not in members:  # an F5-TTS export
            archive.close()
            from engine.models.f5 import export as f5_export

            target.parent.mkdir(parents=True, exist_ok=True)
            folder = f5_export.import_model(zip_path, target)
            log(f"imported {zip_path.name} (F5-TTS) as {folder}")
            return folder
        missing = [f for f in models.REQUIRED_FILES if f not in members]
        if missing:
            raise ExportError(f"{zip_path.name}: not an XTTS-v2 model export, missing {', '.join(missing)}")
        needed = sum(info.file_size for info in members.values())
        target.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(target.parent).free < needed:
            raise OSError(f"not enough disk space in {target.parent} to import {zip_path.name} ({needed / 1e9:.1f} GB)")
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.import-"))
        try:
            for member, info in members.items():
                destination = staging / member
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            _check_model_folder(staging, zip_path)
            os.rename(staging, target)  # fails rather than merge if the name was taken meanwhile
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"imported {zip_path.name} as {target}")
    return target


def _check_model_folder(folder: Path, source: Path) -> None:
    try:
        models.load_xtts_config(folder)
        state = generate.read_state_dict(folder / "model.pth")
    except (models.BaseModelError, OSError, RuntimeError, ValueError) as exc:
        raise ExportError(f"{source.name}: the model inside cannot be read: {exc}") from None
    if not any(key.startswith("gpt.") for key in state):
        raise ExportError(f"{source.name}: model.pth holds no XTTS GPT weights")
