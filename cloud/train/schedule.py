"""Optimisers and learning-rate schedules shared by the trainers.

Weight decay applies to weight matrices and conv kernels only; biases, norm layers, GeM powers
and learnable tokens (every parameter with fewer than 2 dims) are not decayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from asymfuse.edge.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("linear", "cosine", "constant")


def param_groups(modules: Sequence[tuple[nn.Module, float]], *, weight_decay: float) -> list[dict]:
    """Optimiser groups: for each ``(module, lr_mult)``, one decayed and one non-decayed group.

    Parameters shared between modules are taken once (first module wins); frozen ones
    (``requires_grad=False``) are still included so a later stage can unfreeze them.
    """
    seen: set[int] = set()
    groups: list[dict] = []
    for module, mult in modules:
        decay, no_decay = [], []
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
        if decay:
            groups.append({"params": decay, "weight_decay": weight_decay, "lr_mult": mult})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_mult": mult})
    return groups


def create_optimizer(groups: list[dict], *, kind: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over ``groups``; each group's lr is ``lr * lr_mult``.

    Raises:
        ConfigError: unknown optimiser or no parameters.
    """
    if not groups:
        raise ConfigError("nothing to optimise: the model has no trainable parameters for this scheme")
    for g in groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"optimizer {kind!r} is unknown; choose one of {list(OPTIMIZERS)}")


def lr_factor(kind: str, *, step: int, total: int, warmup: int = 0) -> float:
    """The lr multiplier at ``step`` of a phase of ``total`` steps: linear warm-up, then decay.

    ``linear`` decays to 0 at ``total``; ``cosine`` follows half a cosine to 0; ``constant`` stays 1.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"schedule {kind!r} is unknown; choose one of {list(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    frac = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def phased_schedule(optimizer: torch.optim.Optimizer, *, kind: str, phase_steps: Sequence[int],
                    warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose schedule restarts at each phase boundary (e.g. the two stages of two-stage
    training); one phase of ``sum(phase_steps)`` steps is the usual single schedule."""
    bounds = [0]
    for n in phase_steps:
        bounds.append(bounds[-1] + int(n))

    def factor(step: int) -> float:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if step < stop:
                return lr_factor(kind, step=step - start, total=stop - start, warmup=warmup)
        return 0.0 if kind != "constant" else 1.0

    fn: Callable[[int], float] = factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)
