"""Query-net checkpoints: weights plus the ModelSpec, written atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
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


def read_torch_file(path: str | os.PathLike[str], *, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with the one error rule of checkpoint I/O.

    Args:
        what: what the file should be, for messages (e.g. ``"mixer file"``).
        fix: how to get a good one (e.g. ``"train one with `asymfuse train aff`"``).

    Raises:
        CorruptDataError: the file does not exist or is unreadable; the message names ``fix``.
    """
    where = os.fspath(path)
    if not Path(path).is_file():
        raise CorruptDataError(f"{what} {where!r} does not exist; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CorruptDataError(f"{what} {where!r} is unreadable ({exc}); {fix}") from exc


@dataclass(frozen=True)
class QueryNetInfo:
    """What a query-net checkpoint says besides the weights: its ``model_spec`` and ``extra``."""

    model_spec: ModelSpec
    extra: dict[str, Any] = field(default_factory=dict)


def save_query_net(net: QueryNet, path: str | os.PathLike[str], *,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``{'format', 'spec', 'state_dict', 'extra'}`` atomically; the ModelSpec is stored as JSON."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": net.spec.to_json(), "state_dict": state,
               "extra": dict(extra or {})}
    return atomic_torch_save(payload, path)


def read_query_net_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec of a query-net checkpoint, without building the model.

    Raises:
        CorruptDataError: see :func:`load_query_net`.
    """
    return _read(path)[0].model_spec


def load_query_net(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                   input_size: tuple[int, int] | None = None) -> tuple[QueryNet, QueryNetInfo]:
    """Rebuild a query net from its checkpoint (arch, sizes and pooling come from its ModelSpec).

    Args:
        input_size: ``(H, W)`` to rebuild the net for another square input than the one it was
            trained at (the weights do not depend on it; the returned spec records the new size).

    Returns:
        ``(net in eval mode on device, info)``; ``info.model_spec`` equals ``net.spec``.

    Raises:
        CorruptDataError: the file is missing or unreadable, carries no ModelSpec, or its weights
            do not fit the recorded architecture (each message names the fix).
        ConfigError: ``input_size`` is not a square ``(H, W)`` pair of ints >= 32.
    """
    info, state = _read(path)
    spec = info.model_spec
    if input_size is not None:
        size = tuple(input_size)
        if len(size) != 2 or size[0] != size[1] or not all(isinstance(s, int) and s >= 32 for s in size):
            raise ConfigError(f"input_size must be a square (H, W) pair of ints >= 32, got {input_size!r}")
        spec = replace(spec, input_size=(size[0], size[1]))
    net = create_query_net(spec.arch, embed_dim=spec.embed_dim, pretrained=False,
                           input_size=spec.input_size[0], resize=spec.resize, pooling=spec.pooling,
                           embedding_space_id=spec.embedding_space_id)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptDataError(f"checkpoint {os.fspath(path)!r}: its weights do not fit a {spec.arch} query net "
                               f"({exc}); re-save it with save_query_net from the net that trained it") from exc
    net.spec = spec
    return net.to(device).eval(), replace(info, model_spec=spec)


def _read(path: str | os.PathLike[str]) -> tuple[QueryNetInfo, dict[str, torch.Tensor]]:
    where = os.fspath(path)
    payload = read_torch_file(path, what="query-net checkpoint", fix="train one with `asymfuse train aff` (it writes "
                              "<out>/query_net.pt) or re-save it with save_query_net")
    if not isinstance(payload, dict) or "spec" not in payload or not isinstance(payload.get("state_dict"), dict):
        raise CorruptDataError(f"checkpoint {where!r} carries no ModelSpec; re-save it with "
                               "asymfuse.cloud.models.checkpoint.save_query_net (or train with asymfuse)")
    info = QueryNetInfo(model_spec=ModelSpec.from_json(payload["spec"]), extra=dict(payload.get("extra") or {}))
    return info, payload["state_dict"]
