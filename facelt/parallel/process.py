"""The processes of a run: who this process is (:class:`DistInfo`), the device it computes on
(:func:`pick_device`), and joining / leaving the process group (:func:`setup`, :func:`teardown`):
one process per device, gloo on CPU, NCCL on GPUs.

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; without it everything
degrades to a single process. The collectives themselves are in :mod:`facelt.parallel.collectives`
(each a no-op in one process).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facelt.parallel import collectives


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from facelt.errors import ConfigError
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def is_primary_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch (or runs alone): the one that prints
    a command's final line."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(requested_device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(after_error: bool = False) -> None:
    """Leave the process group. On a normal exit the ranks leave together (a barrier first), so
    that no rank destroys its gloo pairs while a peer still talks to them: that race aborts the
    process at exit ("terminate called without an active exception"). After an error no barrier:
    the peers may be inside another collective and would never meet this one."""
    if dist.is_available() and dist.is_initialized():
        if not after_error:
            collectives.barrier()
        dist.destroy_process_group()
