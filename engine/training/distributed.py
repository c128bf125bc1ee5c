"""This trainer's place in a torchrun job: the distributed environment (rank, world size,
device), joining and leaving the process group, and the two collectives the loop needs."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
