"""Query-net checkpoints: weights plus the ModelSpec, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from asymfuse.cloud.models.query_net import QueryNet, create_query_net
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.fileio import atomic_write
from asymfuse.edge.spec import ModelSpec

CHECKPOINT_FORMAT = "asymfuse.query_net/1"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over it.

    Raises:
        ConfigError: the folder does not exist or is not writable.
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_query_net(net: QueryNet, path: str | os.PathLike[str], *,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``{'format', 'spec', 'state_dict', 'extra'}``; the spec is stored as JSON."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": net.spec.to_json(), "state_dict": state,
               "extra": dict(extra or {})}
    return atomic_torch_save(payload, path)


def read_checkpoint_spec(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read a checkpoint's spec and state dict without building the model.

    Raises:
        CorruptDataError: unreadable file. ConfigError: no ModelSpec inside.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CorruptDataError(f"checkpoint {os.fspath(path)!r} does not exist") from exc
    except Exception as exc:
        raise CorruptDataError(f"checkpoint {os.fspath(path)!r} is unreadable: {exc}") from exc
    if not isinstance(payload, dict) or "spec" not in payload:
        raise ConfigError(f"checkpoint {os.fspath(path)!r} carries no ModelSpec; re-save it with "
                          "asymfuse.cloud.models.checkpoint.save_query_net (or train with asymfuse)")
    return ModelSpec.from_json(payload["spec"]), payload["state_dict"]


def load_query_net(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> QueryNet:
    """Rebuild a query net from its checkpoint (arch and sizes come from the spec).

    Raises:
        CorruptDataError / ConfigError: see :func:`read_checkpoint_spec`; weights not matching.
    """
    spec, state = read_checkpoint_spec(path)
    net = create_query_net(spec.arch, embed_dim=spec.embed_dim, pretrained=False,
                           input_size=spec.input_size[0], resize=spec.resize, pooling=spec.pooling,
                           embedding_space_id=spec.embedding_space_id)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {os.fspath(path)!r} weights do not match {spec.arch}: {exc}") from exc
    net.spec = spec
    return net.to(device)
