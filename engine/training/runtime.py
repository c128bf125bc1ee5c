"""What the training loop needs around it: the distributed environment, the run's log and
status file, stop requests, freezing, and the optimizer's parameter groups.

Kept apart from ``loop.py`` so the loop itself reads top to bottom.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from engine import runs

STOP_FILE = runs.STOP_FILE
METRICS_FILE = runs.METRICS
LOG_FILE = runs.TRAIN_LOG


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(use_gpu: bool) -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group.

    NCCL on GPUs, gloo on CPU. One process never initialises a process group (one GPU never
    goes through DDP)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_gpu and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistEnv(rank, world, local, device)


def teardown_distributed(env: DistEnv) -> None:
    """Leave the process group. The barrier first: without it gloo aborted at exit in 2 of 5
    runs on these CPUs ("terminate called without an active exception", DESIGN.md)."""
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_mean(values: list[float], env: DistEnv) -> list[float]:
    """Mean of each value across ranks (identity on one process)."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return (t / env.world_size).tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any rank (so all ranks stop together)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


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


# --------------------------------------------------------------------------------------------
# Freezing


def freeze_groups(gpt) -> dict[str, list[torch.nn.Module]]:
    """The named module groups of coqui's XTTS GPT (engine.models.xtts.freeze_groups)."""
    from engine.models.xtts import freeze_groups as xtts_groups

    return xtts_groups(gpt)


def apply_freeze(groups: dict[str, list[torch.nn.Module]], names: list[str]) -> list[torch.nn.Module]:
    """Turn off gradients for the named groups (``{name: [modules]}``, the family's
    ``Trainee.freeze_groups``) and return their modules.

    The caller keeps these modules in eval mode (see :func:`set_train_mode`) so dropout and any
    running buffers cannot change them, and leaves their parameters out of the optimizer (so
    weight decay cannot move them either). Raises KeyError for a name not in ``groups``."""
    frozen = [m for name in names for m in groups[name]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(gpt, frozen: list[torch.nn.Module]) -> None:
    """``gpt.train()`` with the frozen modules put back in eval mode."""
    gpt.train()
    for module in frozen:
        module.eval()


def optimizer_groups(gpt, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, not on biases, norms or embeddings
    (coqui gpt_trainer ``optimizer_wd_only_on_weights``, after nanoGPT). Frozen parameters are left out."""
    norm_types = (
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.BatchNorm1d,
        torch.nn.InstanceNorm1d,
    )
    decay, no_decay = [], []
    seen = set()
    for module in gpt.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if name.endswith("bias") or isinstance(module, (*norm_types, torch.nn.Embedding)):
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
