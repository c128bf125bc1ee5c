"""Export a trained F5-TTS model as one zip that f5_tts itself loads, and import such a zip.

An export holds, at its root::

    model.safetensors          the CFM weights, hub key format ("ema_model.transformer....")
    vocab.txt                  the base model's vocabulary
    model.yaml                 F5's config format: model.arch for load_model(DiT, arch, ...)
    vocoder/config.yaml        the base model's Vocos vocoder
    vocoder/pytorch_model.bin
    MODEL_CARD.md              what it is, its licence and how to load it

so that, unpacked into ``DIR``: ``load_model(DiT, OmegaConf.load("DIR/model.yaml").model.arch,
"DIR/model.safetensors", vocab_file="DIR/vocab.txt")`` and ``load_vocoder("vocos",
is_local=True, local_path="DIR/vocoder")`` (f5_tts.infer.utils_infer) give the model and vocoder,
and the folder is an F5-TTS base-model folder for Timbre (:func:`engine.models.f5.files.detect`).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from engine.errors import TimbreError
from engine.files import unpack_atomic, zip_members
from engine.models.f5 import files

MODEL_CARD = "MODEL_CARD.md"
MEMBERS = (files.WEIGHTS_FILE, files.VOCAB_FILE, files.CONFIG_FILE, *files.VOCODER_FILES, MODEL_CARD)


class F5ExportError(TimbreError, ValueError):
    """An export cannot be written, or a zip is not a safe F5-TTS export; the message names the file."""


def export_model(
    model_dir: Path,
    weights: dict[str, torch.Tensor],
    out_zip: Path,
    model_card: str,
    ema: bool = False,
) -> Path:
    """Write ``out_zip`` (atomically: a temporary file renamed into place) with :data:`MEMBERS`.

    Args:
        model_dir: the base F5-TTS folder the weights were trained from (vocab, arch, vocoder).
        weights: the trained CFM's state_dict (a checkpoint's model.safetensors or its EMA; any key
            format of files.cfm_state_dict); checked by loading it strictly into the model.
        out_zip: destination; parent folders are created.
        model_card: MODEL_CARD.md text; a note on how to load the model with f5_tts is appended.
        ema: whether ``weights`` are an exponential moving average (recorded in model.yaml and
            the card; the file format is the same either way).

    Returns ``out_zip``. Raises F5ExportError (weights that do not fit), files.F5ModelError
    (unreadable base folder), OSError.
    """
    from safetensors.torch import save

    model_dir, out_zip = Path(model_dir), Path(out_zip)
    missing = files.missing_files(model_dir)
    if missing:
        raise F5ExportError(f"{model_dir}: cannot export, the base model lacks {', '.join(missing)}")
    arch = files.model_config(model_dir)["arch"]
    try:
        files.load_cfm(model_dir, weights)  # the weights fit the arch and vocab we ship with them
    except files.F5ModelError as exc:
        raise F5ExportError(f"cannot export: {exc}") from None
    config = files.config_yaml(arch, "timbre-export")
    config += f"timbre:\n  weights: {'ema' if ema else 'online'}\n"
    card = model_card.rstrip() + "\n\n" + _loading_note(arch, ema)

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(dir=out_zip.parent, prefix=f".{out_zip.name}.", suffix=".part")
    os.close(fd)
    try:
        with zipfile.ZipFile(part, "w") as archive:
            archive.writestr(files.WEIGHTS_FILE, save(files.hub_state_dict(weights)), zipfile.ZIP_STORED)
            for name in (files.VOCAB_FILE, *files.VOCODER_FILES):
                archive.write(model_dir / name, name, zipfile.ZIP_DEFLATED)
            archive.writestr(files.CONFIG_FILE, config, zipfile.ZIP_DEFLATED)
            archive.writestr(MODEL_CARD, card, zipfile.ZIP_DEFLATED)
        os.chmod(part, 0o644)
        os.replace(part, out_zip)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return out_zip


def _loading_note(arch: dict, ema: bool) -> str:
    return (
        "## Loading with f5-tts\n\n"
        f"Weights: {'an exponential moving average of the ' if ema else 'the '}fine-tuned CFM, in the key "
        "format of the released F5-TTS checkpoints (`ema_model.` prefix).\n\n"
        "```python\n"
        "from omegaconf import OmegaConf\n"
        "from f5_tts.model import DiT\n"
        "from f5_tts.infer.utils_infer import load_model, load_vocoder, infer_process\n\n"
        'arch = OmegaConf.load("model.yaml").model.arch\n'
        'model = load_model(DiT, arch, "model.safetensors", vocab_file="vocab.txt")\n'
        'vocoder = load_vocoder("vocos", is_local=True, local_path="vocoder")\n'
        "```\n\n"
        f"Architecture: DiT dim {arch['dim']}, depth {arch['depth']}, heads {arch['heads']}; "
        "24 kHz, 100 mel bands, hop 256.\n"
    )


def _check_loads(folder: Path, source: Path) -> None:
    try:
        files.load_cfm(folder)
    except files.F5ModelError as exc:
        raise F5ExportError(f"{source.name}: the model inside cannot be loaded: {exc}") from None


def import_model(zip_path: Path, target_dir: Path) -> Path:
    """Unpack an F5-TTS export zip into ``target_dir`` (which must not exist), a folder
    :func:`engine.models.f5.files.detect` accepts; returns it. Files are unpacked into a hidden
    folder beside it and renamed into place once complete and loadable.

    Raises FileExistsError (``target_dir`` exists), F5ExportError (not a zip, unsafe member paths,
    missing files, weights that do not load; the message names the zip), OSError.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    if target_dir.exists():
        raise FileExistsError(f"{target_dir} already exists")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise F5ExportError(f"{zip_path.name}: not a readable zip file ({exc})") from None
    with archive:
        members = zip_members(archive, zip_path, F5ExportError)
        missing = [name for name in MEMBERS if name != MODEL_CARD and name not in members]
        if missing:
            raise F5ExportError(f"{zip_path.name}: not an F5-TTS export, missing {', '.join(missing)}")
        unpack_atomic(archive, members, target_dir, lambda folder: _check_loads(folder, zip_path))
    return target_dir


def read_card(zip_path: Path) -> str:
    """MODEL_CARD.md of an export zip ("" when it has none)."""
    with zipfile.ZipFile(zip_path) as archive:
        try:
            return io.TextIOWrapper(archive.open(MODEL_CARD), encoding="utf-8").read()
        except KeyError:
            return ""


def export_run(voice: str, run: str, weights, out, report, log, **_options) -> Path:
    """An F5-TTS run's checkpoint as a zip that f5_tts's own loaders read
    (engine.models.f5.export: model.safetensors, vocab.txt, model.yaml, vocoder/, MODEL_CARD.md);
    the checkpoint's EMA weights when it has them."""
    from safetensors.torch import load_file

    from engine import models, paths, runs
    from engine.config import TrainConfig
    from engine.generate.export import dataset_size, export_path, final_metrics, loss_line, scores_section

    ema_file = weights.gpt.parent / runs.EMA_FILE
    ema = ema_file.is_file()
    state = load_file(str(ema_file if ema else weights.gpt))
    out = Path(out) if out else export_path(voice, run, weights.checkpoint)
    run_dir = paths.run_dir(voice, run)
    config = TrainConfig.load(run_dir / "train.yaml")
    metrics, size = final_metrics(run_dir), dataset_size(voice)
    base = (
        "a random test model with the F5-TTS layout" if files.is_random_model(weights.model_dir) else "F5-TTS v1 Base"
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
| Final training loss | {loss_line(metrics["train"])} |
| Final validation loss | {loss_line(metrics["validation"])} |
| Dataset (at export) | {size["train_clips"]} training + {size["validation_clips"]} validation clips, {size["seconds"]:.1f} s |
{scores_section(run_dir, weights.checkpoint)}
"""
    report(0.3, "writing the zip")
    export_model(weights.model_dir, state, out, card, ema=ema)
    report(1.0, "done")
    log(f"exported {voice}/{run} {weights.checkpoint} to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out
