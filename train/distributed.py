"""Multi-process training through torch.distributed (torchrun, DDP).

``torchrun --nproc-per-node N -m train.cli fit ...`` (or ``--nnodes``/``--rdzv-endpoint`` for
several machines) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads
them and joins the process group: NCCL with one GPU per process where CUDA is present, gloo on the
CPU. Each process draws its own share of the epoch's bags; DDP averages the gradients. Only rank 0
writes checkpoints, weights and reports.
"""

from __future__ import annotations

import gc

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistributedContext()


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group described by torchrun's environment; a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def device_for(context: DistributedContext, device: str = "auto") -> torch.device:
    """The device of this process: its local GPU under DDP, else the named device."""
    if device == "cpu" or not torch.cuda.is_available():
        if device not in ("auto", "cpu"):
            raise ValueError(f"device {device!r} asks for CUDA, but this machine has none; use 'cpu' or 'auto'")
        return torch.device("cpu")
    if context.enabled:
        return torch.device("cuda", context.local_rank)
    return torch.device("cuda", 0) if device in ("auto", "cuda") else torch.device(device)


def barrier(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, context: DistributedContext) -> float:
    """The mean of ``value`` over all processes (the value itself in a plain run)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if context.backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def all_reduce_max(value: float, context: DistributedContext) -> float:
    """The largest ``value`` over all processes (so that all agree, e.g. on the schedule's progress)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if context.backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def shutdown(context: DistributedContext) -> None:
    """Leave the process group together: a barrier first, so that no process tears its
    connections down while another still waits on it (gloo aborts the waiting process then)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # free what gloo's pending work still holds while the interpreter is whole
