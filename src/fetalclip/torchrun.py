"""The one reader of the environment torchrun gives each process (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...).

It sits in the lowest layer and imports nothing but the standard library, so training (``train.distributed``,
which re-exports it), the commands and inference under ``torchrun -m fetalclip embed`` all ask one function
"which process am I?" without importing torch or each other. Without torchrun the variables are absent and
the answer is one process of rank 0; a value that is present but not a usable integer (or a rank outside the
world) is an error naming the variable, not a silent single-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from .errors import FetalCLIPError


class LaunchEnvironmentError(FetalCLIPError):
    """A torchrun variable that is set but unusable (not an integer, or a rank outside the world)."""


@dataclass(frozen=True)
class TorchrunEnv:
    """Where this process stands in a torchrun launch (a single process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None  # torchrun's rendezvous: read by torch.distributed itself (env://)
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _integer(environ: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LaunchEnvironmentError(f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum:
        raise LaunchEnvironmentError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv:
    """This process's rank, local rank and world size from ``environ`` (default: ``os.environ``).

    A world of one is a single process whatever stray ``RANK``/``LOCAL_RANK`` say: there is no process group
    to be a member of, so rank 0 is the only honest answer (and the one the training loop has always used).
    """
    environ = os.environ if environ is None else environ
    world_size = _integer(environ, "WORLD_SIZE", 1, 1)
    if world_size == 1:
        return TorchrunEnv()
    rank = _integer(environ, "RANK", 0, 0)
    local_rank = _integer(environ, "LOCAL_RANK", 0, 0)
    local_world_size = _integer(environ, "LOCAL_WORLD_SIZE", world_size, 1)
    if rank >= world_size:
        raise LaunchEnvironmentError(f"environment variable RANK={rank} is outside WORLD_SIZE={world_size}")
    if local_rank >= local_world_size:
        raise LaunchEnvironmentError(
            f"environment variable LOCAL_RANK={local_rank} is outside LOCAL_WORLD_SIZE={local_world_size}"
        )
    master_addr = environ.get("MASTER_ADDR", "").strip() or None
    master_port = _integer(environ, "MASTER_PORT", None, 0)
    return TorchrunEnv(rank, local_rank, world_size, local_world_size, master_addr, master_port)
