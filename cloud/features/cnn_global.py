"""GeM-pooled CNN global descriptors (gallery side), from any registered trunk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.device import resolve_device
from asymfuse.cloud.features.base import FeatureExtractor, GlobalFeatures, check_batch
from asymfuse.cloud.features.cnn_batch import iter_padded_groups
from asymfuse.cloud.models.backbones import Trunk
from asymfuse.cloud.models.pooling import gem
from asymfuse.cloud.models.weights import state_dict_digest
from asymfuse.edge.errors import ConfigError


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode with gradients off, and return it."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def config_id(name: str, config: dict, module: torch.nn.Module | None) -> str:
    """``name/<12 hex>`` over the config and (if given) the module's weight digest."""
    payload = dict(config, weights=state_dict_digest(module) if module is not None else None)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}/{digest}"


class GemGlobalExtractor(FeatureExtractor):
    """Trunk feature map -> masked GeM (fixed p) -> L2 normalisation; ``(B, C)`` float32."""

    kind = "global"

    def __init__(self, *, name: str, trunk: Trunk, max_side: int = 384, p: float = 3.0,
                 batch_size: int = 16, device: str | torch.device = "cpu") -> None:
        if max_side < 64 or p <= 0 or batch_size < 1:
            raise ConfigError(f"need max_side >= 64, p > 0, batch_size >= 1; got {max_side}, {p}, {batch_size}")
        self.name, self.max_side, self.p, self.batch_size = name, max_side, p, batch_size
        self.device = resolve_device(device)
        self.trunk = frozen(trunk).to(self.device)
        self.dim = trunk.info.out_channels

    @cached_property
    def extractor_id(self) -> str:
        return config_id(self.name, {"max_side": self.max_side, "p": self.p}, self.trunk)

    @torch.inference_mode()
    def extract(self, images: Sequence[np.ndarray]) -> GlobalFeatures:
        check_batch(images)
        info = self.trunk.info
        out = np.zeros((len(images), self.dim), np.float32)
        for idx, batch in iter_padded_groups(images, max_side=self.max_side, mean=info.mean,
                                             std=info.std, multiple=info.stride,
                                             batch_size=self.batch_size, device=self.device):
            fmap = self.trunk(batch.pixels).float()
            valid = batch.valid_mask(stride=info.stride, feat_hw=tuple(fmap.shape[-2:]))
            out[idx] = F.normalize(gem(fmap, self.p, valid=valid), dim=-1).cpu().numpy()
        return GlobalFeatures(out)
