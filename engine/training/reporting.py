"""What a trainer tells the world: the human log (train.log), metrics.jsonl, status.json, and
the stop requests it listens for (signals, or a STOP file in the run folder)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from engine import runs
from engine.training.distributed import DistEnv

STOP_FILE = runs.STOP_FILE
METRICS_FILE = runs.METRICS
LOG_FILE = runs.TRAIN_LOG


class RunLog:
    """The human log ``train.log`` (rank 0 writes; every rank prints with its rank on stderr)."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.env = env
        self.path = run_dir / LOG_FILE
        run_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        prefix = f"[rank {self.env.rank}] " if self.env.distributed else ""
        line = f"{stamp} {prefix}{message}"
        print(line, flush=True)
        if self.env.is_main:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only), flushed each line so
    the UI sees it at once."""

    def __init__(self, run_dir: Path, env: DistEnv):
        self.enabled = env.is_main
        self.path = run_dir / METRICS_FILE

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()


def write_status(run_dir: Path, env: DistEnv, **fields) -> None:
    """Rewrite ``status.json`` atomically (rank 0 only); see docs/run-folder.md."""
    if env.is_main:
        fields.setdefault("pid", os.getpid())
        runs.write_status(run_dir, fields)


class StopRequest:
    """Set by SIGTERM, SIGINT (Ctrl-C) or a ``STOP`` file in the run folder (Windows has no
    SIGTERM for another process, so the UI's Stop button always writes the file too).

    Created first thing in the trainer, so a stop asked for while it loads is not lost; a STOP
    file left from before is removed by the launcher (engine.training.process), not here, for
    the same reason."""

    def __init__(self, run_dir: Path):
        self.file = run_dir / STOP_FILE
        self.signalled = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        return self.signalled or self.file.exists()

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)
