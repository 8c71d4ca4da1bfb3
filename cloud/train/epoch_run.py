"""The run skeleton shared by the epoch-based trainers (``train aff`` and ``train ames``).

A trainer subclasses :class:`EpochRun` and keeps what is its own (model setup, the loss, the
epoch loop's body, validation, the final artifacts). The base holds what must behave the same in
both, so DDP, resume and checkpointing are fixed in one place:

- the global batch split over the ranks, with the size checks and their messages;
- the ``DistributedSampler`` loader and the DDP wrapper (NCCL on CUDA, gloo on CPU come from
  :mod:`asymfuse.cloud.distributed`);
- one optimiser step under a ``GradScaler`` (fp16) with optional gradient clipping;
- the resume payload (config check, optimiser / scheduler / scaler / history / best / epoch /
  RNG states) and the matching state dict;
- best-epoch tracking and the rank-0 write of ``last.pt``, ``best.pt`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from asymfuse.cloud.distributed import DistEnv
from asymfuse.cloud.train.progress import JsonlLog
from asymfuse.cloud.train.state import check_resume_config, load_state, save_state, set_rng_state
from asymfuse.edge.errors import ConfigError


class EpochRun:
    """One training run, built per process. Subclasses set :attr:`state_format` and
    :attr:`resume_safe_fields`, and call :meth:`plan_batches` and :meth:`init_optimisation` from
    their setup.

    Attributes:
        cfg: the trainer's frozen config (``batch_size``, ``seed``, ``workers``, ``grad_clip``,
            ``precision`` and ``to_dict()`` are used here).
        out: the run folder. env: this process's place in the DDP group. device: its device.
    """

    state_format: str = ""
    resume_safe_fields: frozenset[str] | tuple[str, ...] = ()

    def __init__(self, cfg: Any, out: Path, env: DistEnv, device: torch.device) -> None:
        self.cfg, self.out, self.env, self.device = cfg, out, env, device
        if cfg.batch_size % env.world_size:
            raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                              f"number of processes ({env.world_size})")
        self.t0 = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": -1, "score": -1.0}
        self.start_epoch = 0

    # ----------------------------------------------------------------------------------------- setup
    def plan_batches(self, n: int) -> None:
        """Set ``local_batch`` (per rank) and ``steps_per_epoch`` for ``n`` training samples.

        Raises:
            ConfigError: more processes than samples, or a global batch larger than the set.
        """
        cfg, env = self.cfg, self.env
        if env.world_size > n:
            raise ConfigError(f"{env.world_size} processes but only {n} training images; use "
                              f"--nproc_per_node <= {n}")
        self.local_batch = cfg.batch_size // env.world_size
        self.steps_per_epoch = (n // env.world_size) // self.local_batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training set ({n} images); "
                              "lower batch_size")

    def init_optimisation(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Keep the optimiser and scheduler; make the GradScaler (on for fp16 only)."""
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")

    def distributed_loader(self, ds: Dataset, *, pin_memory: bool = False) -> tuple[DataLoader, DistributedSampler]:
        """``ds`` sharded over the ranks (shuffled with ``cfg.seed``, last partial batch dropped)."""
        sampler = DistributedSampler(ds, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        loader = DataLoader(ds, batch_size=self.local_batch, sampler=sampler, drop_last=True,
                            num_workers=self.cfg.workers, pin_memory=pin_memory and self.device.type == "cuda",
                            persistent_workers=False)
        return loader, sampler

    def ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` itself in a single process, else wrapped in ``DistributedDataParallel``."""
        if not self.env.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    # ------------------------------------------------------------------------------------------ step
    def optimizer_step(self, loss: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> None:
        """Backward ``loss`` through the scaler, clip to ``cfg.grad_clip`` (when > 0), step the
        optimiser, the scaler and the scheduler."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    # ---------------------------------------------------------------------------------------- resume
    def load_resume(self) -> dict[str, Any]:
        """Read ``last.pt`` and refuse it under another config (the message lists each differing
        key). The caller loads the model weights (``payload["model"]``), then calls :meth:`restore`."""
        payload = load_state(self.out / "last.pt", fmt=self.state_format)
        check_resume_config(payload["config"], self.cfg.to_dict(), safe_fields=self.resume_safe_fields)
        return payload

    def restore(self, payload: Mapping[str, Any]) -> None:
        """Optimisation states, history, best, start epoch and RNG from a ``load_resume`` payload
        (after the caller has loaded the model weights)."""
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.history, self.best, self.start_epoch = payload["history"], payload["best"], payload["epoch"]
        set_rng_state(payload["rng"])

    def base_state(self, epoch: int, model: torch.nn.Module) -> dict[str, Any]:
        """The part of ``last.pt`` / ``best.pt`` every trainer writes (weights moved to the CPU)."""
        return {"format": self.state_format, "config": self.cfg.to_dict(), "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "history": self.history, "best": self.best}

    # ------------------------------------------------------------------------------------- end epoch
    def improved(self, score: float | None, *, has_val: bool, min_delta: float = 0.0) -> bool:
        """Whether this epoch's val ``score`` beats the best so far by more than ``min_delta`` (the first
        score always counts; without a val split every epoch counts as an improvement, so the last one
        is the best)."""
        if score is None:
            return not has_val
        margin = min_delta if self.best["epoch"] >= 0 else 0.0
        return score > self.best["score"] + margin

    def save_epoch(self, state: Callable[[], dict[str, Any]], *, improved: bool, record: Mapping[str, Any],
                   log: JsonlLog, skip: tuple[str, ...] = ("step_losses",)) -> None:
        """Rank 0 builds ``state()``, writes it to ``last.pt`` (and ``best.pt`` when ``improved``) and
        logs ``record`` without the keys in ``skip``; the other ranks do nothing."""
        if not self.env.is_main:
            return
        payload = state()
        save_state(self.out / "last.pt", payload)
        if improved:
            save_state(self.out / "best.pt", payload)
        log.write({k: v for k, v in record.items() if k not in skip})

    def load_best(self, model: torch.nn.Module) -> Path:
        """Load ``best.pt``'s weights into ``model`` when it exists; return its path."""
        best_path = self.out / "best.pt"
        if best_path.is_file():
            model.load_state_dict(load_state(best_path, fmt=self.state_format)["model"])
        return best_path
