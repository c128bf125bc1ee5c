"""GPU memory a training run measured, kept for the batch-size suggestion of later runs.

After its first optimizer step on a GPU, the trainer records (:func:`record`) what the step
took on that GPU: the memory still allocated after the step (weights, optimizer state: the
*static* part) and the peak during it; the difference, per clip of the micro-batch and scaled
to the longest clip a run accepts (activation memory grows about linearly with the sequence),
is the *per-clip* part. They are kept in ``models/training_memory.json`` per GPU name, model
architecture, precision, optimizer and gradient checkpointing, and
:func:`engine.hardware.suggest_batch` uses them (:func:`lookup`) in place of its rule of thumb.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine import paths
from engine.files import write_bytes_atomic

MEMORY_FILE = "training_memory.json"


def _store() -> Path:
    return paths.models_dir() / MEMORY_FILE


def key(gpu_name: str, model_dir: str | Path, precision: str, optimizer: str, checkpointing: bool) -> str:
    """The record's key: the GPU's name, a hash of the model's architecture
    (:func:`engine.generate.weights.architecture`, so any fine-tune of one base model shares it) and the settings."""
    from engine.generate.weights import architecture

    try:
        shape = json.dumps(architecture(Path(model_dir)), sort_keys=True)
    except (OSError, ValueError):
        shape = str(model_dir)
    digest = hashlib.sha256(shape.encode()).hexdigest()[:12]
    return f"{gpu_name}|{digest}|{precision}|{optimizer}|{'checkpointing' if checkpointing else 'plain'}"


def record(gpu_name: str, model_dir: str | Path, precision: str, optimizer: str, checkpointing: bool, *,
           static_bytes: int, peak_bytes: int, micro_batch: int, longest_seconds: float,
           max_seconds: float) -> dict:  # fmt: skip
    """Keep one measurement (bytes, seconds) and return it as stored: ``static_gib`` and
    ``per_clip_gib`` (the peak above the static part, per clip, scaled by ``max_seconds`` /
    ``longest_seconds``, never down)."""
    scale = max(1.0, max_seconds / max(longest_seconds, 1e-3))
    entry = {
        "static_gib": round(static_bytes / 2**30, 3),
        "per_clip_gib": round(max(0, peak_bytes - static_bytes) / max(1, micro_batch) * scale / 2**30, 3),
        "measured": {"peak_gib": round(peak_bytes / 2**30, 3), "micro_batch": micro_batch,
                     "longest_seconds": round(longest_seconds, 2), "max_seconds": max_seconds},
    }  # fmt: skip
    data = _read()
    data[key(gpu_name, model_dir, precision, optimizer, checkpointing)] = entry
    write_bytes_atomic(_store(), (json.dumps(data, indent=1) + "\n").encode())
    return entry


def lookup(gpu_name: str, model_dir: str | Path, precision: str, optimizer: str, checkpointing: bool) -> dict | None:
    """The stored measurement for these settings on this GPU, or None."""
    entry = _read().get(key(gpu_name, model_dir, precision, optimizer, checkpointing))
    return entry if isinstance(entry, dict) and "per_clip_gib" in entry else None


def _read() -> dict:
    try:
        data = json.loads(_store().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
