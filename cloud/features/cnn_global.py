"""GeM-pooled CNN global descriptors (gallery side), from any registered trunk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.device import autocast, check_precision, resolve_device
from asymfuse.cloud.features.base import FeatureExtractor, GlobalFeatures, check_batch
from asymfuse.cloud.features.cnn_batch import PaddedBatch, PaddedGroups, PadResize
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


class CnnExtractor(FeatureExtractor):
    """What the CNN extractors share: a frozen trunk on ``device``, the :class:`PadResize`
    preprocessor, and the forward's ``precision`` (autocast) and memory format."""

    def __init__(self, *, name: str, trunk: Trunk, max_side: int, batch_size: int, device: str | torch.device,
                 precision: str, channels_last: bool) -> None:
        if max_side < 64 or batch_size < 1:
            raise ConfigError(f"need max_side >= 64 and batch_size >= 1; got {max_side}, {batch_size}")
        self.name, self.max_side, self.batch_size = name, max_side, batch_size
        self.device = resolve_device(device)
        self.precision = check_precision(self.device, precision)
        self.channels_last = bool(channels_last)
        self.trunk = frozen(trunk).to(self.device)
        if self.channels_last:
            self.trunk = self.trunk.to(memory_format=torch.channels_last)

    @property
    def preprocessor(self) -> PadResize:
        info = self.trunk.info
        return PadResize(max_side=self.max_side, mean=info.mean, std=info.std, multiple=info.stride,
                         batch_size=self.batch_size)

    def extract(self, images: Sequence[np.ndarray]) -> Any:
        check_batch(images)
        pre = self.preprocessor
        return self.extract_collated(pre.collate([pre.prepare(image) for image in images]))

    def on_device(self, batch: PaddedBatch) -> PaddedBatch:
        return batch.to(self.device, channels_last=self.channels_last)


class GemGlobalExtractor(CnnExtractor):
    """Trunk feature map -> masked GeM (fixed p) -> L2 normalisation; ``(B, C)`` float32."""

    kind = "global"

    def __init__(self, *, name: str, trunk: Trunk, max_side: int = 384, p: float = 3.0,
                 batch_size: int = 16, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = False) -> None:
        if p <= 0:
            raise ConfigError(f"need GeM p > 0, got {p}")
        super().__init__(name=name, trunk=trunk, max_side=max_side, batch_size=batch_size, device=device,
                         precision=precision, channels_last=channels_last)
        self.p = p
        self.dim = trunk.info.out_channels

    @cached_property
    def extractor_id(self) -> str:
        return config_id(self.name, {"max_side": self.max_side, "p": self.p}, self.trunk)

    @torch.inference_mode()
    def extract_collated(self, batch: PaddedGroups) -> GlobalFeatures:
        """Features of a :meth:`PadResize.collate` batch: ``(B, C)`` float32, unit-norm."""
        stride = self.trunk.info.stride
        out = np.zeros((batch.count, self.dim), np.float32)
        for idx, group in batch.groups:
            group = self.on_device(group)
            with autocast(self.device, self.precision):
                fmap = self.trunk(group.pixels).float()
            valid = group.valid_mask(stride=stride, feat_hw=tuple(fmap.shape[-2:]))
            out[idx] = F.normalize(gem(fmap, self.p, valid=valid), dim=-1).cpu().numpy()
        return GlobalFeatures(out)
