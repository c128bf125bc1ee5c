"""Lean, atomic checkpoints: ``checkpoints/step-NNNNNNN/{model.safetensors, state.pt, COMPLETE}``.

* ``model.safetensors``: the trained GPT weights only (no DVAE, no HiFi-GAN: those never change).
* ``state.pt``: everything else resume needs — optimizer, LR scheduler, grad scaler, the RNG
  states of Python, NumPy and torch, the sampler position, step and epoch — made of tensors and
  plain values only, so ``torch.load(path, weights_only=True)`` reads it.
* ``COMPLETE``: written last. A folder without it is never used.

A save goes to a hidden temporary folder that is renamed into place, so an exception or a kill
in the middle leaves the previous checkpoint intact. The temporary folders a killed trainer
leaves behind are cleared when the run starts or resumes (:func:`remove_stale_temporaries`).
A damaged newest checkpoint is moved aside (``checkpoints/damaged-step-…``), never deleted,
and resume falls back to the one before.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
from safetensors.torch import load_file, save_file

from engine import runs
from engine.errors import TimbreError
from engine.files import write_bytes_atomic, write_text_atomic

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
EMA_FILE = runs.EMA_FILE
COMPLETE_FILE = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"
#: ``.tmp-step-NNNNNNN-<pid>`` (a save in progress) and ``.old-step-NNNNNNN-<pid>`` (the folder
#: a re-save of the same step replaces), as :func:`save_checkpoint` names them (a name without
#: the pid counts as left by a dead process).
_TEMPORARY = re.compile(r"^\.(tmp|old)-(step-\d{7,})(?:-(\d+))?$")
#: Slack, in seconds, when comparing a process's start time with a folder's modification time.
_CLOCK_SLACK_S = 5.0


class CheckpointError(TimbreError, RuntimeError):
    """A checkpoint folder that cannot be read; the message names it."""


# --------------------------------------------------------------------------------------------
# RNG state as plain tensors (weights_only-loadable)


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def scheduler_state(scheduler) -> dict:
    """MultiStepLR's state with its ``Counter`` of milestones turned into a plain dict."""
    state = dict(scheduler.state_dict())
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = {int(k): int(v) for k, v in state["milestones"].items()}
    return state


def load_scheduler_state(scheduler, state: dict) -> None:
    state = dict(state)
    if isinstance(state.get("milestones"), dict):
        state["milestones"] = Counter({int(k): int(v) for k, v in state["milestones"].items()})
    scheduler.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Save and load


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    training_state: dict,
    before_complete: Callable[[Path], None] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNNN/`` atomically and return its path.

    Args:
        run_dir: the run folder.
        step: optimizer steps done; names the folder.
        model_state: the GPT's ``state_dict()`` (tensors are copied to CPU, made contiguous).
        training_state: optimizer/scheduler/scaler/RNG/sampler state (tensors and plain values).
        before_complete: test hook called with the temporary folder before COMPLETE is written.
        ema_state: the EMA weights (train.yaml ``ema_decay``), written as ema.safetensors.

    An existing folder of the same step (a re-save after resume) is replaced only after the new
    one is complete. Raises OSError on disk errors, leaving earlier checkpoints untouched.
    """
    folder = run_dir / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / runs.checkpoint_name(step)
    tmp = folder / f".tmp-{runs.checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"step": str(step)})
        if ema_state is not None:
            ema = {k: v.detach().to("cpu").contiguous().clone() for k, v in ema_state.items()}
            save_file(ema, str(tmp / EMA_FILE), metadata={"step": str(step)})
        torch.save(training_state, tmp / STATE_FILE)
        if before_complete is not None:
            before_complete(tmp)
        write_text_atomic(tmp / COMPLETE_FILE, json.dumps({"step": step, "time": time.time()}) + "\n")
        if final.exists():
            old = folder / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a complete checkpoint folder: (GPT state dict, training state). Raises CheckpointError."""
    if not (path / COMPLETE_FILE).is_file():
        raise CheckpointError(f"{path}: incomplete (no {COMPLETE_FILE} marker)")
    try:
        weights = load_file(str(path / MODEL_FILE))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise several types for damaged files
        raise CheckpointError(f"{path}: damaged ({type(exc).__name__}: {exc})") from exc
    return weights, state


def load_ema(path: Path) -> dict[str, torch.Tensor] | None:
    """The EMA weights of the checkpoint folder ``path``; None when it has none."""
    file = Path(path) / EMA_FILE
    return load_file(str(file)) if file.is_file() else None


def load_latest_checkpoint(run_dir: Path, log: Callable[[str], None] = print):
    """The newest complete checkpoint that loads: (path, weights, state), or None.

    A complete-marked checkpoint that fails to load is moved aside to
    ``checkpoints/damaged-step-NNNNNNN`` (never deleted) with a warning, and the one before it
    is tried.
    """
    for info in reversed(runs.list_checkpoints(run_dir)):
        if not info.complete:
            continue
        try:
            weights, state = load_checkpoint(info.path)
        except CheckpointError as exc:
            aside = info.path.with_name(f"damaged-{info.path.name}")
            n = 1
            while aside.exists():
                aside = info.path.with_name(f"damaged-{info.path.name}-{n}")
                n += 1
            os.replace(info.path, aside)
            log(f"warning: {exc}; moved aside to {aside.name}, trying the previous checkpoint")
            continue
        return info.path, weights, state
    return None


RETENTION_FILE = "retention.json"


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int] = frozenset()) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, sparing steps in ``protect``
    (the best by validation, the last good before a spike) and those checkpoint evaluation
    needs (:func:`engine.training.evaluation.protected_steps`: the best scored one, and those the live
    evaluator has not scored yet). Incomplete folders are left alone. ``keep`` and
    ``protect`` are recorded in ``checkpoints/retention.json`` for the evaluator's own final
    pruning (:func:`read_retention`). Returns the removed paths."""
    from engine.training import evaluation

    base = Path(run_dir) / runs.CHECKPOINTS
    if base.is_dir():
        record = json.dumps({"keep": keep, "protect": sorted(protect)}) + "\n"
        write_bytes_atomic(base / RETENTION_FILE, record.encode())
    spared = set(protect) | evaluation.protected_steps(run_dir)
    complete = [c for c in runs.list_checkpoints(run_dir) if c.complete]
    removed = []
    for info in complete[:-keep] if keep > 0 else complete:
        if info.step in spared:
            continue
        shutil.rmtree(info.path, ignore_errors=True)  # the trainer and the evaluator may both prune
        removed.append(info.path)
    return removed


def read_retention(run_dir: Path, keep: int) -> tuple[int, set[int]]:
    """``(keep, protect)`` the trainer last pruned with (``checkpoints/retention.json``), or
    ``(keep, set())`` when it recorded none."""
    try:
        data = json.loads((Path(run_dir) / runs.CHECKPOINTS / RETENTION_FILE).read_text(encoding="utf-8"))
        return int(data["keep"]), {int(s) for s in data["protect"]}
    except (OSError, ValueError, KeyError, TypeError):
        return keep, set()


def remove_stale_temporaries(run_dir: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Clear the temporary folders that dead trainers left in ``checkpoints/``; returns them.

    A SIGKILL (or power loss) during :func:`save_checkpoint` leaves ``.tmp-step-…-<pid>``
    (with the real model several GB) and, during a re-save, ``.old-step-…-<pid>``. A folder
    whose process is still alive is left alone, unless that pid started after the folder was
    last written (a reused pid). A temporary folder is deleted, except that a complete one
    (COMPLETE marker) whose ``step-…`` is missing or incomplete is renamed into place instead:
    it is the newest copy of that step (a kill between the two renames of a re-save). So a
    complete checkpoint is never deleted unless an equal complete one stands in its place.
    Called by the trainer (rank 0) before it resumes.
    """
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(m, entry) for entry in folder.iterdir() if (m := _TEMPORARY.match(entry.name)) and entry.is_dir()]
    handled = []
    # .tmp before .old: when both hold a complete copy of the step, the .tmp one is the newer.
    for match, entry in sorted(found, key=lambda item: item[0].group(1) != "tmp"):
        if match.group(3) and _owner_alive(int(match.group(3)), entry):
            continue
        final = folder / match.group(2)
        if (entry / COMPLETE_FILE).is_file() and not (final / COMPLETE_FILE).is_file():
            if final.exists():
                shutil.rmtree(final)  # an incomplete folder of the same step: not a checkpoint
            os.replace(entry, final)
            log(f"recovered {final.name} from {entry.name}, a save interrupted between its renames")
        else:
            shutil.rmtree(entry)
            log(f"removed {entry.name}, left by an interrupted save")
        handled.append(entry)
    return handled


def _owner_alive(pid: int, folder: Path) -> bool:
    """Whether the process that named ``folder`` may still be writing it."""
    if pid == os.getpid():
        return False  # this process is starting: nothing of it is saving
    if not runs.is_pid_alive(pid):
        return False
    try:
        return psutil.Process(pid).create_time() <= folder.stat().st_mtime + _CLOCK_SLACK_S
    except (psutil.Error, OSError):
        return False


def checkpoint_bytes(model_state: dict[str, torch.Tensor], optimizer_state_factor: float = 2.0) -> int:
    """Estimated size of one checkpoint in bytes: weights plus AdamW's two moments (factor 2)."""
    weights = sum(t.numel() * t.element_size() for t in model_state.values())
    return int(weights * (1 + optimizer_state_factor))


def check_disk_space(run_dir: Path, model_state: dict[str, torch.Tensor], keep: int) -> None:
    """Refuse to start (OSError) when the run folder's disk cannot hold ``keep + 1`` checkpoints
    (the newest ``keep`` plus the one being written)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    need = checkpoint_bytes(model_state) * (keep + 1)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise OSError(
            f"not enough disk space in {run_dir}: {free / 1e9:.2f} GB free, {keep + 1} checkpoints "
            f"need about {need / 1e9:.2f} GB; free some space or lower keep_checkpoints"
        )
