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
import gc
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from engine import evaluation, models, runs
from engine.config import TrainConfig
from engine.training import checkpoint as ckpt
from engine.training import data, memory, performance, precision, runtime

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3
#: Consecutive non-finite steps after which the run stops as diverged.
MAX_CONSECUTIVE_SKIPS = 5
#: A training loss above this multiple of its moving average is logged as a spike.
SPIKE_FACTOR = 3.0


class TrainingError(RuntimeError):
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
    stop = runtime.StopRequest(run_dir)  # first: a stop asked for while loading is kept
    cfg = TrainConfig.load(config_path)
    env = runtime.setup_distributed(use_gpu=cfg.gpus != 0)
    log = runtime.RunLog(run_dir, env)
    status = {
        "state": "running",
        "step": 0,
        "epoch": 0.0,
        "total_steps": None,
        "message": "starting",
    }
    runtime.write_status(run_dir, env, **status)
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
    runtime.write_status(run_dir, env, **status)
    log(message)
    runtime.teardown_distributed(env)
    return code


def record_memory(cfg: TrainConfig, base, env: runtime.DistEnv, micro_size: int, longest: float, log) -> bool:
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
    cfg: TrainConfig, run_dir: Path, env: runtime.DistEnv, log, status: dict, stop: runtime.StopRequest
) -> tuple[int, str, int]:
    # ---- config and environment --------------------------------------------------------------
    world = env.world_size
    if world != cfg.world_size() and env.distributed:
        log(f"note: train.yaml asks for {cfg.world_size()} processes, torchrun started {world}")
    micro_size = cfg.batch_size // (cfg.gradient_accumulation * world)
    if micro_size < 1 or cfg.batch_size % (cfg.gradient_accumulation * world):
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by gradient_accumulation x processes")
    accumulation = cfg.gradient_accumulation
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    precision.check_precision(cfg.precision, env.device)  # before anything is loaded
    base = models.require_base_model(cfg.base_model_dir())
    log(f"run {run_dir}  base model {base}  device {env.device}  processes {world}")

    # ---- model --------------------------------------------------------------------------------
    xtts = models.load_xtts(base, device="cpu", eval=False)
    gpt, tokenizer = xtts.gpt, xtts.tokenizer
    if cfg.init_weights:
        gpt.load_state_dict(load_file(cfg.init_weights), strict=True)
        log(f"started from the weights in {cfg.init_weights}")
    del xtts.hifigan_decoder  # not trained; frees its memory
    gpt.to(env.device)
    frozen = runtime.apply_freeze(gpt, cfg.freeze)

    # ---- data: check every line, then cached DVAE codes and conditioning mels ------------------
    dataset_dir = cfg.dataset_dir()
    features = data.FeatureExtractor(base, dataset_dir / "cache", device=env.device)
    train_set, problems = data.prepare_samples(
        data.read_metadata(dataset_dir / "train.csv"), tokenizer, features, cfg.language,
        cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.max_text_tokens,
    )  # fmt: skip
    val_path = dataset_dir / "validation.csv"
    val_set, val_problems = ([], [])
    if val_path.is_file():
        val_set, val_problems = data.prepare_samples(
            data.read_metadata(val_path), tokenizer, features, cfg.language,
            cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.max_text_tokens,
        )  # fmt: skip
    for problem in problems + val_problems:
        log(f"dataset check: skipped {problem}")
    if not train_set:
        raise TrainingError("dataset check: no usable training clip in train.csv:\n" + "\n".join(problems))
    if len(train_set) < cfg.min_training_clips:
        raise TrainingError(
            f"dataset check: only {len(train_set)} usable training clip(s) in train.csv, fewer than "
            f"min_training_clips = {cfg.min_training_clips}; add recordings in the Dataset tab"
        )
    features._dvae = None  # the DVAE is no longer needed
    log(
        f"dataset: {len(train_set)} training clips ({sum(s.seconds for s in train_set):.1f} s), "
        f"{len(val_set)} validation clips; features cached ({features.hits} hits, {features.misses} computed)"
    )
    durations = [s.seconds for s in train_set]
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    status["total_steps"] = total_steps

    # ---- optimizer, schedule, precision ------------------------------------------------------------
    performance.configure_backends(env.device, cfg.tf32)
    if cfg.gradient_checkpointing:
        performance.enable_gradient_checkpointing(gpt)
    optimizer = performance.make_optimizer(
        runtime.optimizer_groups(gpt, cfg.weight_decay), cfg.optimizer, env.device, cfg.learning_rate
    )
    log(performance.describe(optimizer, gpt, env.device, cfg.gradient_checkpointing))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    amp_dtype = precision.autocast_dtype(cfg.precision)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")

    # ---- resume -------------------------------------------------------------------------------
    if env.is_main:
        ckpt.remove_stale_temporaries(run_dir, log=log)  # left by a trainer killed mid-save
    if env.distributed:
        torch.distributed.barrier()
    step, epoch, batch_in_epoch = 0, 0, 0  # step: applied updates
    loss_average, consecutive_skips, skipped_steps = None, 0, 0
    # Loss spikes: ``spike_start`` is the first step of the spike in progress (None outside
    # one); ``last_good_step`` the newest complete checkpoint saved before the latest spike's
    # first step; every such checkpoint stays protected from pruning (``last_good_steps``),
    # and one saved during a spike never becomes "last good" (``spike_checkpoints``).
    spike_start, last_good_step, last_good_steps, spike_checkpoints = None, None, [], []
    best = {"loss": None, "step": None}
    latest = ckpt.load_latest_checkpoint(run_dir, log=log)
    if latest is not None:
        path, weights, state = latest
        gpt.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        ckpt.load_scheduler_state(scheduler, state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng_state(state["rng"])
        step, epoch, batch_in_epoch = (
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
        )
        best = {"loss": state.get("best_loss"), "step": state.get("best_step")}
        loss_average, consecutive_skips = (
            state.get("loss_average"),
            state.get("consecutive_skips", 0),
        )
        skipped_steps, spike_start = state.get("skipped_steps", 0), state.get("spike_start")
        last_good_step = state.get("last_good_step")
        last_good_steps = list(state.get("last_good_steps", [last_good_step] if last_good_step is not None else []))
        spike_checkpoints = list(state.get("spike_checkpoints", []))
        if state.get("world_size") == world and state.get("batch_size") == cfg.batch_size:
            micro_size = state.get("micro_batch_size", micro_size)  # kept after an out-of-memory split
            accumulation = state.get("gradient_accumulation", accumulation)
        log(f"resumed from {path.name}: step {step}, epoch {epoch}, batch {batch_in_epoch} of {steps_per_epoch}")
    else:
        ckpt.check_disk_space(run_dir, gpt.state_dict(), cfg.keep_checkpoints)
    model = (
        DistributedDataParallel(gpt, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        if env.distributed
        else gpt
    )

    evaluator_started: list[int] = []  # pids of the background evaluators this trainer started

    def save(reason: str) -> None:
        if env.is_main:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": ckpt.scheduler_state(scheduler),
                "scaler": scaler.state_dict(),
                "rng": ckpt.capture_rng_state(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "best_loss": best["loss"], "best_step": best["step"],
                "loss_average": loss_average, "consecutive_skips": consecutive_skips,
                "world_size": world, "batch_size": cfg.batch_size, "gradient_accumulation": accumulation,
                "micro_batch_size": micro_size, "last_good_step": last_good_step, "skipped_steps": skipped_steps,
                "spike_start": spike_start, "last_good_steps": last_good_steps,
                "spike_checkpoints": spike_checkpoints + ([step] if spike_start is not None else []),
            }  # fmt: skip
            path = ckpt.save_checkpoint(run_dir, step, gpt.state_dict(), state)
            protect = {s for s in (best["step"], *last_good_steps) if s is not None}
            ckpt.prune_checkpoints(run_dir, cfg.keep_checkpoints, protect=protect)
            metrics.write(
                {
                    "event": "checkpoint",
                    "step": step,
                    "epoch": epoch_position(),
                    "time": time.time(),
                    "reason": reason,
                }
            )
            log(f"saved {path.name} ({reason})")
            # At every save: (re)start the evaluator unless one is alive, or unless the one
            # this trainer started could not run (its reason is in eval/summary.json).
            if cfg.evaluate and not (evaluator_started and evaluation.read_summary(run_dir).get("error")):
                pid = evaluation.start_evaluator(
                    run_dir.parent.name, run_dir.name, os.getpid(), waiting=env.device.type == "cpu"
                )
                if pid not in evaluator_started:
                    evaluator_started.append(pid)
                    log(f"scoring checkpoints in the background (pid {pid}, eval/evaluate.log)")
        if spike_start is not None and step not in spike_checkpoints:
            spike_checkpoints.append(step)  # saved during a spike: never "last good"
        if env.distributed:
            torch.distributed.barrier()

    def epoch_position() -> float:
        return round(epoch + batch_in_epoch / steps_per_epoch, 6)

    def validate() -> None:
        if not val_set:
            return
        gpt.eval()
        text_sum = mel_sum = 0.0
        count = 0
        with (
            torch.no_grad(),
            torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
        ):
            for start in range(env.rank * micro_size, len(val_set), micro_size * world):
                batch = data.collate(val_set[start : start + micro_size], rng=None)
                loss_text, loss_mel = forward(gpt, batch)
                n = len(val_set[start : start + micro_size])
                text_sum, mel_sum, count = (
                    text_sum + loss_text.item() * n,
                    mel_sum + loss_mel.item() * n,
                    count + n,
                )
        totals = runtime.all_mean([text_sum, mel_sum, float(count)], env)
        text_ce, mel_ce = (
            totals[0] / max(totals[2], 1e-9),
            totals[1] / max(totals[2], 1e-9),
        )
        loss = cfg.text_loss_weight * text_ce + cfg.mel_loss_weight * mel_ce
        metrics.write({"step": step, "epoch": epoch_position(), "split": "validation", "loss_text_ce": text_ce,
                       "loss_mel_ce": mel_ce, "loss": loss, "lr": scheduler.get_last_lr()[0], "time": time.time()})  # fmt: skip
        log(f"validation at step {step}: text CE {text_ce:.4f}  mel CE {mel_ce:.4f}  loss {loss:.4f}")
        if best["loss"] is None or loss < best["loss"]:
            best.update(loss=loss, step=step)

    def forward(module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
        loss_text, loss_mel, _ = module(
            batch["text_inputs"], batch["text_lengths"], batch["audio_codes"], batch["wav_lengths"],
            cond_mels=batch["cond_mels"],
        )  # fmt: skip
        return loss_text, loss_mel

    def backward(batch: list[int]) -> tuple[float, float]:
        """Forward and backward over this rank's micro-batches of one global batch; gradients
        accumulate (DDP syncs on the last). Returns the mean unweighted text and mel CE."""
        text_sum = mel_sum = 0.0
        for a in range(accumulation):
            index = a * world + env.rank  # this micro-batch's place in the global batch
            seed = micro_seed(cfg.seed, step, index)
            torch.manual_seed(seed)
            samples = [train_set[i] for i in data.micro_batch(batch, a, env.rank, world, micro_size)]
            inputs = data.collate(samples, rng=random.Random(seed))
            sync = a == accumulation - 1 or not env.distributed
            with model.no_sync() if not sync else contextlib.nullcontext():
                with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss_text, loss_mel = forward(model, inputs)
                    loss = cfg.text_loss_weight * loss_text + cfg.mel_loss_weight * loss_mel
                scaler.scale(loss / accumulation).backward()
            text_sum += loss_text.item() / accumulation
            mel_sum += loss_mel.item() / accumulation
        return text_sum, mel_sum

    def backward_with_oom_recovery(batch: list[int]) -> tuple[float, float]:
        """:func:`backward`; on CUDA out-of-memory free memory and retry once, then halve the
        micro-batch and double gradient accumulation (the effective batch is unchanged) until
        it fits. The new split is kept in the checkpoint state, so resume keeps it. Under DDP
        the error is raised: one rank cannot retry while the others wait in a collective."""
        nonlocal micro_size, accumulation
        retried = False
        while True:
            try:
                return backward(batch)
            except torch.cuda.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                free_memory(env.device)
                if env.distributed or (retried and micro_size == 1):
                    raise
                if not retried:
                    retried = True
                    event = {"event": "oom_retry"}
                else:
                    micro_size, accumulation = micro_size // 2, accumulation * 2
                    event = {
                        "event": "oom_split",
                        "micro_batch_size": micro_size,
                        "gradient_accumulation": accumulation,
                    }
                metrics.write({**event, "step": step + 1, "epoch": epoch_position(), "time": time.time()})
                log(f"step {step + 1}: CUDA out of memory; " + (
                    "retrying once" if event["event"] == "oom_retry"
                    else f"now {accumulation} micro-batches of {micro_size} clips"))  # fmt: skip

    # ---- the loop -----------------------------------------------------------------------------
    metrics = runtime.MetricsWriter(run_dir, env)
    log(f"training: {steps_per_epoch} steps per epoch, {total_steps} steps in all, batch {cfg.batch_size} "
        f"= {accumulation} accumulation x {world} processes x {micro_size} clips")  # fmt: skip
    status.update(step=step, epoch=epoch_position(), message="training")
    runtime.write_status(run_dir, env, **status)
    if step >= total_steps:
        return EXIT_OK, f"finished: already at step {step} of {total_steps}", step

    memory_recorded = False
    while epoch < cfg.epochs and step < total_steps:
        batches = data.epoch_batches(durations, cfg.batch_size, cfg.seed, epoch)
        while batch_in_epoch < steps_per_epoch and step < total_steps:
            started = time.perf_counter()
            runtime.set_train_mode(gpt, frozen)
            batch = batches[batch_in_epoch]
            text_sum, mel_sum = backward_with_oom_recovery(batch)
            scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            )
            text_ce, mel_ce, grad_norm_mean = runtime.all_mean([text_sum, mel_sum, float(grad_norm)], env)
            loss_value = cfg.text_loss_weight * text_ce + cfg.mel_loss_weight * mel_ce
            # With fp16 an overflowing gradient is the grad scaler's business: it skips that
            # update and lowers its scale (several times at the start, by design). Only a
            # non-finite loss, or a non-finite gradient without a scaler, counts towards divergence.
            overflow = scaler.is_enabled() and math.isfinite(loss_value) and not math.isfinite(grad_norm_mean)
            finite = math.isfinite(loss_value) and (math.isfinite(grad_norm_mean) or overflow)
            if finite:
                scaler.step(optimizer)  # on an fp16 overflow the scaler skips the update itself
                consecutive_skips = 0
            else:
                consecutive_skips += 1
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if env.device.type == "cuda" and env.is_main and finite and not memory_recorded:
                memory_recorded = record_memory(
                    cfg, base, env, micro_size, max(train_set[i].seconds for i in batch), log
                )
            lr = scheduler.get_last_lr()[0]
            batch_in_epoch += 1
            elapsed = time.perf_counter() - started
            if finite and not overflow:
                step += 1
                row = {"step": step, "epoch": epoch_position(), "split": "train", "loss_text_ce": text_ce,
                       "loss_mel_ce": mel_ce, "loss": loss_value, "lr": lr, "time": time.time(),
                       "grad_norm": grad_norm_mean, "samples_per_second": cfg.batch_size / elapsed,
                       "samples": batch}  # fmt: skip
                if loss_average is not None and loss_value > SPIKE_FACTOR * loss_average:
                    row["spike"] = True
                    if spike_start is None:  # the first step of a spike: the checkpoints before it are good
                        spike_start = step
                        good = [c.step for c in runs.list_checkpoints(run_dir)
                                if c.complete and c.step < step and c.step not in spike_checkpoints]  # fmt: skip
                        if good:
                            last_good_step = good[-1]
                            last_good_steps = sorted({*last_good_steps, last_good_step})
                        log(f"step {step}: loss spike {loss_value:.4f} against a moving average of "
                            f"{loss_average:.4f}; " + (f"last good checkpoint {runs.checkpoint_name(last_good_step)} "
                            "kept — resume from it with a lower learning rate: python -m engine branch"
                            if good else "no checkpoint before it yet"))  # fmt: skip
                    metrics.write({"event": "spike", "step": step, "epoch": row["epoch"], "time": row["time"],
                                   "loss": loss_value, "moving_average": loss_average,
                                   "last_good_step": last_good_step, "spike_start": spike_start})  # fmt: skip
                    status["last_good_step"] = last_good_step
                else:
                    spike_start = None
                metrics.write(row)
                if env.is_main and (step % 10 == 0 or step == 1):
                    log(
                        f"step {step}/{total_steps}  epoch {row['epoch']:.2f}  text CE {text_ce:.4f}  mel CE {mel_ce:.4f}  lr {lr:.2e}"
                    )
            else:  # not applied: counted apart, so step and the schedule count applied updates only
                skipped_steps += 1
                why = (
                    "fp16 gradient overflow (the grad scaler lowers its scale)"
                    if overflow
                    else "non-finite loss or gradient"
                )
                event = {"event": "skipped_step", "step": step, "epoch": epoch_position(), "time": time.time(),
                         "reason": why, "skipped_steps": skipped_steps, "samples": batch}  # fmt: skip
                metrics.write({**event, **({"loss": loss_value} if math.isfinite(loss_value) else {})})
                if not overflow:
                    log(f"after step {step}: {why}, update skipped ({consecutive_skips} in a row)")
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    status["skipped_steps"] = skipped_steps
                    return (
                        EXIT_DIVERGED,
                        f"loss diverged after step {step}: {consecutive_skips} updates in a row skipped ({why})",
                        step,
                    )
            if finite:
                loss_average = loss_value if loss_average is None else 0.9 * loss_average + 0.1 * loss_value
            status.update(
                step=step,
                epoch=epoch_position(),
                skipped_steps=skipped_steps,
                samples_per_second=cfg.batch_size / elapsed,
            )
            runtime.write_status(run_dir, env, **status)
            if runtime.any_rank(stop.requested(), env):
                save("stop requested")
                stop.clear()
                return EXIT_OK, f"stopped at step {step}", step

        if batch_in_epoch >= steps_per_epoch:  # a whole epoch is done
            epoch += 1
            batch_in_epoch = 0
            scheduler.step()
            if cfg.validate_every and epoch % cfg.validate_every == 0:
                validate()
            if consecutive_skips:
                log(f"no checkpoint at the end of epoch {epoch}: the last {consecutive_skips} updates were skipped")
            elif epoch % cfg.save_every == 0 or epoch >= cfg.epochs:
                save(f"end of epoch {epoch}")

    if not any(c.step == step and c.complete for c in runs.list_checkpoints(run_dir)):
        save("final")
    if env.distributed:
        check_ranks_agree(gpt, env)
        log("weights identical on all ranks")
    skipped = f" ({skipped_steps} update(s) skipped)" if skipped_steps else ""
    return EXIT_OK, f"finished at step {step}{skipped}", step


def free_memory(device: torch.device) -> None:
    """Release cached allocator blocks after an out-of-memory error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_ranks_agree(gpt, env: runtime.DistEnv) -> None:
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
