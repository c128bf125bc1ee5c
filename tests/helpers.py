"""Plain helpers shared by the training tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine import runs
from engine.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def make_run(run: str, tiny_model: Path, **overrides) -> Path:
    """Write training/anna/<run>/train.yaml for the tiny model; returns its path. Checkpoint
    scoring is off unless ``evaluate=True`` is given (tests/test_evaluation.py tests it)."""
    settings = dict(
        voice="anna", run=run, base_model=str(tiny_model), epochs=3, batch_size=2, gradient_accumulation=2,
        learning_rate=1e-3, seed=7, keep_checkpoints=5, evaluate=False,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings).save_new()


def train_subprocess(config: Path, home: Path, argv: list[str] | None = None) -> subprocess.Popen:
    """``python -m engine train config`` (or ``argv``) with TIMBRE_HOME=home, output captured."""
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1")
    argv = argv or [sys.executable, "-m", "engine", "train", str(config)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a training subprocess; assert it exited 0; return its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def train_rows(run_dir: Path) -> list[dict]:
    rows, _ = runs.read_metrics(run_dir)
    return [r for r in rows if r.get("split") == "train"]
