"""Training tab, part 2: the runs of a voice, their status, and the actions on a run.

Everything shown is read from the run folders (:func:`engine.runs.run_status`), so a page
refresh or an app restart shows the same thing. The actions are three, kept apart as in
nanoGPT's ``init_from``: **start** a new run from the form, **resume** a run (same run, its
newest complete checkpoint, its own train.yaml), and **start a new run from a checkpoint's
weights** (:func:`engine.training.branch.branch_run`, optionally at a lower learning rate; after a
loss spike, from the last good checkpoint at half the learning rate).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pandas as pd

from engine import paths, runs
from engine.training import process
from engine.training.branch import branch_run
from webui.tabs import browser_text
from webui.tabs.training_form import form_to_config

RUN_COLUMNS = ["run", "state", "step", "epoch", "samples/s", "ETA", "checkpoint", "note"]
LOG_LINES = 12


def suggest_run_name(voice: str | None, prefix: str = "run") -> str:
    """``<prefix>-N`` with the first N not taken by a run of ``voice``."""
    try:
        taken = set(paths.list_runs(voice)) if voice else set()
    except paths.InvalidNameError:
        taken = set()
    return next(f"{prefix}-{n}" for n in range(1, 10_000) if f"{prefix}-{n}" not in taken)


def existing_run(voice: str | None, run: str | None) -> Path | None:
    """The run folder of a run that has a train.yaml; None for a new, empty or invalid name."""
    try:
        folder = paths.run_dir(voice or "", run or "")
    except paths.InvalidNameError:
        return None
    return folder if (folder / "train.yaml").is_file() else None


def start_run(form: dict, voice: str, run: str, base_model: str = "") -> tuple[Path, bool]:
    """Start (new run) or resume (existing run) training; returns (run folder, resumed).

    A new run's train.yaml is written from the form (an empty base-model field takes
    ``base_model``); an existing run keeps its own train.yaml and the trainer continues from
    its newest complete checkpoint. Raises ConfigError, InvalidNameError, FileNotFoundError
    (no dataset), process.TrainingAlreadyRunning (this run, or another on the same GPUs, is
    training; a new run's train.yaml is then removed again) or OSError (the process could
    not start).
    """
    voice, run = paths.check_name(voice or "", "voice name"), paths.check_name(run or "", "run name")
    yaml_path = paths.run_dir(voice, run) / "train.yaml"
    resumed = yaml_path.is_file()
    if not resumed:
        config = form_to_config(form, voice, run)
        if not config.base_model and base_model:
            config = dataclasses.replace(config, base_model=base_model)
        if not (config.dataset_dir() / "train.csv").is_file():
            raise FileNotFoundError(f"voice {voice!r} has no dataset yet: transcribe it in the Dataset tab")
        yaml_path = config.save_new()
    try:
        process.start_training(yaml_path)
    except process.TrainingAlreadyRunning:
        if not resumed:  # refused (the GPUs are busy): leave no half-made run behind
            yaml_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                yaml_path.parent.rmdir()
        raise
    return yaml_path.parent, resumed


def branch_and_start(voice: str, run: str, new_run: str, checkpoint: str, learning_rate_factor: float) -> Path:
    """Start a new run ``new_run`` from ``checkpoint``'s weights of ``run`` (its settings, the
    learning rate times ``learning_rate_factor``); returns the new run folder. Raises what
    :func:`engine.training.branch.branch_run` and :func:`process.start_training` raise."""
    new_run = paths.check_name(new_run or "", "new run name")
    yaml_path = branch_run(voice, run, new_run, checkpoint or "latest", float(learning_rate_factor))
    process.start_training(yaml_path)
    return yaml_path.parent


# --- reading -----------------------------------------------------------------------------------


def clock(seconds) -> str:
    """Seconds as h:mm:ss."""
    seconds = int(seconds or 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _epoch(status: runs.RunStatus) -> str:
    epoch = f"{status.epoch_progress:.2f}".rstrip("0").rstrip(".") if status.epoch_progress else str(status.epoch)
    return f"{epoch} / {status.epochs}" if status.epochs else epoch


def describe_status(status: runs.RunStatus, best: tuple[int, float] | None = None) -> str:
    """Markdown for one run: a state line (step, epoch, speed, ETA, checkpoints), the message,
    for a failure the exit code, the last traceback lines and a hint; ``best`` is the
    (step, loss) of the lowest validation loss."""
    parts = [f"**{status.state}**"]
    if status.state == "failed" and status.exit_code not in (None, 0):
        parts.append(f"exit code {status.exit_code}")
    if status.total_steps:
        parts.append(f"step {status.step} / {status.total_steps}")
    elif status.step:
        parts.append(f"step {status.step}")
    if status.epoch_progress or status.epoch:
        parts.append(f"epoch {_epoch(status)}")
    if status.state == "running" and status.samples_per_second:
        parts.append(f"{status.samples_per_second:.1f} samples/s")
    if status.state == "running" and status.eta_seconds:
        parts.append(f"ETA {clock(status.eta_seconds)}")
    if status.latest_checkpoint is not None:
        parts.append(f"latest checkpoint {runs.checkpoint_name(status.latest_checkpoint)}")
    if status.skipped_steps:
        parts.append(f"{status.skipped_steps} update(s) skipped (not counted as steps)")
    lines = [" · ".join(parts)]
    if status.message:
        lines.append(status.message)
    if status.state == "stopped":
        lines.append("Resume continues this run from its newest checkpoint.")
    if best is not None:
        lines.append(f"Best validation loss {best[1]:.4f} at {runs.checkpoint_name(best[0])} (kept).")
    if status.last_good_step is not None:
        lines.append(
            f"A loss spike was logged; the last good checkpoint is {runs.checkpoint_name(status.last_good_step)}."
        )
    text = "  \n".join(lines)
    if status.failure_lines:
        text += f"\n\n```text\n{status.failure_lines}\n```"
    if status.hint:
        text += f"\n\n*Hint:* {status.hint}"
    return browser_text(text)  # the trainer's messages and traceback name files by absolute path


def monitor(voice: str | None, run: str | None) -> tuple[str, str, runs.RunStatus | None]:
    """(status markdown, log tail, RunStatus or None) of the run shown."""
    if not voice or not run:
        return "Choose a voice and a run.", "", None
    run_folder = existing_run(voice, run)
    if run_folder is None:
        try:
            paths.check_name(run, "run name")
        except paths.InvalidNameError as exc:
            return f"**invalid run name**: {exc}", "", None
        return f"**new run** `{run}`: set it up below and press Start to write its train.yaml and train.", "", None
    status = runs.run_status(voice, run)
    return describe_status(status), browser_text(runs.log_tail(run_folder, LOG_LINES)), status


def _note(status: runs.RunStatus) -> str:
    if status.state == "failed":
        code = f"exit code {status.exit_code}: " if status.exit_code not in (None, 0) else ""
        return browser_text(code + status.message)[:120]
    if status.state == "stopped" and status.latest_checkpoint is not None:
        return f"stopped at step {status.step}; resumable"
    return browser_text(status.message)[:120]


def runs_table(voice: str | None) -> pd.DataFrame:
    """One row per run of ``voice`` (:data:`RUN_COLUMNS`), newest run name last."""
    rows = []
    try:
        statuses = runs.list_run_statuses(voice) if voice else []
    except paths.InvalidNameError:
        statuses = []
    for s in statuses:
        speed = f"{s.samples_per_second:.1f}" if s.state == "running" and s.samples_per_second else ""
        eta = clock(s.eta_seconds) if s.state == "running" and s.eta_seconds else ""
        checkpoint = runs.checkpoint_name(s.latest_checkpoint) if s.latest_checkpoint is not None else ""
        steps = f"{s.step} / {s.total_steps}" if s.total_steps else str(s.step)
        rows.append([s.run, s.state, steps, _epoch(s), speed, eta, checkpoint, _note(s)])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def checkpoint_choices(
    voice: str | None, run: str | None, best_step: int | None = None, last_good_step: int | None = None
) -> list[tuple[str, str]]:
    """(label, name) of the run's complete checkpoints, newest first, the newest, the best by
    validation, the best by evaluation scores and the last good one before a spike labelled as such."""
    folder = existing_run(voice, run)
    if folder is None:
        return []
    complete = [c for c in runs.list_checkpoints(folder) if c.complete]
    best_scored = runs.best_checkpoint_name(folder)
    choices = []
    for i, info in enumerate(reversed(complete)):
        notes = ["newest"] if i == 0 else []
        notes += ["best validation"] if info.step == best_step else []
        notes += ["best by score"] if info.name == best_scored else []
        notes += ["last good before a spike"] if info.step == last_good_step else []
        choices.append((info.name + (f" ({', '.join(notes)})" if notes else ""), info.name))
    return choices


def find_running_run() -> tuple[str, str] | None:
    """The first (voice, run) that is training, to reattach to after a page refresh or an app
    restart (a trainer that has written its final state and is only exiting does not count)."""
    for voice in paths.list_voices():
        for run in paths.list_runs(voice):
            folder = paths.run_dir(voice, run)
            if process.running_pid(folder) is not None and runs.run_status(voice, run).state == "running":
                return voice, run
    return None


def folder_signature(voice: str | None, run: str | None) -> tuple:
    """What changes when a run's shown status changes: sizes and times of its status, metrics,
    logs and pid files and its checkpoints folder (cheap stat calls, no reading)."""
    folder = existing_run(voice, run)
    if folder is None:
        return (voice, run, None)
    stats = []
    for name in (runs.STATUS, runs.METRICS, runs.TRAIN_LOG, runs.PROCESS_LOG, runs.PID_FILE, runs.STOP_FILE,
                 runs.CHECKPOINTS):  # fmt: skip
        try:
            info = (folder / name).stat()
            stats.append((info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append(None)
    return (voice, run, *stats)
