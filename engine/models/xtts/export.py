"""XTTS-v2 export and import (engine.generate.export is the family-neutral entry): a zip that
coqui-tts loads directly. An export holds, at its root::

    config.json, vocab.json    the base model's, unchanged
    model.pth                  {"model": state_dict}: the base model's state dict (same keys) with the
                               fine-tuned GPT (``gpt.*``) and mel_stats.pth's statistics merged in
    dvae.pth, mel_stats.pth    the base model's (fine-tuning never changes them)
    speakers_xtts.pth          the base model's speakers, if any, plus "<voice>": its conditioning
                               latents under the fine-tuned GPT ({"gpt_cond_latent", "speaker_embedding"})
    references/recordings/…, references/clips/…   the reference clips the latents came from
    MODEL_CARD.md              base model and licence, training settings, dataset size, final metrics
    timbre.json                what was exported (voice, run, checkpoint, references), for Timbre

Loading it is coqui's documented path (``XttsConfig().load_json``, ``Xtts(config)``,
``model.load_checkpoint(config, checkpoint_dir=…, eval=True)``), then
``model.synthesize(text, speaker="<voice>", language="en")``. ``mel_stats`` is merged into
model.pth because coqui's loader reads the statistics from there, not from mel_stats.pth.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine import paths
from engine.config import TrainConfig
from engine.files import unpack_atomic
from engine.generate import conditioning
from engine.generate import synthesis as generate
from engine.generate.export import (
    _STORED,
    MANIFEST,
    MODEL_CARD,
    ExportError,
    dataset_size,
    export_path,
    final_metrics,
    loss_line,
    safe_members,
    scores_section,
)
from engine.models.xtts import files as models

SPEAKERS_FILE = "speakers_xtts.pth"


def export_run(voice: str, run: str, weights, out, report, log, references=None, synthesizer=None) -> Path:
    """The zip of run ``run`` of ``voice`` at ``weights`` (engine.generate.weights.ModelWeights);
    ``references``: reference ids (None: all recordings), ``synthesizer``: a loaded XTTS
    Synthesizer to reuse for the latents. Raises ExportError, ConditioningError, BaseModelError."""
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
        ("Final training loss", loss_line(metrics["train"])),
        ("Final validation loss", loss_line(metrics["validation"])),
        ("Dataset (at export)", f"{size['train_clips']} training + {size['validation_clips']} validation clips, "
                                f"{size['seconds']:.1f} s of speech"),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    scores = scores_section(run_dir, checkpoint)
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


def import_export(zip_path: Path, target: Path, log) -> Path:
    """Unpack an XTTS-v2 export into ``target`` (a hidden temporary folder renamed into place when
    complete and readable). Raises ExportError (missing files, unreadable model), OSError."""
    archive = zipfile.ZipFile(zip_path)
    with archive:
        members = safe_members(archive, zip_path)
        missing = [f for f in models.REQUIRED_FILES if f not in members]
        if missing:
            raise ExportError(f"{zip_path.name}: not an XTTS-v2 model export, missing {', '.join(missing)}")
        needed = sum(info.file_size for info in members.values())
        target.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(target.parent).free < needed:
            raise OSError(f"not enough disk space in {target.parent} to import {zip_path.name} ({needed / 1e9:.1f} GB)")
        unpack_atomic(archive, members, target, lambda folder: _check_model_folder(folder, zip_path))
    return target


def _check_model_folder(folder: Path, source: Path) -> None:
    try:
        models.load_xtts_config(folder)
        state = generate.read_state_dict(folder / "model.pth")
    except (models.BaseModelError, OSError, RuntimeError, ValueError) as exc:
        raise ExportError(f"{source.name}: the model inside cannot be read: {exc}") from None
    if not any(key.startswith("gpt.") for key in state):
        raise ExportError(f"{source.name}: model.pth holds no XTTS GPT weights")
