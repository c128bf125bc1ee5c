"""GPU memory on this machine, and the batch size and gradient accumulation it suggests.

The rule of thumb (:func:`micro_batch_for_memory`) is fitted to what XTTS-v2 users report for
GPT fine-tuning at fp32 with ~11 s clips, not measured here (no GPU was available):

- coqui's recipe (``recipes/ljspeech/xtts_v2/train_gpt_xtts.py``) uses micro-batch 3 with
  gradient accumulation 84, and its maintainers note that fine-tuning did not yet fit in
  16 GB and that they use batch 8 x accumulation 1 internally (coqui-ai/TTS pull request 3086);
- on 12 GB cards micro-batch 2 (x accumulation 2) or 4 x 2 runs and 8 does not
  (daswer123/xtts-finetune-webui issues 41 and 70); batch 1 with 20 s clips takes 10.9 GB on
  an RTX 3060 (erew123/alltalk_tts issue 241).

Once a run has trained on a GPU, its first step's measurement (:mod:`engine.training.memory`)
replaces this rule for that GPU model and those settings.

Hence: about 5 GiB for the GPT's weights, gradients and AdamW state plus about 3 GiB per clip
of the micro-batch at fp32 (about 2 GiB with bf16/fp16 autocast). Our loop holds less than
coqui's trainer (no DVAE or HiFi-GAN on the GPU, cached features), so the rule errs on the
safe side; the trainer also halves the micro-batch by itself on CUDA out of memory.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

#: GiB the GPT's weights, gradients and AdamW state take at fp32 (about 380 M parameters x 16 bytes).
STATIC_GIB = 5.0
#: GiB of activations per clip of the micro-batch, at fp32 and with bf16/fp16 autocast.
PER_CLIP_GIB = {"fp32": 3.0, "bf16": 2.0, "fp16": 2.0}
#: The largest micro-batch suggested: beyond it a step is slower per clip on small datasets.
MAX_MICRO_BATCH = 16
#: The effective batch aimed at when memory allows less: coqui's internal 8 x 1 (pull request 3086).
TARGET_BATCH = 8
CPU_BATCH = 2
_GIB = 1024**3

_PROBE = (
    "import json, torch\n"
    "print(json.dumps([[i, torch.cuda.get_device_name(i), *torch.cuda.mem_get_info(i)]"
    " for i in range(torch.cuda.device_count())]))"
)


@dataclass(frozen=True)
class GpuMemory:
    """One CUDA device: its index, name, and free and total memory in bytes."""

    index: int
    name: str
    free_bytes: int
    total_bytes: int

    @property
    def free_gib(self) -> float:
        return self.free_bytes / _GIB

    @property
    def total_gib(self) -> float:
        return self.total_bytes / _GIB


@dataclass(frozen=True)
class BatchSuggestion:
    """A suggested ``batch_size`` (global), ``gradient_accumulation`` and ``gpus`` count, with
    ``reason``: one or two sentences saying what was found and why."""

    batch_size: int
    gradient_accumulation: int
    gpus: int
    reason: str
    batch_frames: int = 0  # F5-TTS: mel frames per GPU (0: batches count clips)


def gpu_memory(timeout: float = 60.0) -> list[GpuMemory]:
    """Free and total memory of each CUDA device ([] when torch sees none).

    ``torch.cuda.mem_get_info`` creates a CUDA context (about 0.5 GB per device) that lives as
    long as its process, so it runs in a short child process: the web app keeps no context
    the trainer could need. Raises RuntimeError if that probe fails or takes over ``timeout`` s.
    """
    import torch

    if not torch.cuda.is_available():
        return []
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=True
        )
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise RuntimeError(f"cannot read the GPU memory: {exc}") from exc
    return [GpuMemory(int(i), str(name), int(free), int(total)) for i, name, free, total in rows]


def micro_batch_for_memory(free_gib: float, precision: str = "fp32") -> int:
    """Clips per forward pass that fit in ``free_gib`` GiB of one GPU (at least 1): the rule of
    thumb of this module's docstring, ``(free - 5 GiB) / (3 GiB per clip at fp32, 2 with
    bf16/fp16)``, capped at :data:`MAX_MICRO_BATCH`."""
    per_clip = PER_CLIP_GIB.get(precision, PER_CLIP_GIB["fp32"])
    return max(1, min(MAX_MICRO_BATCH, math.floor((free_gib - STATIC_GIB) / per_clip)))


#: F5-TTS, batches in mel frames (24 kHz, hop 256: 93.75 frames per second). Rule of thumb from
#: the F5-TTS paper (arXiv:2410.06885: 38,400 frames per 80 GB A100, mixed precision): about 6 GiB
#: for the 336 M-parameter model with AdamW, then 500 frames per GiB with bf16/fp16, half at fp32.
F5_STATIC_GIB = 6.0
F5_FRAMES_PER_GIB = {"fp32": 250, "bf16": 500, "fp16": 500}
F5_FRAMES_PER_SECOND = 24000 / 256
#: The recipe's frames per GPU (f5_tts/train/finetune_cli.py), suggested on the CPU; at most the paper's.
F5_RECIPE_FRAMES = 3200
F5_MAX_FRAMES = 38400


def suggest_frames(gpus: list[GpuMemory], precision: str = "fp32", measured: dict | None = None,
                   max_seconds: float = 30.0) -> BatchSuggestion:  # fmt: skip
    """``batch_frames`` (mel frames per GPU, F5-TTS) for the GPU with the least free memory: from
    ``measured`` (an earlier run's first step on this GPU model, engine.training.memory: ``static_gib``
    + ``per_clip_gib`` per clip of ``max_seconds``) when given, else :data:`F5_FRAMES_PER_GIB`.
    Rounded down to a multiple of 100, at least 500 and at most :data:`F5_MAX_FRAMES`. Without a
    GPU: the recipe's 3200 frames."""
    if not gpus:
        return BatchSuggestion(
            CPU_BATCH, 1, 0,
            f"No GPU found: training runs on the CPU, which is very slow with the real F5-TTS model. "
            f"Suggested batch_frames {F5_RECIPE_FRAMES} (the authors' fine-tuning recipe).",
            batch_frames=F5_RECIPE_FRAMES,
        )  # fmt: skip
    smallest = min(gpus, key=lambda g: g.free_bytes)
    if measured:
        per_frame = max(measured["per_clip_gib"], 1e-3) / max(max_seconds * F5_FRAMES_PER_SECOND, 1.0)
        static = measured["static_gib"]
        basis = f"measured on this GPU by an earlier run: {static:.1f} GiB + {per_frame * 1000:.2f} GiB per 1000 frames"
    else:
        per_frame, static = 1 / F5_FRAMES_PER_GIB.get(precision, 250), F5_STATIC_GIB
        basis = f"rule of thumb: {static:g} GiB + 1 GiB per {F5_FRAMES_PER_GIB.get(precision, 250)} frames"
    frames = int((smallest.free_gib - static) / per_frame) // 100 * 100
    frames = max(500, min(F5_MAX_FRAMES, frames))
    found = ", ".join(f"GPU {g.index} {g.name}: {g.free_gib:.1f} of {g.total_gib:.1f} GiB free" for g in gpus)
    reason = (
        f"{found}. About {frames} mel frames ({frames / F5_FRAMES_PER_SECOND:.0f} s of audio) per GPU fit at "
        f"{precision} ({basis}); suggested batch_frames {frames}, gradient_accumulation 1 x {len(gpus)} GPU(s)."
    )
    return BatchSuggestion(CPU_BATCH, 1, len(gpus), reason, batch_frames=frames)


def suggest_batch(gpus: list[GpuMemory], n_train_clips: int, precision: str = "fp32",
                  measured: dict | None = None) -> BatchSuggestion:  # fmt: skip
    """The batch size and gradient accumulation to suggest for ``gpus`` and a dataset of
    ``n_train_clips`` training clips.

    The micro-batch is what the GPU with the least free memory fits: from ``measured`` (a
    record of an earlier run's first step on this GPU model with the same settings,
    :func:`engine.training.memory.lookup`: ``static_gib`` + ``per_clip_gib`` per clip) when
    given, else the rule of thumb (:func:`micro_batch_for_memory`); accumulation raises the effective batch toward
    :data:`TARGET_BATCH`; the batch stays at most half the training clips (at least two steps
    per epoch) when the dataset allows. Without a GPU: batch 2, accumulation 1, on the CPU.
    """
    if not gpus:
        return BatchSuggestion(
            CPU_BATCH,
            1,
            0,
            f"No GPU found: training runs on the CPU, which is very slow with the real XTTS-v2 model. "
            f"Suggested batch_size {CPU_BATCH}, gradient_accumulation 1.",
        )
    world = len(gpus)
    smallest = min(gpus, key=lambda g: g.free_bytes)
    if measured:
        per_clip, static = max(measured["per_clip_gib"], 0.05), measured["static_gib"]
        micro = max(1, min(MAX_MICRO_BATCH, math.floor((smallest.free_gib - static) / per_clip)))
        basis = f"measured on this GPU by an earlier run: {static:.1f} GiB + {per_clip:.2f} GiB per clip"
    else:
        micro = micro_batch_for_memory(smallest.free_gib, precision)
        basis = f"rule of thumb: 5 GiB + {PER_CLIP_GIB.get(precision, 3.0):g} GiB per clip"
    if n_train_clips >= 2:
        micro = max(1, min(micro, n_train_clips // (2 * world)))
    accumulation = max(1, math.ceil(TARGET_BATCH / (micro * world)))
    if n_train_clips >= 2:
        while accumulation > 1 and micro * world * accumulation > n_train_clips // 2:
            accumulation -= 1
    batch = micro * world * accumulation
    found = ", ".join(f"GPU {g.index} {g.name}: {g.free_gib:.1f} of {g.total_gib:.1f} GiB free" for g in gpus)
    reason = (
        f"{found}. About {micro} clip(s) per GPU fit at {precision} ({basis}); suggested batch_size {batch} = "
        f"{micro} x {accumulation} accumulation x {world} GPU(s)."
    )
    return BatchSuggestion(batch, accumulation, world, reason)
