"""Process-group plumbing for ``torchrun``: who am I, which device, and the few collectives we use.

A run started with ``torchrun --nproc_per_node N`` gets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment; a plain ``python`` run is world size 1 and never touches
``torch.distributed``. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env_from_environ(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun); defaults to a single process.

    Raises:
        ConfigError: the variables are malformed or inconsistent.
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); launch with torchrun") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def rank_device(device: str, env: DistEnv) -> torch.device:
    """The device this rank trains on: ``cuda:<local_rank>`` for CUDA jobs, else ``device`` itself."""
    dev = resolve_device(device)
    if dev.type == "cuda" and env.distributed:
        return torch.device("cuda", env.local_rank)
    return dev


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[DistEnv]:
    """Initialise the default process group for the duration of the block (no-op for one process).

    Raises:
        ConfigError: a group is needed but ``MASTER_ADDR``/``MASTER_PORT`` are missing.
    """
    if not env.distributed or dist.is_initialized():
        yield env
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with "
                          "`torchrun --nproc_per_node N asymfuse train aff ...`")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    try:
        yield env
    finally:
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if env.distributed:
        dist.barrier()


def mean_across_ranks(value: float, env: DistEnv, device: torch.device) -> float:
    """The mean of a scalar over all ranks (the value itself for one process)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
