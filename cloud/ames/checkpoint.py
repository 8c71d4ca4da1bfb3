"""AMES checkpoint files: the published layout ``{'state': state_dict}``, plus asymfuse metadata.

asymfuse writes ``{'state': state_dict, 'asymfuse': {...}}``; the extra key is ignored by the
published code, and a published file (no ``'asymfuse'`` key) loads here with its architecture
read off the tensor shapes. ``'asymfuse'`` holds ``format``, ``config`` (:class:`AMESConfig`),
``lam`` / ``gamma`` (the global-local ensemble), ``local_feature`` and any caller extras.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asymfuse.cloud.ames.model import AMES, AMESConfig
from asymfuse.cloud.models.checkpoint import atomic_torch_save, read_torch_file
from asymfuse.edge.errors import ConfigError, CorruptDataError

CHECKPOINT_FORMAT = "asymfuse.ames/1"
DEFAULT_LAM = 0.5
DEFAULT_GAMMA = 1.0
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class AMESInfo:
    """What a checkpoint says besides the weights.

    ``lam``/``gamma``: ensemble ``s = lam * s_global + (1 - lam) * sigmoid(gamma * logit)``.
    ``local_feature``: the feature-store name of the descriptors it was trained on (None for a
    published file). ``extra``: free-form JSON-able metadata.
    """

    config: AMESConfig
    lam: float = DEFAULT_LAM
    gamma: float = DEFAULT_GAMMA
    local_feature: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_ames(model: AMES, path: str | os.PathLike[str], *, lam: float = DEFAULT_LAM, gamma: float = DEFAULT_GAMMA,
              local_feature: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` atomically as ``{'state': ..., 'asymfuse': ...}``; returns the path."""
    meta = {"format": CHECKPOINT_FORMAT, "config": model.cfg.to_dict(), "lam": float(lam), "gamma": float(gamma),
            "local_feature": local_feature, "extra": dict(extra or {})}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic_torch_save({"state": state, "asymfuse": meta}, Path(path))


def config_from_state(state: dict[str, torch.Tensor], *, heads: int = 2) -> AMESConfig:
    """Infer the architecture of a published state dict from its tensor shapes.

    ``heads`` cannot be read off the shapes (published value: 2).

    Raises:
        CorruptDataError: the keys are not those of an AMES model.
    """
    if "mtc_token" not in state or "classifier.weight" not in state:
        raise CorruptDataError("not an AMES state dict: it lacks 'mtc_token'/'classifier.weight'; keys start "
                               f"with {sorted(state)[:5]}")
    binary = "remap_local.0.W" in state
    local_dim = int(state["remap_local.0.W"].shape[0] if binary else state["remap_local.0.weight"].shape[1])
    layers = 1 + max((int(m.group(1)) for k in state if (m := _LAYER_RE.match(k))), default=-1)
    if layers < 1:
        raise CorruptDataError("AMES state dict has no decoder.layers.* keys")
    return AMESConfig(local_dim=local_dim, binary=binary, model_dim=int(state["mtc_token"].shape[-1]), heads=heads,
                      layers=layers, ffn_dim=int(state["decoder.layers.0.linear1.weight"].shape[0]))


def load_ames(path: str | os.PathLike[str], *, variant: str | None = None, local_dim: int | None = None,
              heads: int = 2, device: str | torch.device = "cpu") -> tuple[AMES, AMESInfo]:
    """Load an asymfuse or published AMES checkpoint with ``strict=True``; the model is in eval mode.

    Args:
        variant: ``"binary"`` or ``"fp"`` to insist on one (None: accept either).
        local_dim: the descriptor dimension the caller will feed (None: no check).
        heads: attention heads of a published file (asymfuse files record theirs).

    Raises:
        CorruptDataError: unreadable file, no ``'state'``, or keys that do not match (the message
            lists the missing and unexpected keys).
        ConfigError: the file is the other variant, or its descriptor dimension is not ``local_dim``.
    """
    path = Path(path)
    payload = read_torch_file(path, what="AMES checkpoint", fix="pass the ames.pt written by `asymfuse train ames` or "
                              "a published AMES checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise CorruptDataError(f"{path} is not an AMES checkpoint: expected a dict with key 'state' "
                               "(the published layout)")
    state, meta = payload["state"], payload.get("asymfuse") or {}
    cfg = AMESConfig.from_dict(meta["config"]) if "config" in meta else config_from_state(state, heads=heads)
    _check_expectations(path, cfg, variant=variant, local_dim=local_dim)
    model = AMES(cfg)
    missing, unexpected = _key_diff(model, state)
    if missing or unexpected:
        raise CorruptDataError(f"{path} does not match an AMES {cfg.variant} model: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptDataError(f"{path}: tensor shapes do not match an AMES {cfg.variant} model: {exc}") from exc
    info = AMESInfo(config=cfg, lam=float(meta.get("lam", DEFAULT_LAM)), gamma=float(meta.get("gamma", DEFAULT_GAMMA)),
                    local_feature=meta.get("local_feature"), extra=dict(meta.get("extra") or {}))
    return model.to(device).eval(), info


def _check_expectations(path: Path, cfg: AMESConfig, *, variant: str | None, local_dim: int | None) -> None:
    if variant is not None and variant not in ("binary", "fp"):
        raise ConfigError(f"variant must be 'binary' or 'fp', got {variant!r}")
    if variant is not None and cfg.variant != variant:
        raise ConfigError(f"{path} is a {cfg.variant} AMES checkpoint but a {variant} one is needed; "
                          f"use a {variant} checkpoint (train with binary={variant == 'binary'})")
    if local_dim is not None and cfg.local_dim != local_dim:
        raise ConfigError(f"{path} expects {cfg.local_dim}-d local descriptors but the features are "
                          f"{local_dim}-d; use the local feature the checkpoint was trained on")


def _key_diff(model: AMES, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    want = set(model.state_dict())
    have = set(state)
    return sorted(want - have), sorted(have - want)
