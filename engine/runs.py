"""Reading a run folder: checkpoints, metrics, status, logs (docs/run-folder.md is the contract).

Used by the web UI (status, plots, logs), by ``engine.generate.synthesis`` (which checkpoint to load)
and by the trainer's resume (the newest *complete* checkpoint). Nothing here writes to a run
folder except :func:`write_status`, the one atomic writer of ``status.json`` that both the
trainer and ``engine.training.process`` may use.

State of a run (:func:`run_status`), decided from the folder alone so that it survives a
browser refresh or a server restart:

- ``new``: only ``train.yaml``;
- ``running``: ``train.pid`` (or a ``running`` status.json) names a live process;
- ``stopped``: status.json says stopped; resumable at its newest complete checkpoint;
- ``finished``: status.json says finished *and* a complete checkpoint exists (never shown
  otherwise: that case is reported as ``failed``);
- ``failed``: status.json says failed, or it says running / a pid file remains but the
  process is gone.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from engine import paths
from engine.config import ConfigError, TrainConfig
from engine.errors import TimbreError
from engine.files import write_text_atomic

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
METRICS = "metrics.jsonl"
STATUS = "status.json"
PID_FILE = "train.pid"
STOP_FILE = "STOP"
TRAIN_LOG = "train.log"
PROCESS_LOG = "process.log"
#: A checkpoint's EMA of the weights (train.yaml ``ema_decay`` > 0), beside its model.safetensors.
EMA_FILE = "ema.safetensors"

EVAL_DIR = "eval"
EVAL_SUMMARY = "summary.json"
#: The checkpoint name that means the best scored one (``eval/summary.json``, engine.training.evaluation).
BEST = "best"
STATES = ("new", "running", "stopped", "finished", "failed")
ENDED_WITHOUT_REPORT = "the training process ended without reporting (killed?)"

_CHECKPOINT_NAME = re.compile(r"^step-(\d{7,})$")
# A pid counts as the recorded trainer only if that process was created no later than this
# many seconds after the time written beside it (guards against pid reuse after a reboot).
_PID_CLOCK_SLACK_S = 5.0
_TAIL_BYTES = 256 * 1024


class RunError(TimbreError, ValueError):
    """A run or checkpoint named in a way that cannot name one (e.g. a malformed checkpoint name)."""


# --------------------------------------------------------------------------- checkpoints


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint saved after optimizer step ``step``: ``step-%07d``."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative whole number, got {step!r}")
    return f"step-{step:07d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """One ``checkpoints/step-NNNNNNN/`` folder; ``complete`` means its COMPLETE marker exists."""

    step: int
    path: Path
    complete: bool

    @property
    def name(self) -> str:
        return self.path.name


def list_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """All checkpoint folders of a run, oldest step first.

    Temporary folders (names starting with ``.``, where the trainer writes before renaming)
    and names that are not ``step-NNNNNNN`` are ignored. A missing ``checkpoints/`` gives [].
    """
    base = Path(run_dir) / CHECKPOINTS
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append(CheckpointInfo(int(match.group(1)), entry, (entry / COMPLETE).is_file()))
    return sorted(found, key=lambda c: c.step)


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    """The complete checkpoint with the highest step, or None if the run has none."""
    complete = [c for c in list_checkpoints(run_dir) if c.complete]
    return complete[-1] if complete else None


def best_checkpoint_name(run_dir: str | os.PathLike) -> str | None:
    """The ``step-NNNNNNN`` that checkpoint evaluation chose as the run's best
    (``eval/summary.json``, :func:`engine.training.evaluation.choose_best`), or None when none is chosen."""
    summary = _read_json(Path(run_dir) / EVAL_DIR / EVAL_SUMMARY) or {}
    best = summary.get("best")
    name = best.get("name") if isinstance(best, dict) else None
    return name if isinstance(name, str) and _CHECKPOINT_NAME.match(name) else None


def find_checkpoint(run_dir: str | os.PathLike, name: str = "latest") -> CheckpointInfo:
    """The checkpoint ``name`` ("latest", "best" or "step-NNNNNNN") of a run, which must be complete.

    Raises:
        RunError: ``name`` is none of those (a ValueError).
        FileNotFoundError: the run has no such checkpoint, or it is incomplete (its save was
            interrupted), or no best is chosen yet; the message names the run folder.
    """
    run_dir = Path(run_dir)
    label = _run_label(run_dir)
    if name == "latest":
        found = latest_complete_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"{label} has no complete checkpoint yet ({run_dir / CHECKPOINTS})")
        return found
    if name == BEST:
        best = best_checkpoint_name(run_dir)
        if best is None:
            reason = (_read_json(run_dir / EVAL_DIR / EVAL_SUMMARY) or {}).get(
                "best_reason"
            ) or "no checkpoint is scored yet"
            raise FileNotFoundError(f"{label} has no best checkpoint: {reason}")
        name = best
    if not isinstance(name, str) or not _CHECKPOINT_NAME.match(name):
        raise RunError(f"checkpoint name must be 'latest', 'best' or 'step-NNNNNNN', got {name!r}")
    for info in list_checkpoints(run_dir):
        if info.name == name:
            if not info.complete:
                raise FileNotFoundError(
                    f"checkpoint {name} of {label} is incomplete (no {COMPLETE} marker: its save was interrupted)"
                )
            return info
    raise FileNotFoundError(f"{label} has no checkpoint {name} ({run_dir / CHECKPOINTS})")


# --------------------------------------------------------------------------- metrics and logs


def read_metrics(run_dir: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Rows of ``metrics.jsonl`` appended since byte ``offset``, and the offset to pass next time.

    Only complete (newline-terminated) lines are returned; a half-written last line is left
    for the next call. A corrupt line (not JSON, or not an object) is skipped. If the file is
    missing the result is ``([], 0)``; if it is shorter than ``offset`` (the run was deleted
    and started again) reading restarts from the beginning.
    """
    path = Path(run_dir) / METRICS
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0
    offset = max(0, int(offset))
    if size < offset:
        offset = 0
    if size == offset:
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(size - offset)
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    return _parse_rows(data[: end + 1]), offset + end + 1


def _parse_rows(data: bytes) -> list[dict]:
    rows = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _tail_bytes(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of ``path`` (b"" if it is missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read()
    except FileNotFoundError:
        return b""


def _recent_rows(run_dir: Path) -> list[dict]:
    """Complete metrics rows in the last 256 KiB of metrics.jsonl (enough for ETA and status)."""
    data = _tail_bytes(run_dir / METRICS, _TAIL_BYTES)
    if len(data) == _TAIL_BYTES:  # the first line is probably cut: drop it
        data = data[data.find(b"\n") + 1 :]
    end = data.rfind(b"\n")
    return _parse_rows(data[: end + 1]) if end >= 0 else []


def tail_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the text file ``path`` ("" if it is missing).

    Reads only the file's end; undecodable bytes are replaced; a line redrawn with carriage
    returns (a progress bar) keeps its last state.
    """
    data = _tail_bytes(path, max(4096, lines * 512))
    text = data.decode("utf-8", errors="replace")
    cleaned = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    if cleaned and not cleaned[-1]:
        cleaned.pop()
    return "\n".join(cleaned[-lines:]) if lines > 0 else ""


def log_tail(run_dir: str | os.PathLike, lines: int = 40) -> str:
    """The last ``lines`` lines of ``train.log``, or of ``process.log`` when train.log is empty or missing.

    Returns "" when neither exists. Undecodable bytes are replaced, never raised.
    """
    run_dir = Path(run_dir)
    for name in (TRAIN_LOG, PROCESS_LOG):
        text = tail_lines(run_dir / name, lines)
        if text.strip():
            return text
    return ""


# --------------------------------------------------------------------------- status and pid files


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """``status.json`` as a dict, or None when it is missing or unreadable (it is written atomically)."""
    return _read_json(Path(run_dir) / STATUS)


def write_status(run_dir: str | os.PathLike, status: dict) -> dict:
    """Write ``status.json`` atomically, stamping ``updated`` (ISO 8601, UTC); returns what was written.

    Raises ValueError if ``status["state"]`` is not running, stopped, finished or failed.
    """
    if status.get("state") not in STATES[1:]:
        raise ValueError(f"status state must be one of {', '.join(STATES[1:])}, got {status.get('state')!r}")
    data = {**status, "updated": now_iso()}
    write_text_atomic(Path(run_dir) / STATUS, json.dumps(data, indent=1) + "\n")
    return data


def read_pid_file(run_dir: str | os.PathLike) -> dict | None:
    """``train.pid`` ({"pid", "started", "argv", "gpus"}) as a dict, or None when missing or unreadable."""
    data = _read_json(Path(run_dir) / PID_FILE)
    return data if data is not None and isinstance(data.get("pid"), int) else None


def now_iso() -> str:
    """The current time as ISO 8601 in UTC with milliseconds (the format of ``started``/``updated``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _timestamp(value) -> float | None:
    """Unix seconds from a float/int or an ISO 8601 string; None if it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


def is_pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited.

    A zombie (a child that exited but was not yet reaped) counts as dead. Uses psutil, which
    never signals the process (on Windows ``os.kill(pid, 0)`` would terminate it).
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def process_started_by(pid: int, when) -> bool:
    """Whether process ``pid`` existed at time ``when`` (so it is not a later process reusing the pid)."""
    limit = _timestamp(when)
    if limit is None:
        return True
    try:
        return psutil.Process(pid).create_time() <= limit + _PID_CLOCK_SLACK_S
    except psutil.Error:
        return False


def live_trainer_pid(run_dir: str | os.PathLike) -> int | None:
    """The pid of this run's live trainer, or None.

    Read from ``train.pid`` (written by ``engine.training.process``); failing that, from a
    status.json that says ``running`` (a trainer started by hand with ``python -m engine
    train``). A pid whose process was created after the recorded time is a reused pid and
    does not count.
    """
    run_dir = Path(run_dir)
    info = read_pid_file(run_dir)
    if info is not None and is_pid_alive(info["pid"]) and process_started_by(info["pid"], info.get("started")):
        return info["pid"]
    status = read_status(run_dir) or {}
    pid = status.get("pid")
    if status.get("state") == "running" and is_pid_alive(pid) and process_started_by(pid, status.get("updated")):
        return pid
    return None


# --------------------------------------------------------------------------- run status


# (regular expression, hint), matched case-insensitively; the first match wins.
_HINTS = (
    (
        r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED",
        "The GPU ran out of memory. Lower batch_size or raise gradient_accumulation, use "
        "bf16 or fp16 precision, lower max_audio_seconds, or close other programs using the "
        "GPU (and unload the model in the Generate tab); then resume.",
    ),
    (
        r"BaseModelError|base model missing|No such file[^\n]*(model\.pth|dvae\.pth|"
        r"mel_stats\.pth|vocab\.json)|(model\.pth|dvae\.pth|mel_stats\.pth|vocab\.json|"
        r"config\.json)[^\n]*(missing|not found)",
        "A base-model file is missing or unreadable. Download XTTS-v2 in the Settings tab, "
        "or set base_model to a folder holding model.pth, config.json, vocab.json, dvae.pth "
        "and mel_stats.pth.",
    ),
    (
        r"DatasetError|dataset check",
        "The dataset check failed. Build (or rebuild) the dataset in the Dataset tab; clips "
        "longer than max_audio_seconds, shorter than min_audio_seconds or with more than "
        "max_text_tokens text tokens are rejected.",
    ),
    (
        r"diverge|loss is (nan|inf)|non-finite loss|nan loss|loss.{0,20}\bnan\b",
        "The loss diverged (became NaN or infinite). Lower learning_rate, prefer bf16 over "
        "fp16, keep max_grad_norm at 1.0, and resume from an earlier checkpoint.",
    ),
    (
        r"No space left on device|Errno 28",
        "The disk is full. Free space (or lower keep_checkpoints) and resume.",
    ),
    (
        r"SIGKILL|signal 9\b|code -9\b",
        "The process was killed from outside, often by the system when it ran out of "
        "memory (RAM). Lower batch_size or num_workers, or close other programs; then resume.",
    ),
)


def hint_for_failure(text: str) -> str | None:
    """A plain-language hint for a failure whose message or log tail is ``text``, or None.

    Known causes, first match wins: CUDA out of memory, a missing base-model file
    (BaseModelError), a failed dataset check (DatasetError), a diverged loss, a full disk, a
    process killed from outside (SIGKILL, usually the out-of-memory killer).
    """
    if not text:
        return None
    for pattern, hint in _HINTS:
        if re.search(pattern, text, re.IGNORECASE):
            return hint
    return None


@dataclass
class RunStatus:
    """What the UI shows for one run.

    ``state``: one of new, running, stopped, finished, failed (see the module docstring).
    ``step``/``epoch``: the newest known (status.json or the last metrics row).
    ``total_steps``: planned optimizer steps, None until the trainer has reported it.
    ``latest_checkpoint``: the step of the newest complete checkpoint, None if none;
    ``checkpoints``: how many complete checkpoints exist. ``samples_per_second``: mean over
    the last train rows; ``eta_seconds``: seconds left at the recent step rate (running only).
    ``hint``: a plain-language hint for a failure, when its cause is recognised.
    ``epoch_progress``: the epoch position as a float (2.5: half-way through the third epoch);
    ``epochs``: the planned epochs (train.yaml), None if it cannot be read.
    ``last_good_step``: after a loss spike, the newest complete checkpoint before it (still on
    disk), else None. ``failure_lines``: for a failed run, the last lines of the traceback (or
    of the log when there is none), else "". ``skipped_steps``: updates the trainer skipped
    (non-finite loss or gradient, fp16 overflow); ``step`` counts applied updates only.
    """

    voice: str
    run: str
    state: str
    step: int
    epoch: int
    total_steps: int | None
    message: str
    exit_code: int | None
    pid: int | None
    latest_checkpoint: int | None
    checkpoints: int
    samples_per_second: float | None
    eta_seconds: float | None
    hint: str | None = None
    epoch_progress: float = 0.0
    epochs: int | None = None
    last_good_step: int | None = None
    failure_lines: str = ""
    skipped_steps: int = 0


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value) -> int | None:
    number = _num(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _seconds_per_step(rows: list[dict], batch_size: int | None) -> float | None:
    """Recent seconds per optimizer step, from train rows.

    With wall-clock ``time`` values (Unix seconds) it is the elapsed time over the steps done,
    leaving out gaps over 10x the median (a stop and resume); otherwise batch_size divided by
    the rows' mean ``samples_per_second``.
    """
    timed = [(_num(r.get("step")), _num(r.get("time"))) for r in rows]
    timed = [(step, when) for step, when in timed if step is not None and when is not None]
    pairs = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(timed) if b[0] > a[0] and b[1] > a[1]]
    if pairs and timed[-1][1] > 1e9:  # looks like time.time()
        per_step = sorted(dt / ds for ds, dt in pairs)
        median = per_step[len(per_step) // 2]
        kept = [(ds, dt) for ds, dt in pairs if dt / ds <= 10 * median]
        return sum(dt for _, dt in kept) / sum(ds for ds, _ in kept)
    rate = _mean_samples_per_second(rows)
    if rate and batch_size:
        return batch_size / rate
    return None


def _mean_samples_per_second(rows: list[dict]) -> float | None:
    values = [_num(r.get("samples_per_second")) for r in rows[-10:]]
    values = [v for v in values if v is not None and v > 0]
    return sum(values) / len(values) if values else None


def _load_config(run_dir: Path) -> TrainConfig | None:
    try:
        return TrainConfig.load(run_dir / "train.yaml")
    except (OSError, ConfigError):
        return None


def run_status(voice: str, run: str) -> RunStatus:
    """The state of run ``training/<voice>/<run>/``, read from its folder.

    Raises:
        InvalidNameError: ``voice`` or ``run`` is not a safe name.
        FileNotFoundError: the run folder has no train.yaml (the message names the run).
    """
    folder = paths.run_dir(voice, run)
    if not (folder / "train.yaml").is_file():
        raise FileNotFoundError(f"run {run!r} of voice {voice!r} does not exist (no {folder / 'train.yaml'})")
    status = read_status(folder)
    complete = [c for c in list_checkpoints(folder) if c.complete]
    latest = complete[-1].step if complete else None
    pid = live_trainer_pid(folder)
    rows = _recent_rows(folder)
    train_rows = [r for r in rows if r.get("split") == "train" and "event" not in r]
    last_row = train_rows[-1] if train_rows else {}

    state, message = _decide_state(folder, status, pid, latest, has_metrics=bool(rows))
    info = status or {}
    step = _int(info.get("step"))
    epoch = _num(info.get("epoch"))
    if step is None or (state == "running" and (_int(last_row.get("step")) or 0) > step):
        step = _int(last_row.get("step"))
        epoch = _num(last_row.get("epoch")) if _num(last_row.get("epoch")) is not None else epoch
    if step is None:
        step = latest or 0
    total = _int(info.get("total_steps")) or None

    samples_per_second = _mean_samples_per_second(train_rows)
    config = _load_config(folder)
    eta = None
    if state == "running" and total and step < total:
        per_step = _seconds_per_step(train_rows[-50:], config.batch_size if config else None)
        eta = (total - step) * per_step if per_step else None

    hint, failure = None, ""
    if state == "failed":
        logs = "\n".join(tail_lines(folder / name, 60) for name in (TRAIN_LOG, PROCESS_LOG))
        hint = hint_for_failure(message) or hint_for_failure(logs)
        failure = failure_excerpt(folder)
    last_good = _int(info.get("last_good_step"))
    spikes = [r for r in rows if r.get("event") == "spike"]
    if spikes and _int(spikes[-1].get("last_good_step")) is not None:
        last_good = _int(spikes[-1].get("last_good_step"))
    if last_good is not None and last_good not in {c.step for c in complete}:
        last_good = None  # pruned or never completed: nothing to branch from
    return RunStatus(
        voice=folder.parent.name,
        run=folder.name,
        state=state,
        step=step,
        epoch=int(epoch or 0),
        total_steps=total,
        message=message,
        exit_code=_int(info.get("exit_code")),
        pid=pid,
        latest_checkpoint=latest,
        checkpoints=len(complete),
        samples_per_second=samples_per_second,
        eta_seconds=eta,
        hint=hint,
        epoch_progress=round(epoch or 0.0, 3),
        epochs=config.epochs if config else None,
        last_good_step=last_good,
        failure_lines=failure,
        skipped_steps=_int(info.get("skipped_steps")) or 0,
    )


def _decide_state(
    folder: Path,
    status: dict | None,
    pid: int | None,
    latest: int | None,
    has_metrics: bool,
) -> tuple[str, str]:
    """(state, message) from status.json, the live pid and the newest complete checkpoint."""
    reported = (status or {}).get("state")
    message = str((status or {}).get("message") or "")
    # A final state written by the trainer wins over its still-live pid: it is exiting.
    if pid is not None and reported not in ("finished", "stopped", "failed"):
        if (folder / STOP_FILE).exists():
            return "running", "stop requested: finishing the current step and saving"
        return "running", message or "training"
    if reported == "finished":
        if latest is None:
            return "failed", "marked finished but no complete checkpoint" + (f" ({message})" if message else "")
        return "finished", message or f"finished at step {latest}"
    if reported == "stopped":
        if latest is None:
            return "stopped", (
                message + "; " if message else ""
            ) + "no complete checkpoint: resuming starts from the beginning"
        return (
            "stopped",
            message or f"stopped; resumable from {checkpoint_name(latest)}",
        )
    if reported == "failed":
        return "failed", message or "training failed"
    if reported == "running" or (folder / PID_FILE).exists():
        return "failed", ENDED_WITHOUT_REPORT
    if status is not None:
        return "failed", f"status.json has an unknown state {reported!r}"
    if latest is not None:
        return "stopped", f"no status.json; resumable from {checkpoint_name(latest)}"
    if has_metrics:
        return "failed", ENDED_WITHOUT_REPORT
    return "new", "not started"


def failure_excerpt(run_dir: str | os.PathLike, lines: int = 12) -> str:
    """The last lines of the newest Python traceback in ``train.log`` or ``process.log``.

    The trainer logs its traceback to train.log; a crash before its log exists (an import
    error, a killed interpreter) leaves it in process.log. Returns at most ``lines`` lines
    from the traceback to the end of that log (the exception line and the trainer's last
    words); without a traceback, the last ``lines`` lines of process.log (else train.log);
    "" when both are missing.
    """
    run_dir = Path(run_dir)
    tails = {name: tail_lines(run_dir / name, 80) for name in (TRAIN_LOG, PROCESS_LOG)}
    for text in tails.values():
        found = text.rfind("Traceback (most recent call last)")
        if found >= 0:
            return "\n".join(text[found:].splitlines()[-lines:])
    for name in (PROCESS_LOG, TRAIN_LOG):
        if tails[name].strip():
            return "\n".join(tails[name].splitlines()[-lines:])
    return ""


def list_run_statuses(voice: str) -> list[RunStatus]:
    """:func:`run_status` of every run of ``voice`` (runs with a train.yaml), sorted by run name.

    Raises InvalidNameError for an unsafe voice name; a voice without runs gives [].
    """
    return [run_status(voice, run) for run in paths.list_runs(voice)]


def _run_label(run_dir: Path) -> str:
    return f"run {run_dir.name!r} of voice {run_dir.parent.name!r}"
