"""The state of a training run: :class:`TrainState`, everything a checkpoint restores besides the
weights and the optimizer, scheduler and scaler (saved whole into state.pt), and :class:`Run`,
the live objects the loop's top-level functions (engine.training.loop) share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config import TrainConfig
from engine.models.family import ModelFamily, Trainee
from engine.training import distributed, reporting


@dataclass
class TrainState:
    """Everything a checkpoint restores besides the weights and the optimizer, scheduler and
    grad-scaler states: saved whole into the checkpoint's state.pt (as top-level keys beside
    ``optimizer``, ``scheduler``, ``scaler``) and loaded whole on resume.

    Attributes:
        step: optimizer updates applied; epoch / batch_in_epoch: the position in the batch plan.
        best_loss / best_step: the lowest validation loss and its step.
        loss_average: moving average of the training loss (spike detection).
        consecutive_skips / skipped_steps: updates not applied (non-finite), in a row and in all.
        spike_start: first step of the loss spike in progress (None outside one).
        last_good_step: the newest complete checkpoint saved before the latest spike's first step;
            last_good_steps: every such step (protected from pruning); spike_checkpoints: steps
            saved during a spike (never "last good").
        world_size / batch_size: the run's shape when saved; gradient_accumulation /
            micro_batch_size: the micro-batch split (changed by an out-of-memory split, kept on
            resume when the shape is unchanged).
        ema_updates: updates averaged into the EMA weights (ema.safetensors).
        rng: Python, NumPy and torch RNG states (engine.training.checkpoint.capture_rng_state).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    loss_average: float | None = None
    consecutive_skips: int = 0
    skipped_steps: int = 0
    spike_start: int | None = None
    last_good_step: int | None = None
    last_good_steps: list[int] = field(default_factory=list)
    spike_checkpoints: list[int] = field(default_factory=list)
    world_size: int = 1
    batch_size: int = 0
    gradient_accumulation: int = 1
    micro_batch_size: int = 1
    ema_updates: int = 0
    rng: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict) -> TrainState:
        """The TrainState of a checkpoint's state.pt (keys that are not fields are ignored; a
        checkpoint from before a field existed gets its default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        loaded = cls(**{k: v for k, v in state.items() if k in names})
        if not loaded.last_good_steps and loaded.last_good_step is not None:
            loaded.last_good_steps = [loaded.last_good_step]
        return loaded


@dataclass
class Run:
    """One training run's live objects, handed to the loop's top-level functions."""

    cfg: TrainConfig
    run_dir: Path
    env: distributed.DistEnv
    log: Callable[[str], None]
    metrics: reporting.MetricsWriter
    family: ModelFamily
    trainee: Trainee
    model: torch.nn.Module  # trainee.module, wrapped in DDP under torchrun
    frozen: list[torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    ema: torch.optim.swa_utils.AveragedModel | None
    state: TrainState
    steps_per_epoch: int
    total_steps: int
    evaluators: list[int] = field(default_factory=list)  # pids of the evaluators this trainer started

    @property
    def parts(self) -> int:
        """Micro-batches per global batch: gradient accumulation x processes."""
        return self.state.gradient_accumulation * self.env.world_size

    def epoch_position(self) -> float:
        return round(self.state.epoch + self.state.batch_in_epoch / self.steps_per_epoch, 6)
