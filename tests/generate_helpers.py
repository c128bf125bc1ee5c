"""Helpers of the generation and export tests: a finished run of the tiny model whose checkpoints
hold recognisably different GPT weights, made in milliseconds instead of by training."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import runs
from engine.config import TrainConfig

TRAIN_ROWS = 3


def tiny_gpt_state(tiny_model: Path) -> dict[str, torch.Tensor]:
    """The GPT weights of the tiny model's model.pth, keys without the ``gpt.`` prefix."""
    state = torch.load(tiny_model / "model.pth", map_location="cpu", weights_only=True)["model"]
    return {k[4:]: v.clone() for k, v in state.items() if k.startswith("gpt.")}


def perturbed_gpt(tiny_model: Path, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """The tiny GPT with every float tensor moved by ``scale`` x N(0, 1) noise (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    state = tiny_gpt_state(tiny_model)
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = (value + scale * torch.randn(value.shape, generator=generator)).contiguous()
    return state


def fake_run(home: Path, tiny_model: Path, voice: str = "anna", run: str = "ft", steps=(2, 4)) -> Path:
    """training/<voice>/<run>/ as a finished trainer leaves it: train.yaml, complete checkpoints
    ``step-…`` with perturbed GPT weights (seed = step), metrics.jsonl and status.json."""
    with pytest.MonkeyPatch.context() as patch:  # TIMBRE_HOME as it was afterwards
        patch.setenv("TIMBRE_HOME", str(home))
        config = TrainConfig(voice=voice, run=run, base_model=str(tiny_model), epochs=2, batch_size=2, seed=7)
        run_dir = config.save_new().parent
    for step in steps:
        folder = run_dir / "checkpoints" / runs.checkpoint_name(step)
        folder.mkdir(parents=True)
        save_file(perturbed_gpt(tiny_model, seed=step), folder / "model.safetensors")
        (folder / "COMPLETE").write_text("")
    rows = []
    for step in range(1, max(steps) + 1):
        loss = 5.0 - 0.25 * step
        rows.append({"step": step, "epoch": step / 2, "split": "train", "loss_text_ce": loss + 1,
                     "loss_mel_ce": loss, "loss": loss + 0.01, "lr": 1e-3, "time": time.time()})  # fmt: skip
        if step % 2 == 0:
            rows.append({"step": step, "epoch": step / 2, "split": "validation", "loss_text_ce": loss + 1.5,
                         "loss_mel_ce": loss + 0.5, "loss": loss + 0.515, "lr": 1e-3, "time": time.time()})  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs.write_status(run_dir, {"state": "finished", "step": max(steps), "epoch": 2, "total_steps": max(steps)})
    return run_dir


def copy_home(source: Path, target: Path) -> Path:
    """A copy of a prepared TIMBRE_HOME (datasets, voices) for a test that writes into it."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("webui-*.log"))
    return target
