"""Process-group plumbing for ``torchrun``: who am I, which device, and the few collectives we use.

A run started with ``torchrun --nproc_per_node N`` gets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment; a plain ``python`` run is world size 1 and never touches
``torch.distributed``. The backend is NCCL on CUDA and gloo on CPU. Training and distributed
feature extraction both use this module, so it sits below ``features`` and ``train``.

Every collective waits at most the group's timeout (``process_group(..., timeout_s=...)``): a rank
that died or hangs makes the others raise :class:`RankTimeoutError` instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import AsymfuseError, ConfigError


class RankTimeoutError(AsymfuseError, RuntimeError):
    """A collective did not complete: another rank died, hangs, or is slower than the timeout."""


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


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` are set), even
    with one process."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def rank_device(device: str, env: DistEnv) -> torch.device:
    """The device this rank trains on: ``cuda:<local_rank>`` for CUDA jobs, else ``device`` itself."""
    dev = resolve_device(device)
    if dev.type == "cuda" and env.distributed:
        return torch.device("cuda", env.local_rank)
    return dev


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, *, timeout_s: float | None = None) -> Iterator[DistEnv]:
    """Initialise the default process group for the duration of the block (no-op for one process).

    Args:
        timeout_s: how long any collective (barrier, broadcast, all-reduce) waits for the other
            ranks before raising; None keeps torch's default (10 min NCCL, 30 min gloo).

    Raises:
        ConfigError: a group is needed but ``MASTER_ADDR``/``MASTER_PORT`` are missing, or
            ``timeout_s`` is not positive.
    """
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(f"the process-group timeout must be > 0 seconds, got {timeout_s!r}")
    if not env.distributed or dist.is_initialized():
        yield env
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with "
                          "`torchrun --nproc_per_node N asymfuse ...`")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = None if timeout_s is None else datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, timeout=timeout,
                            store=_attempt_store(env, timeout))
    try:
        yield env
    finally:
        dist.destroy_process_group()


def _attempt_store(env: DistEnv, timeout: datetime.timedelta | None) -> dist.Store | None:
    """The rendezvous store under a prefix of torchrun's restart count (None before any restart).

    After ``torchrun --max-restarts`` restarts the workers, the agent's store still holds the
    process-group keys of the dead attempt; gloo then dials the dead ranks' addresses and fails
    with "connectFullMesh ... Connection refused". A fresh key prefix per attempt avoids them.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0:
        return None
    from torch.distributed.rendezvous import rendezvous

    kwargs = {} if timeout is None else {"timeout": timeout}
    store, _, _ = next(rendezvous("env://", env.rank, env.world_size, **kwargs))
    return dist.PrefixStore(f"asymfuse/attempt_{attempt}", store)


def barrier(env: DistEnv, *, timeout_s: float | None = None, what: str = "a barrier") -> None:
    """Wait for every rank (no-op for one process).

    With ``timeout_s`` on gloo, a monitored barrier names the ranks that did not arrive.

    Raises:
        RankTimeoutError: some rank did not arrive in time (it died, hangs or is too slow).
    """
    if not env.distributed:
        return
    try:
        if timeout_s is not None and dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=float(timeout_s)), wait_all_ranks=True)
        else:
            dist.barrier()
    except RuntimeError as exc:  # gloo / NCCL timeouts and closed connections (DistBackendError)
        raise rank_timeout(env, what, exc, timeout_s) from exc


def rank_timeout(env: DistEnv, what: str, exc: BaseException, timeout_s: float | None) -> RankTimeoutError:
    """The error a rank raises when a collective fails: what it waited for and how to fix it."""
    limit = f"within {timeout_s:g} s" if timeout_s is not None else "before the process-group timeout"
    return RankTimeoutError(
        f"rank {env.rank}/{env.world_size}: the other ranks did not complete {what} {limit} ({exc}); "
        "a rank died or hangs: read its log above. If the ranks are only slow, raise the timeout "
        "(asymfuse extract --dist-timeout SECONDS); `torchrun --max-restarts N` restarts the job, "
        "which resumes from the work already saved")


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


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
