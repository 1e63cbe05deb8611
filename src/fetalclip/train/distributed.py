"""The process group of a training run, so the same code runs as ``python`` or ``torchrun``.

``init_distributed`` asks ``fetalclip.torchrun.torchrun_env`` (the one reader of the variables torchrun sets:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; ``MASTER_ADDR``/``MASTER_PORT`` reach torch's own rendezvous) and,
without them, returns a single-process context and touches nothing. ``TorchrunEnv``/``torchrun_env`` are
re-exported here for code that already imports the training side. Multi-node needs no extra code: torchrun's
usual rendezvous fills the same variables. The backend follows the device (nccl on GPUs, gloo on CPU), which is
the only combination that works well.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import FetalCLIPError
from ..torchrun import TorchrunEnv, torchrun_env

__all__ = [
    "DistContext", "TorchrunEnv", "barrier", "broadcast_object", "gather_objects", "init_distributed", "mean_across",
    "shutdown_distributed", "torchrun_env",
]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Read torchrun's environment, pick the device and start the process group when there is more than one process.

    ``device``: ``auto`` (the local GPU when CUDA is available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    Under torchrun each process takes GPU ``LOCAL_RANK``.
    """
    launch = torchrun_env()
    world_size, local_rank = launch.world_size, launch.local_rank

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FetalCLIPError(f"device {device!r} requested but CUDA is not available")
        index = int(device.split(":", 1)[1]) if ":" in device else (local_rank if world_size > 1 else torch.cuda.current_device())
        torch_device = torch.device("cuda", index)
        torch.cuda.set_device(torch_device)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise FetalCLIPError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")

    if world_size == 1:
        return DistContext(0, 1, 0, torch_device, None)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if backend == "nccl" else None,
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, torch_device, backend)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_across(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all processes (the value itself when single-process)."""
    if not ctx.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def gather_objects(ctx: DistContext, obj):
    """Every process's ``obj``, in rank order (a one-element list when single-process)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
