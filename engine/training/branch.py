"""Branching a run: "start a new run from these weights" (house style 11), as distinct from
resuming the same run. Used by ``python -m engine branch`` and the Training tab's run panel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from engine.files import copy_atomic

#: The branched run's copy of its starting weights, in its own folder.
INIT_WEIGHTS_FILE = "init.safetensors"


def branch_run(
    voice: str, run: str, new_run: str, checkpoint: str = "latest", learning_rate_factor: float = 1.0
) -> Path:
    """ "Start a new run from these weights": a new run with ``run``'s settings whose GPT starts
    from ``checkpoint``'s weights, at ``learning_rate_factor`` times its learning rate (0.5 after
    a loss spike is the usual remedy). The weights are copied into the new run folder
    (``init.safetensors``) so pruning the old run never breaks the new one.

    Returns the new train.yaml. Raises engine.paths.InvalidNameError (a bad name),
    FileNotFoundError (unknown run or checkpoint), FileExistsError (``new_run`` exists),
    engine.runs.RunError (a malformed checkpoint name) and ConfigError (a bad factor, or the
    old run's train.yaml cannot be used).
    """
    source_dir = paths.run_dir(voice, run)
    source = TrainConfig.load(source_dir / "train.yaml")
    info = runs.find_checkpoint(source_dir, checkpoint)
    if not 0 < learning_rate_factor <= 10:
        raise ConfigError(f"learning_rate_factor must be in (0, 10], got {learning_rate_factor}")
    config = dataclasses.replace(source, run=new_run, learning_rate=source.learning_rate * learning_rate_factor)
    target = config.run_dir()
    if (target / "train.yaml").exists():
        raise FileExistsError(f"run {new_run!r} of voice {voice!r} already exists: {target}")
    copy_atomic(info.path / "model.safetensors", target / INIT_WEIGHTS_FILE)
    config.init_weights = str(target / INIT_WEIGHTS_FILE)
    return config.save_new()
