"""Device and precision helpers: the one place that decides where tensors live and how they
are cast. Nothing in asymfuse calls ``.cuda()`` directly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from asymfuse.edge.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` (= best available) into a device.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is unknown.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; pass --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def check_precision(device: torch.device, precision: str) -> str:
    """``precision`` if :func:`autocast` accepts it on ``device``.

    Raises:
        ConfigError: unknown precision, or fp16 on CPU.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; choose one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast needs CUDA; use precision='bf16' (or fp32) on CPU")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Mixed-precision context for ``device``.

    ``fp32`` is a no-op; ``bf16`` works on CPU and CUDA; ``fp16`` needs CUDA (pair it with a
    GradScaler when training).

    Raises:
        ConfigError: unknown precision, or fp16 on CPU.
    """
    if check_precision(device, precision) == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
