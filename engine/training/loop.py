"""The training entry: ``python -m engine train training/<voice>/<run>/train.yaml``.

Reads top to bottom, after nanoGPT's ``train.py``: load config → build data, model, optimizer →
resume from the newest complete checkpoint → loop {forward/backward over the micro-batches of
a step; optimizer step; log; at each epoch's end the LR milestone, validation, checkpoint} →
final save. ``step`` counts applied optimizer updates only: an update skipped for a non-finite
loss or gradient (or an fp16 overflow the grad scaler skips) is counted apart, in ``skipped_steps``. Under ``torchrun`` each rank trains on its own slice of every global batch and
DistributedDataParallel averages the gradients; only rank 0 writes metrics and checkpoints.

Randomness is tied to positions, not to history: the batch plan is a function of (seed, epoch)
and every micro-batch reseeds torch and its conditioning-slice generator from (seed, step,
micro-batch index). So a resumed run repeats an uninterrupted one exactly, and a run on N
processes sees the same micro-batches, dropout masks and slices as one process accumulating
N times as many micro-batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from engine import models, runs
from engine.config import TrainConfig
from engine.errors import TimbreError
from engine.models.family import Trainee
from engine.training import checkpoint as ckpt
from engine.training import data, distributed, evaluation, freezing, memory, performance, precision, reporting
from engine.training.state import Run, TrainState

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3
#: Consecutive non-finite steps after which the run stops as diverged.
MAX_CONSECUTIVE_SKIPS = 5
#: A training loss above this multiple of its moving average is logged as a spike.
SPIKE_FACTOR = 3.0


class TrainingError(TimbreError, RuntimeError):
    """A run that cannot start or go on; the message says why in plain words."""


def micro_seed(seed: int, step: int, micro_index: int) -> int:
    """Seed for one micro-batch: depends only on its position, never on what ran before."""
    return (seed * 1_000_003 + step * 1_009 + micro_index) % (2**63 - 1)


def train(config_path: str | Path) -> int:
    """Run (or resume) the training described by ``train.yaml``; returns the exit status.

    0: finished or stopped on request (a checkpoint holds the last step); 1: failed;
    3: loss diverged. Everything is logged to the run folder; nothing there is deleted on failure.
    """
    config_path = Path(config_path).resolve()
    run_dir = config_path.parent
    stop = reporting.StopRequest(run_dir)  # first: a stop asked for while loading is kept
    cfg = TrainConfig.load(config_path)
    env = distributed.setup_distributed(use_gpu=cfg.gpus != 0)
    log = reporting.RunLog(run_dir, env)
    status = {
        "state": "running",
        "step": 0,
        "epoch": 0.0,
        "total_steps": None,
        "message": "starting",
    }
    reporting.write_status(run_dir, env, **status)
    try:
        code, message, step = _train(cfg, run_dir, env, log, status, stop)
    except Exception as exc:  # the run folder keeps everything; the reason goes to log and status
        log("training failed:\n" + traceback.format_exc())
        code, message, step = (
            EXIT_FAILED,
            f"{type(exc).__name__}: {exc}",
            status["step"],
        )
    state = {EXIT_OK: "finished", EXIT_DIVERGED: "failed", EXIT_FAILED: "failed"}[code]
    if code == EXIT_OK and message.startswith("stopped"):
        state = "stopped"
    status.update(state=state, step=step, message=message, exit_code=code)
    reporting.write_status(run_dir, env, **status)
    log(message)
    distributed.teardown_distributed(env)
    return code


def record_memory(cfg: TrainConfig, base, env: distributed.DistEnv, micro_size: int, longest: float, log) -> bool:
    """After the first step on a GPU: keep what it took (engine.training.memory) for the batch
    suggestion of later runs. Never fails the run; returns True once tried."""
    try:
        entry = memory.record(
            torch.cuda.get_device_name(env.device), base, cfg.precision, cfg.optimizer, cfg.gradient_checkpointing,
            static_bytes=torch.cuda.memory_allocated(env.device), peak_bytes=torch.cuda.max_memory_allocated(env.device),
            micro_batch=micro_size, longest_seconds=longest, max_seconds=cfg.max_audio_seconds,
        )  # fmt: skip
        log(f"GPU memory: {entry['measured']['peak_gib']:.2f} GiB at the first step's peak; "
            f"{entry['static_gib']:.2f} GiB static + {entry['per_clip_gib']:.2f} GiB per clip of up to "
            f"{cfg.max_audio_seconds:g} s (kept for batch suggestions)")  # fmt: skip
    except (OSError, RuntimeError, ValueError) as error:
        log(f"note: the GPU memory measurement was not kept: {error}")
    return True


def _train(
    cfg: TrainConfig, run_dir: Path, env: distributed.DistEnv, log, status: dict, stop: reporting.StopRequest
) -> tuple[int, str, int]:
    # ---- config and environment --------------------------------------------------------------
    world = env.world_size
    if world != cfg.world_size() and env.distributed:
        log(f"note: train.yaml asks for {cfg.world_size()} processes, torchrun started {world}")
    micro_size = cfg.batch_size // (cfg.gradient_accumulation * world)
    if not cfg.batch_frames and (micro_size < 1 or cfg.batch_size % (cfg.gradient_accumulation * world)):
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by gradient_accumulation x processes")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    precision.check_precision(cfg.precision, env.device)  # before anything is loaded
    base = models.require_base_model(cfg.base_model_dir()) if cfg.family == "xtts" else cfg.base_model_dir()
    family = models.get_family(cfg.family)
    if family.missing_files(base):
        raise models.BaseModelError(
            f"{family.title} base model in {base} lacks {', '.join(family.missing_files(base))}"
        )
    log(f"run {run_dir}  {family.title} base model {base}  device {env.device}  processes {world}")

    # ---- model and data (the family's), frozen groups ------------------------------------------
    trainee = family.trainee(cfg, base, env.device, log)
    check_dataset(cfg, trainee, log)
    frozen = freezing.apply_freeze(trainee.freeze_groups, cfg.freeze)
    plan = batch_plan(cfg, trainee.train_set, world)
    steps_per_epoch = len(plan(0))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    status["total_steps"] = total_steps

    # ---- optimizer, schedule, precision ------------------------------------------------------------
    module = trainee.module
    performance.configure_backends(env.device, cfg.tf32)
    if cfg.gradient_checkpointing:
        if trainee.enable_gradient_checkpointing is None:
            raise TrainingError(f"gradient_checkpointing: {family.title} has none; set it to false")
        trainee.enable_gradient_checkpointing(module)
    optimizer = performance.make_optimizer(
        freezing.optimizer_groups(module, cfg.weight_decay), cfg.optimizer, env.device, cfg.learning_rate
    )
    log(performance.describe(optimizer, module, env.device, cfg.gradient_checkpointing))
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    ema = make_ema(module, cfg.ema_decay) if cfg.ema_decay else None
    run = Run(
        cfg=cfg, run_dir=run_dir, env=env, log=log, metrics=reporting.MetricsWriter(run_dir, env), family=family,
        trainee=trainee,
        model=module, frozen=frozen, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16"),
        amp_dtype=precision.autocast_dtype(cfg.precision), ema=ema,
        state=TrainState(world_size=world, batch_size=cfg.batch_size, gradient_accumulation=cfg.gradient_accumulation,
                         micro_batch_size=micro_size),
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
    )  # fmt: skip

    # ---- resume -------------------------------------------------------------------------------
    if env.is_main:
        ckpt.remove_stale_temporaries(run_dir, log=log)  # left by a trainer killed mid-save
    if env.distributed:
        torch.distributed.barrier()
    if not resume(run):
        ckpt.check_disk_space(run_dir, module.state_dict(), cfg.keep_checkpoints)
    if env.distributed:
        run.model = DistributedDataParallel(
            module, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )

    # ---- the loop -----------------------------------------------------------------------------
    state = run.state
    log(f"training: {steps_per_epoch} steps per epoch, {total_steps} steps in all, " + (
        f"batches of up to {cfg.batch_frames} frames per process" if cfg.batch_frames else f"batch {cfg.batch_size}")
        + f" = {state.gradient_accumulation} accumulation x {world} processes"
        + ("" if cfg.batch_frames else f" x {state.micro_batch_size} clips"))  # fmt: skip
    status.update(step=state.step, epoch=run.epoch_position(), message="training")
    reporting.write_status(run_dir, env, **status)
    if state.step >= total_steps:
        return EXIT_OK, f"finished: already at step {state.step} of {total_steps}", state.step

    memory_recorded = False
    while state.epoch < cfg.epochs and state.step < total_steps:
        batches = plan(state.epoch)
        while state.batch_in_epoch < steps_per_epoch and state.step < total_steps:
            batch = batches[state.batch_in_epoch]
            started = time.perf_counter()
            applied, diverged = train_step(run, batch, status, time.perf_counter)
            if diverged:
                return diverged
            if env.device.type == "cuda" and env.is_main and applied and not memory_recorded:
                longest = max(trainee.train_set[i].seconds for i in batch)
                memory_recorded = record_memory(cfg, base, env, len(batch) // run.parts, longest, log)
            elapsed = time.perf_counter() - started
            status.update(step=state.step, epoch=run.epoch_position(), skipped_steps=state.skipped_steps,
                          samples_per_second=len(batch) / elapsed)  # fmt: skip
            reporting.write_status(run_dir, env, **status)
            if distributed.any_rank(stop.requested(), env):
                save(run, "stop requested")
                stop.clear()
                return EXIT_OK, f"stopped at step {state.step}", state.step

        if state.batch_in_epoch >= steps_per_epoch:  # a whole epoch is done
            state.epoch += 1
            state.batch_in_epoch = 0
            if cfg.lr_schedule == "multistep":
                run.scheduler.step()
            if cfg.validate_every and state.epoch % cfg.validate_every == 0:
                validate(run)
            if state.consecutive_skips:
                log(f"no checkpoint at the end of epoch {state.epoch}: the last {state.consecutive_skips} "
                    "updates were skipped")  # fmt: skip
            elif state.epoch % cfg.save_every == 0 or state.epoch >= cfg.epochs:
                save(run, f"end of epoch {state.epoch}")

    if not any(c.step == state.step and c.complete for c in runs.list_checkpoints(run_dir)):
        save(run, "final")
    if env.distributed:
        check_ranks_agree(module, env)
        log("weights identical on all ranks")
    skipped = f" ({state.skipped_steps} update(s) skipped)" if state.skipped_steps else ""
    return EXIT_OK, f"finished at step {state.step}{skipped}", state.step


# ---- building blocks, in the order the loop uses them ------------------------------------------


def check_dataset(cfg: TrainConfig, trainee: Trainee, log) -> None:
    """Log every sample the family left out; raise TrainingError when too few remain."""
    for problem in trainee.problems:
        log(f"dataset check: skipped {problem}")
    if not trainee.train_set:
        raise TrainingError("dataset check: no usable training clip in train.csv:\n" + "\n".join(trainee.problems))
    if len(trainee.train_set) < cfg.min_training_clips:
        raise TrainingError(
            f"dataset check: only {len(trainee.train_set)} usable training clip(s) in train.csv, fewer than "
            f"min_training_clips = {cfg.min_training_clips}; add recordings in the Dataset tab"
        )
    seconds = sum(s.seconds for s in trainee.train_set)
    log(f"dataset: {len(trainee.train_set)} training clips ({seconds:.1f} s), {len(trainee.val_set)} validation "
        f"clips; {trainee.info}")  # fmt: skip


def batch_plan(cfg: TrainConfig, samples: list, world: int) -> Callable[[int], list[list[int]]]:
    """``epoch -> global batches`` (lists of sample indices): clips per batch
    (data.epoch_batches, ``batch_size``) or mel frames per process (data.frame_batches,
    ``batch_frames`` x processes x accumulation frames per global batch)."""
    if cfg.batch_frames:
        frames = [s.frames for s in samples]
        budget = cfg.batch_frames * world * cfg.gradient_accumulation
        parts = world * cfg.gradient_accumulation
        return lambda epoch: data.frame_batches(frames, budget, parts, cfg.seed, epoch)
    durations = [s.seconds for s in samples]
    return lambda epoch: data.epoch_batches(durations, cfg.batch_size, cfg.seed, epoch)


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``multistep``: MultiStepLR over epochs (stepped at each epoch's end). ``warmup_linear``: the
    learning rate rises linearly over W updates and then falls linearly to 0 at ``total_steps``
    (stepped per applied update; F5-TTS's fine-tuning schedule, ``f5_tts/model/trainer.py``:
    LinearLR warm-up then LinearLR decay), W = ``warmup_fraction`` of the updates, at least
    ``warmup_min_updates`` when the run has four times as many."""
    if cfg.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    warmup = warmup_updates(cfg, total_steps)
    decay = max(1, total_steps - warmup)

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / (warmup + 1)
        return max(0.0, 1.0 - (update - warmup) / decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_updates(cfg: TrainConfig, total_steps: int) -> int:
    """Warm-up updates of ``warmup_linear`` (see :func:`make_scheduler`)."""
    warmup = round(cfg.warmup_fraction * total_steps)
    if total_steps >= 4 * cfg.warmup_min_updates:
        warmup = max(warmup, cfg.warmup_min_updates)
    return min(warmup, max(total_steps - 1, 0))


def make_ema(module: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An EMA of ``module``'s parameters and buffers, ``w_ema <- decay w_ema + (1 - decay) w``
    per applied update (``torch.optim.swa_utils.get_ema_multi_avg_fn``)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def resume(run: Run) -> bool:
    """Load the newest complete checkpoint into the run (weights, optimizer, scheduler, scaler,
    EMA, TrainState with its RNG); False when there is none."""
    latest = ckpt.load_latest_checkpoint(run.run_dir, log=run.log)
    if latest is None:
        return False
    path, weights, saved = latest
    run.trainee.module.load_state_dict(weights, strict=True)
    run.optimizer.load_state_dict(saved["optimizer"])
    ckpt.load_scheduler_state(run.scheduler, saved["scheduler"])
    run.scaler.load_state_dict(saved["scaler"])
    state = TrainState.from_checkpoint(saved)
    ckpt.restore_rng_state(state.rng)
    if run.ema is not None:
        ema_weights = ckpt.load_ema(path)
        if ema_weights is not None:
            run.ema.module.load_state_dict(ema_weights, strict=True)
            run.ema.n_averaged.fill_(state.ema_updates)
        else:
            run.log(f"note: {path.name} has no EMA weights; the EMA starts again from the current weights")
            run.ema = make_ema(run.trainee.module, run.cfg.ema_decay)
    if not (state.world_size == run.env.world_size and state.batch_size == run.cfg.batch_size):
        # Another shape: the micro-batch split is the config's, not the one saved.
        state.gradient_accumulation = run.state.gradient_accumulation
        state.micro_batch_size = run.state.micro_batch_size
        state.world_size, state.batch_size = run.env.world_size, run.cfg.batch_size
    run.state = state
    run.log(f"resumed from {path.name}: step {state.step}, epoch {state.epoch}, "
            f"batch {state.batch_in_epoch} of {run.steps_per_epoch}")  # fmt: skip
    return True


def train_step(run: Run, batch: list[int], status: dict, clock) -> tuple[bool, tuple | None]:
    """One global batch: forward/backward (with the out-of-memory recovery), clipping, the
    update (or its skip), EMA, metrics, spike watch. Returns (applied, diverged) where
    ``diverged`` is the loop's return value when the run must stop as diverged, else None."""
    cfg, state, env = run.cfg, run.state, run.env
    started = clock()
    freezing.set_train_mode(run.trainee.module, run.frozen)
    terms = backward_with_oom_recovery(run, batch)
    run.scaler.unscale_(run.optimizer)
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
    names = sorted(terms)
    averaged = distributed.all_mean([terms[n] for n in names] + [float(grad_norm)], run.env)
    terms, grad_norm_mean = dict(zip(names, averaged[:-1], strict=True)), averaged[-1]
    loss_value = terms.pop("loss")
    # With fp16 an overflowing gradient is the grad scaler's business: it skips that update and
    # lowers its scale (several times at the start, by design). Only a non-finite loss, or a
    # non-finite gradient without a scaler, counts towards divergence.
    overflow = run.scaler.is_enabled() and math.isfinite(loss_value) and not math.isfinite(grad_norm_mean)
    finite = math.isfinite(loss_value) and (math.isfinite(grad_norm_mean) or overflow)
    if finite:
        run.scaler.step(run.optimizer)  # on an fp16 overflow the scaler skips the update itself
        state.consecutive_skips = 0
    else:
        state.consecutive_skips += 1
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    lr = run.scheduler.get_last_lr()[0]
    state.batch_in_epoch += 1
    applied = finite and not overflow
    if applied:
        state.step += 1
        if cfg.lr_schedule == "warmup_linear":
            run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.trainee.module)
            state.ema_updates += 1
        row = {"step": state.step, "epoch": run.epoch_position(), "split": "train", **terms, "loss": loss_value,
               "lr": lr, "time": time.time(), "grad_norm": grad_norm_mean,
               "samples_per_second": len(batch) / (clock() - started), "samples": batch}  # fmt: skip
        watch_spike(run, row, loss_value, status)
        run.metrics.write(row)
        if env.is_main and (state.step % 10 == 0 or state.step == 1):
            shown = "  ".join(f"{n} {v:.4f}" for n, v in terms.items())
            run.log(f"step {state.step}/{run.total_steps}  epoch {row['epoch']:.2f}  {shown}  lr {lr:.2e}")
    else:  # not applied: counted apart, so step and the schedule count applied updates only
        state.skipped_steps += 1
        why = "fp16 gradient overflow (the grad scaler lowers its scale)" if overflow else "non-finite loss or gradient"
        event = {"event": "skipped_step", "step": state.step, "epoch": run.epoch_position(), "time": time.time(),
                 "reason": why, "skipped_steps": state.skipped_steps, "samples": batch}  # fmt: skip
        run.metrics.write({**event, **({"loss": loss_value} if math.isfinite(loss_value) else {})})
        if not overflow:
            run.log(f"after step {state.step}: {why}, update skipped ({state.consecutive_skips} in a row)")
        if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            status["skipped_steps"] = state.skipped_steps
            message = (
                f"loss diverged after step {state.step}: {state.consecutive_skips} updates in a row skipped ({why})"
            )
            return False, (EXIT_DIVERGED, message, state.step)
    if finite:
        state.loss_average = loss_value if state.loss_average is None else 0.9 * state.loss_average + 0.1 * loss_value
    return applied, None


def watch_spike(run: Run, row: dict, loss_value: float, status: dict) -> None:
    """Mark a training loss above SPIKE_FACTOR x its moving average as a spike; at a spike's first
    step, the newest checkpoint saved before it becomes "last good" (kept from pruning)."""
    state = run.state
    if state.loss_average is None or loss_value <= SPIKE_FACTOR * state.loss_average:
        state.spike_start = None
        return
    row["spike"] = True
    if state.spike_start is None:  # the first step of a spike: the checkpoints before it are good
        state.spike_start = state.step
        good = [c.step for c in runs.list_checkpoints(run.run_dir)
                if c.complete and c.step < state.step and c.step not in state.spike_checkpoints]  # fmt: skip
        if good:
            state.last_good_step = good[-1]
            state.last_good_steps = sorted({*state.last_good_steps, state.last_good_step})
        run.log(f"step {state.step}: loss spike {loss_value:.4f} against a moving average of "
                f"{state.loss_average:.4f}; " + (f"last good checkpoint {runs.checkpoint_name(state.last_good_step)} "
                "kept — resume from it with a lower learning rate: python -m engine branch"
                if good else "no checkpoint before it yet"))  # fmt: skip
    run.metrics.write({"event": "spike", "step": state.step, "epoch": row["epoch"], "time": row["time"],
                       "loss": loss_value, "moving_average": state.loss_average,
                       "last_good_step": state.last_good_step, "spike_start": state.spike_start})  # fmt: skip
    status["last_good_step"] = state.last_good_step


def backward(run: Run, batch: list[int]) -> dict[str, float]:
    """Forward and backward over this rank's micro-batches of one global batch; gradients
    accumulate (DDP syncs on the last). Returns the family's loss terms, averaged over the
    micro-batches (``loss`` the optimised one)."""
    cfg, env, state = run.cfg, run.env, run.state
    accumulation = state.gradient_accumulation
    sums: dict[str, float] = {}
    for a in range(accumulation):
        index = a * env.world_size + env.rank  # this micro-batch's place in the global batch
        seed = micro_seed(cfg.seed, state.step, index)
        torch.manual_seed(seed)
        samples = [run.trainee.train_set[i] for i in data.split_batch(batch, index, run.parts)]
        inputs = to_device(run.trainee.collate(samples, random.Random(seed)), env.device)
        sync = a == accumulation - 1 or not env.distributed
        with run.model.no_sync() if not sync else contextlib.nullcontext():
            with torch.autocast(env.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                terms = run.trainee.losses(run.model, inputs)
            run.scaler.scale(terms["loss"] / accumulation).backward()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item() / accumulation
    return sums


def backward_with_oom_recovery(run: Run, batch: list[int]) -> dict[str, float]:
    """:func:`backward`; on CUDA out-of-memory free memory and retry once, then halve the
    micro-batch and double gradient accumulation (the effective batch is unchanged) until
    it fits. The new split is kept in the TrainState, so resume keeps it. Under DDP the error
    is raised: one rank cannot retry while the others wait in a collective."""
    state, retried = run.state, False
    while True:
        try:
            return backward(run, batch)
        except torch.cuda.OutOfMemoryError:
            run.optimizer.zero_grad(set_to_none=True)
            free_memory(run.env.device)
            smallest = len(batch) // run.parts <= 1
            if run.env.distributed or (retried and smallest):
                raise
            if not retried:
                retried = True
                event = {"event": "oom_retry"}
            else:
                state.micro_batch_size = max(1, state.micro_batch_size // 2)
                state.gradient_accumulation *= 2
                event = {"event": "oom_split", "micro_batch_size": state.micro_batch_size,
                         "gradient_accumulation": state.gradient_accumulation}  # fmt: skip
            run.metrics.write({**event, "step": state.step + 1, "epoch": run.epoch_position(), "time": time.time()})
            run.log(f"step {state.step + 1}: CUDA out of memory; " + (
                "retrying once" if event["event"] == "oom_retry"
                else f"now {state.gradient_accumulation} micro-batches of {state.micro_batch_size} clips"))  # fmt: skip


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def validate(run: Run) -> None:
    """The family's loss terms over the validation clips (rank slices, averaged over all ranks,
    weighted by clips), logged as a ``validation`` row; the best loss is kept."""
    cfg, env, state = run.cfg, run.env, run.state
    val_set = run.trainee.val_set
    if not val_set:
        return
    run.trainee.module.eval()
    size = max(1, state.micro_batch_size)
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad(), torch.autocast(env.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        for start in range(env.rank * size, len(val_set), size * env.world_size):
            samples = val_set[start : start + size]
            torch.manual_seed(micro_seed(cfg.seed, -1, start))  # a flow family draws noise and times
            terms = run.trainee.losses(run.trainee.module, to_device(run.trainee.collate(samples, None), env.device))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(samples)
            count += len(samples)
    names = ["loss", *run.family.loss_terms]  # the same on every rank, with or without clips
    totals = distributed.all_mean([sums.get(n, 0.0) for n in names] + [float(count)], env)
    terms = {n: totals[i] / max(totals[-1], 1e-9) for i, n in enumerate(names)}
    loss = terms.pop("loss")
    run.metrics.write({"step": state.step, "epoch": run.epoch_position(), "split": "validation", **terms,
                       "loss": loss, "lr": run.scheduler.get_last_lr()[0], "time": time.time()})  # fmt: skip
    shown = "  ".join(f"{n} {v:.4f}" for n, v in terms.items())
    run.log(f"validation at step {state.step}: {shown}  loss {loss:.4f}")
    if state.best_loss is None or loss < state.best_loss:
        state.best_loss, state.best_step = loss, state.step


def save(run: Run, reason: str) -> None:
    """Save a checkpoint (rank 0; the others wait at a barrier): weights, EMA, optimizer,
    scheduler, scaler and the whole TrainState; prune to ``keep_checkpoints`` (the best and the
    last good ones kept); start the background evaluator when scoring is on."""
    state, cfg = run.state, run.cfg
    if run.env.is_main:
        state.rng = ckpt.capture_rng_state()
        saved = dataclasses.asdict(state)
        if state.spike_start is not None:
            saved["spike_checkpoints"] = [*state.spike_checkpoints, state.step]
        saved.update(optimizer=run.optimizer.state_dict(), scheduler=ckpt.scheduler_state(run.scheduler),
                     scaler=run.scaler.state_dict())  # fmt: skip
        ema = run.ema.module.state_dict() if run.ema is not None else None
        path = ckpt.save_checkpoint(run.run_dir, state.step, run.trainee.module.state_dict(), saved, ema_state=ema)
        protect = {s for s in (state.best_step, *state.last_good_steps) if s is not None}
        ckpt.prune_checkpoints(run.run_dir, cfg.keep_checkpoints, protect=protect)
        run.metrics.write({"event": "checkpoint", "step": state.step, "epoch": run.epoch_position(),
                           "time": time.time(), "reason": reason})  # fmt: skip
        run.log(f"saved {path.name} ({reason})")
        start_evaluator(run)
    if state.spike_start is not None and state.step not in state.spike_checkpoints:
        state.spike_checkpoints.append(state.step)  # saved during a spike: never "last good"
    if run.env.distributed:
        torch.distributed.barrier()


def start_evaluator(run: Run) -> None:
    """At every save: (re)start the background evaluator unless one is alive, or unless the one
    this trainer started could not run (its reason is in eval/summary.json)."""
    if not run.cfg.evaluate or (run.evaluators and evaluation.read_summary(run.run_dir).get("error")):
        return
    pid = evaluation.start_evaluator(
        run.run_dir.parent.name, run.run_dir.name, os.getpid(), waiting=run.env.device.type == "cpu"
    )
    if pid not in run.evaluators:
        run.evaluators.append(pid)
        run.log(f"scoring checkpoints in the background (pid {pid}, eval/evaluate.log)")


def free_memory(device: torch.device) -> None:
    """Release cached allocator blocks after an out-of-memory error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_ranks_agree(gpt, env: distributed.DistEnv) -> None:
    """Raise TrainingError unless every rank holds the same GPT weights (DDP keeps them equal;
    a mismatch means the ranks trained apart)."""
    checksum = torch.stack([p.detach().double().sum() for p in gpt.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(env.world_size)]
    torch.distributed.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise TrainingError(f"ranks hold different weights: {[g.item() for g in gathered]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine train TRAIN_YAML`` without the CLI wrapper (for torchrun ``-m``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.training.loop TRAIN_YAML", file=sys.stderr)
        return 2
    return train(argv[0])


if __name__ == "__main__":
    sys.exit(main())
