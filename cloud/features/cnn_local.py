"""CNN feature-map local descriptors: cells of an intermediate trunk map, kept top-L by norm.

The score of a cell is the L2 norm of its activation vector (DELF-style "norm attention"); the
descriptor is the activation, L2-normalised. Keypoints are cell centres in original pixels.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from asymfuse.cloud.device import autocast
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.cnn_batch import PaddedBatch, PaddedGroups
from asymfuse.cloud.features.cnn_global import CnnExtractor, config_id
from asymfuse.cloud.models.backbones import LiteBody, Trunk
from asymfuse.edge.errors import ConfigError


class LiteMapLocalExtractor(CnnExtractor):
    """Local descriptors from the output of an EfficientNet-Lite stage (stride 16 by default)."""

    kind = "local"

    def __init__(self, *, name: str, trunk: Trunk, max_local: int = 256, max_side: int = 384,
                 stage_end: int = -2, batch_size: int = 8, device: str | torch.device = "cpu",
                 precision: str = "fp32", channels_last: bool = False) -> None:
        body = trunk.body
        if not isinstance(body, LiteBody):
            raise ConfigError(f"{name} needs an EfficientNet-Lite trunk, got {type(body).__name__}")
        if max_local < 1:
            raise ConfigError(f"need max_local >= 1, got {max_local}")
        super().__init__(name=name, trunk=trunk, max_side=max_side, batch_size=batch_size, device=device,
                         precision=precision, channels_last=channels_last)
        ends = body.stage_ends() + [len(body._blocks)]
        self.upto = ends[stage_end]
        self.stride = 2 ** (1 + sum(1 for e in body.stage_ends() if e < self.upto))
        self.max_local = max_local
        self.dim = int(body._blocks[self.upto - 1]._block_args.output_filters)

    @cached_property
    def extractor_id(self) -> str:
        cfg = {"max_local": self.max_local, "max_side": self.max_side, "upto": self.upto}
        return config_id(self.name, cfg, self.trunk)

    @torch.inference_mode()
    def extract_collated(self, batch: PaddedGroups) -> LocalFeatures:
        """Features of a :meth:`PadResize.collate` batch: ``(B, max_local, dim)`` padded sets."""
        b, L = batch.count, self.max_local
        out = LocalFeatures(np.zeros((b, L, self.dim), np.float32), np.zeros((b, L), np.float32),
                            np.ones((b, L), bool), np.zeros((b, L, 2), np.float32),
                            np.zeros((b, L), np.float32))
        for idx, group in batch.groups:
            for arr, part in zip((out.descriptors, out.weights, out.mask, out.xy, out.scale),
                                 self._extract_group(self.on_device(group))):
                arr[idx] = part
        return out

    def _extract_group(self, batch: PaddedBatch) -> tuple[np.ndarray, ...]:
        with autocast(self.device, self.precision):
            fmap = self.trunk.body.forward_blocks(batch.pixels, upto=self.upto).float()
        b, c, h, w = fmap.shape
        valid = batch.valid_mask(stride=self.stride, feat_hw=(h, w)).reshape(b, -1)
        flat = fmap.reshape(b, c, h * w).transpose(1, 2)  # (B, h*w, C)
        score = flat.norm(dim=-1).masked_fill(~valid, -1.0)
        k = min(self.max_local, h * w)
        top, idx = score.topk(k, dim=1)  # sorted by decreasing score
        desc = torch.nn.functional.normalize(torch.gather(flat, 1, idx[..., None].expand(-1, -1, c)), dim=-1)
        keep = top >= 0
        L = self.max_local
        out_desc = np.zeros((b, L, c), np.float32)
        out_w = np.zeros((b, L), np.float32)
        out_mask = np.ones((b, L), bool)
        out_xy = np.zeros((b, L, 2), np.float32)
        out_scale = np.zeros((b, L), np.float32)
        keep_np, idx_np = keep.cpu().numpy(), idx.cpu().numpy()
        out_desc[:, :k] = np.where(keep_np[..., None], desc.cpu().numpy(), 0.0)
        out_w[:, :k] = np.where(keep_np, top.cpu().numpy(), 0.0)
        out_mask[:, :k] = ~keep_np
        inv = (1.0 / batch.scales)[:, None]
        out_xy[:, :k, 0] = np.where(keep_np, ((idx_np % w) + 0.5) * self.stride * inv, 0.0)
        out_xy[:, :k, 1] = np.where(keep_np, ((idx_np // w) + 0.5) * self.stride * inv, 0.0)
        out_scale[:, :k] = np.where(keep_np, self.stride * inv, 0.0)
        return out_desc, out_w, out_mask, out_xy, out_scale
