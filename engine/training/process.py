"""The one owner of the training subprocess: start, stop, watch, reattach.

The trainer (``python -m engine train train.yaml``, or ``torchrun`` for more than one GPU)
runs in its own process and its own session, so it survives a restart of the web app and a
forced stop reaches every process it started. Its stdout and stderr are appended to the run's
``process.log``; ``train.pid`` records ``{"pid", "started", "argv", "gpus"}`` while it runs.
A watcher thread waits for it and, if it died without writing its final status (a crash, an
out-of-memory kill), records ``{"state": "failed", "exit_code": ...}`` in ``status.json``.

Stopping is cooperative: the ``STOP`` file, polled by the trainer each step, plus SIGTERM on
POSIX, which the trainer handles the same way (finish the step, save, exit 0). SIGTERM goes
to the trainer's own processes, not to its whole process group: a DataLoader worker killed
by it would crash the step, and torchrun answers SIGTERM by killing its workers 30 s later
and exiting with an error, so under torchrun the ranks are signalled directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from engine import paths, runs
from engine.config import ConfigError, TrainConfig
from engine.errors import TimbreError
from engine.files import write_text_atomic
from engine.runs import is_pid_alive  # re-exported: process.is_pid_alive

__all__ = [
    "TrainingAlreadyRunning",
    "is_pid_alive",
    "kill_training",
    "reattach",
    "running_pid",
    "start_training",
    "stop_training",
    "training_argv",
    "wait_for_exit",
]

STARTING = "starting"  # status.json message from launch until the trainer's first report
_POLL_S = 0.05
_REATTACH_POLL_S = 1.0


class TrainingAlreadyRunning(TimbreError, RuntimeError):
    """A trainer already runs for this run, or another live trainer uses the same GPUs."""


@dataclass
class _Watched:
    """A trainer this app process watches: its Popen (None when reattached) and watcher thread."""

    pid: int
    popen: subprocess.Popen | None
    thread: threading.Thread | None = None

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.thread is not None and self.thread.is_alive() and is_pid_alive(self.pid)


@dataclass
class _Registry:
    """The trainers started or reattached by this process, keyed by resolved run folder."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    trainers: dict[Path, _Watched] = field(default_factory=dict)


_REGISTRY = _Registry()


def training_argv(config: TrainConfig, config_path: str | os.PathLike | None = None) -> list[str]:
    """The trainer's command line for ``config`` (tests replace this function).

    World size 1: ``python -m engine train <train.yaml>``; more: ``python -m
    torch.distributed.run --standalone --nproc_per_node N -m engine train <train.yaml>``.
    ``config_path`` defaults to the run folder's train.yaml.
    """
    target = str(config_path if config_path is not None else config.run_dir() / "train.yaml")
    n = config.world_size()
    if n == 1:
        return [sys.executable, "-m", "engine", "train", target]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(n),
        "-m",
        "engine",
        "train",
        target,
    ]


def _gpu_ids(config: TrainConfig) -> list[int]:
    """Device ids a run occupies: the listed ids, or 0..n-1 for a count (0: CPU, none)."""
    return list(config.gpus) if isinstance(config.gpus, list) else list(range(config.gpus))


def _resolve(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir).resolve()


def running_pid(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live trainer of ``run_dir`` (the torchrun launcher for several GPUs), or None.

    Known from this process's own Popen when it started the trainer; otherwise from
    ``train.pid`` or a running status.json (see :func:`engine.runs.live_trainer_pid`).
    """
    folder = _resolve(run_dir)
    with _REGISTRY.lock:
        watched = _REGISTRY.trainers.get(folder)
        if watched is not None and watched.popen is not None:
            return watched.pid if watched.running() else None
    return runs.live_trainer_pid(folder)


def _gpu_sharers(gpus: list[int], folder: Path) -> list[Path]:
    """Run folders other than ``folder`` whose train.pid lists any of ``gpus``."""
    found = []
    for pid_file in sorted(paths.training_dir().glob(f"*/*/{runs.PID_FILE}")) if gpus else []:
        other = pid_file.parent.resolve()
        info = runs.read_pid_file(other) or {}
        if other != folder and set(gpus) & {g for g in info.get("gpus") or [] if isinstance(g, int)}:
            found.append(other)
    return found


def _gpu_conflict(gpus: list[int], folder: Path) -> str | None:
    """A description of a live trainer of another run that uses any of ``gpus``, or None."""
    for other in _gpu_sharers(gpus, folder):
        pid = running_pid(other)
        if pid is not None:
            shared = sorted(set(gpus) & set((runs.read_pid_file(other) or {}).get("gpus") or []))
            return (
                f"GPU {', '.join(map(str, shared))} already used by run {other.name!r} of voice "
                f"{other.parent.name!r} (pid {pid}); stop it or choose other GPUs"
            )
    return None


def _start_watcher(folder: Path, watched: _Watched, target, name: str) -> None:
    """Register ``watched`` for ``folder`` and start its daemon thread running ``target``."""
    watched.thread = threading.Thread(target=target, args=(folder, watched), name=name, daemon=True)
    _REGISTRY.trainers[folder] = watched
    watched.thread.start()


#: States a trainer writes as its last word; its process may live on a moment longer.
FINAL_STATES = ("finished", "stopped", "failed")
#: How long a start waits for a trainer that has reported its end to exit.
EXIT_GRACE_S = 30.0


def start_training(config_path: str | os.PathLike, *, extra_env: dict[str, str] | None = None) -> int:
    """Start the trainer for ``config_path`` (a run's train.yaml) in the background; return its pid.

    The process runs in a new session with cwd = the project root, the app's environment
    (``TIMBRE_HOME`` included) plus ``PYTHONUNBUFFERED=1``, ``CUDA_VISIBLE_DEVICES`` when
    ``gpus`` lists device ids, and ``extra_env``. For several GPUs the pid is torchrun's. A
    stale STOP file is removed first; status.json is set to running ("starting") so that a
    crash before the trainer's first report is still recorded as a failure.

    Raises:
        ConfigError / FileNotFoundError: the config cannot be read, or lacks voice or run.
        TrainingAlreadyRunning: this run already has a live trainer, or another live trainer
            uses one of the same GPU ids.
        OSError: the process could not be started (the message names the program).
    """
    config_path = Path(config_path).absolute()
    config = TrainConfig.load(config_path)
    if not config.voice or not config.run:
        raise ConfigError(f"{config_path}: voice and run must be set to train")
    folder = config.run_dir().resolve()
    gpus = _gpu_ids(config)
    for other in [folder, *_gpu_sharers(gpus, folder)]:
        if running_pid(other) is not None and (runs.read_status(other) or {}).get("state") in FINAL_STATES:
            wait_for_exit(other, EXIT_GRACE_S)  # it has reported its end and is only exiting
    with _REGISTRY.lock:
        pid = running_pid(folder)
        if pid is not None:
            raise TrainingAlreadyRunning(
                f"run {config.run!r} of voice {config.voice!r} is already training (pid {pid})"
            )
        conflict = _gpu_conflict(gpus, folder)
        if conflict:
            raise TrainingAlreadyRunning(f"cannot start run {config.run!r}: {conflict}")

        folder.mkdir(parents=True, exist_ok=True)
        (folder / runs.STOP_FILE).unlink(missing_ok=True)
        argv = [str(a) for a in training_argv(config, config_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if isinstance(config.gpus, list):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpus))
        env.update(extra_env or {})
        started = runs.now_iso()
        popen = _spawn(argv, env, folder / runs.PROCESS_LOG, started)

        record = {"pid": popen.pid, "started": started, "argv": argv, "gpus": gpus}
        write_text_atomic(folder / runs.PID_FILE, json.dumps(record, indent=1) + "\n")
        previous = runs.read_status(folder) or {}
        runs.write_status(
            folder,
            {
                "state": "running",
                "step": previous.get("step", 0),
                "epoch": previous.get("epoch", 0),
                "total_steps": previous.get("total_steps"),
                "pid": popen.pid,
                "message": STARTING,
                "exit_code": None,
            },
        )
        _start_watcher(folder, _Watched(popen.pid, popen), _watch_popen, f"trainer-watch-{popen.pid}")
    return popen.pid


def _spawn(argv: list[str], env: dict[str, str], log_path: Path, started: str) -> subprocess.Popen:
    """Popen ``argv`` in a new session, stdout and stderr appended to ``log_path``."""
    if os.name == "nt":  # pragma: no cover - Windows
        session = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    else:
        session = {"start_new_session": True}
    with log_path.open("ab") as log:
        log.write(f"\n=== {started} start: {subprocess.list2cmdline(argv)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                argv,
                cwd=paths.PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **session,
            )
        except OSError as exc:
            raise OSError(f"cannot start the trainer ({argv[0]}): {exc}") from exc


def _watch_popen(folder: Path, watched: _Watched) -> None:
    rc = watched.popen.wait()
    _finish(folder, watched, rc)


def _watch_pid(folder: Path, watched: _Watched) -> None:
    while is_pid_alive(watched.pid):
        time.sleep(_REATTACH_POLL_S)
    _finish(folder, watched, None)


def _finish(folder: Path, watched: _Watched, rc: int | None) -> None:
    with _REGISTRY.lock:
        _record_exit(folder, watched.pid, rc)
        if _REGISTRY.trainers.get(folder) is watched:
            del _REGISTRY.trainers[folder]


def _exit_message(rc: int | None) -> str:
    if rc is None:
        return runs.ENDED_WITHOUT_REPORT
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"training process exited with code {rc} (killed by {name})"
    return f"training process exited with code {rc}"


def _last_error_line(text: str) -> str | None:
    """The last line of a log tail that looks like a Python exception ("SomeError: ...")."""
    for line in reversed(text.splitlines()):
        head = line.strip().split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return line.strip()
    return None


def _record_exit(folder: Path, pid: int, rc: int | None) -> None:
    """After trainer ``pid`` ended with ``rc`` (None: unknown): record a failure if it did not
    report its final state, fill in a missing exit code, and remove train.pid if it is this pid's."""
    status = runs.read_status(folder)
    if status is None or status.get("state") == "running":
        message = _exit_message(rc)
        error = _last_error_line(runs.tail_lines(folder / runs.PROCESS_LOG, 40))
        previous = status or {}
        runs.write_status(
            folder,
            {
                **previous,
                "state": "failed",
                "pid": pid,
                "exit_code": rc,
                "message": f"{message}: {error}" if error else message,
            },
        )
    elif rc is not None and status.get("exit_code") is None:
        runs.write_status(folder, {**status, "exit_code": rc})
    info = runs.read_pid_file(folder)
    if info is not None and info["pid"] == pid:
        (folder / runs.PID_FILE).unlink(missing_ok=True)


def _trainer_processes(folder: Path, pid: int) -> list[int]:
    """The processes to send SIGTERM: the ranks under a torchrun launcher, else ``pid`` itself."""
    info = runs.read_pid_file(folder) or {}
    launcher = info.get("pid") == pid and "torch.distributed.run" in (info.get("argv") or [])
    if not launcher:
        return [pid]
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def _trainer_reported(folder: Path, pid: int) -> bool:
    """Whether the trainer has written status.json itself (so its SIGTERM handler is installed).

    Until then status.json is the "starting" record written by :func:`start_training`, and a
    SIGTERM would kill the interpreter while it is still importing; the STOP file, which the
    trainer checks from its first step, is then the only signal sent.
    """
    status = runs.read_status(folder) or {}
    return not (status.get("pid") == pid and status.get("message") == STARTING)


def stop_training(run_dir: str | os.PathLike, timeout: float = 0) -> bool:
    """Ask the trainer of ``run_dir`` to stop; returns whether a trainer was running.

    Writes the STOP file and, on POSIX once the trainer has written status.json itself, sends
    it SIGTERM (before that, a SIGTERM would kill it mid-import). Either way the trainer
    finishes the current step, saves a checkpoint, writes status "stopped" and exits 0.
    Waits up to ``timeout`` seconds for that (0: return at once). Nothing is written when no
    trainer was running.
    """
    folder = _resolve(run_dir)
    pid = running_pid(folder)
    if pid is None:
        return False
    write_text_atomic(folder / runs.STOP_FILE, runs.now_iso() + "\n")
    if os.name == "posix" and _trainer_reported(folder, pid):
        for target in _trainer_processes(folder, pid):
            try:
                os.kill(target, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    if timeout > 0:
        wait_for_exit(folder, timeout)
    return True


def kill_training(run_dir: str | os.PathLike) -> bool:
    """Force-stop the trainer of ``run_dir`` and every process it started (SIGKILL; no save).

    For a trainer that does not respond to :func:`stop_training`. The watcher then records
    the run as failed. Returns whether a trainer was running.
    """
    folder = _resolve(run_dir)
    pid = running_pid(folder)
    if pid is None:
        return False
    targets = [pid]
    try:
        targets += [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        pass
    for target in targets:
        try:
            if os.name == "posix" and os.getpgid(target) == target:
                os.killpg(target, signal.SIGKILL)  # a session leader: its whole group
            elif os.name == "posix":
                os.kill(target, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                psutil.Process(target).kill()
        except (OSError, psutil.Error):
            pass
    return True


def wait_for_exit(run_dir: str | os.PathLike, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the trainer of ``run_dir`` to end; return its exit code.

    Returns None if it is still running. For a trainer this process started, the exit code is
    the real one and status.json is final when this returns. For one started elsewhere it is
    status.json's exit_code, else 0 for a stopped/finished status and -1 otherwise.
    """
    folder = _resolve(run_dir)
    deadline = time.monotonic() + max(0.0, timeout)
    with _REGISTRY.lock:
        watched = _REGISTRY.trainers.get(folder)
    if watched is not None and watched.popen is not None:
        watched.thread.join(max(0.0, deadline - time.monotonic()))
        return None if watched.thread.is_alive() else watched.popen.returncode
    while runs.live_trainer_pid(folder) is not None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)
    status = runs.read_status(folder) or {}
    code = status.get("exit_code")
    if isinstance(code, int):
        return code
    return 0 if status.get("state") in ("stopped", "finished") else -1


def reattach() -> list[Path]:
    """Take charge of trainers left running by an earlier app process; return their run folders.

    For each ``training/*/*/train.pid``: a live trainer gets a watcher thread that records a
    failure if it dies without reporting; a dead one is cleaned up now (its status recorded,
    train.pid removed). Call once when the app starts; calling again is harmless.
    """
    live = []
    with _REGISTRY.lock:
        for pid_file in sorted(paths.training_dir().glob(f"*/*/{runs.PID_FILE}")):
            folder = pid_file.parent.resolve()
            if folder in _REGISTRY.trainers:
                live.append(folder)
                continue
            info = runs.read_pid_file(folder)
            if info is None:
                pid_file.unlink(missing_ok=True)  # unreadable: nothing to watch
                continue
            pid = info["pid"]
            if runs.live_trainer_pid(folder) != pid:
                _record_exit(folder, pid, None)
                continue
            _start_watcher(folder, _Watched(pid, None), _watch_pid, f"trainer-reattach-{pid}")
            live.append(folder)
    return live
