"""Processes launched by ``torchrun`` (or SLURM, ``accelerate launch``): this process's rank,
the world size and its local rank come from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); ``torch.distributed`` is used for barriers and sums only.
Without torchrun there is one process (rank 0 of 1) and every call here is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ChanattrError


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def processes_from_environment() -> Processes:
    """Rank, world size and local rank as torchrun sets them (one process when unset)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ChanattrError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None
    if not 0 <= rank < world:
        raise ChanattrError(f"RANK {rank} is outside 0..WORLD_SIZE-1 ({world}): launch with torchrun")
    return Processes(rank, world, local)


def process_device(requested: str, procs: Processes) -> str:
    """The device this process runs on: ``auto`` gives ``cuda:LOCAL_RANK`` where CUDA is
    available, else ``cpu``; ``cuda`` under several processes gives ``cuda:LOCAL_RANK``."""
    if requested == "auto":
        return f"cuda:{procs.local_rank % max(1, torch.cuda.device_count())}" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and procs.distributed:
        return f"cuda:{procs.local_rank % max(1, torch.cuda.device_count())}"
    return requested


def start(procs: Processes, device: str) -> None:
    """Join the process group (nccl on CUDA, gloo on the CPU) when there are several processes."""
    if not procs.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def stop(procs: Processes) -> None:
    if procs.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(procs: Processes) -> None:
    """Wait for every process (no-op for one)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()


def sum_over_processes(t: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The sum of ``t`` over the processes (a new tensor; ``t`` itself for one process). Not
    differentiable: see ``SumGradients`` for the gradients."""
    if not procs.distributed:
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out)
    return out


class SumGradients(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass the gradient is summed over the
    processes. Put in front of a process's share of a loss that is summed over processes, so
    each process's (identical) parameters receive the gradient of the whole sum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, procs: Processes) -> torch.Tensor:
        ctx.procs = procs
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return sum_over_processes(grad.contiguous(), ctx.procs), None
