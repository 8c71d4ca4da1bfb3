"""Batching images of different sizes for CNN gallery extractors.

Each image keeps its aspect ratio: its longer side is resized to ``max_side``, then it is
zero-padded (after normalisation) up to a multiple of the trunk stride. Only images with the same
padded size share a batch, so an image's features never depend on what it was batched with (BN
shifts make padded zeros non-zero after the first layer, unlike a conv's own zero padding). A
validity mask at feature-map resolution lets pooling and keypoint selection ignore the padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from asymfuse.edge.preprocess import as_rgb_uint8


@dataclass(frozen=True)
class PaddedBatch:
    """``pixels``: ``(B, 3, H, W)`` float32 normalised, zero padding at bottom/right.
    ``sizes``: ``(B, 2)`` int (h, w) of each resized image. ``scales``: ``(B,)`` float, resized
    side / original side."""

    pixels: torch.Tensor
    sizes: np.ndarray
    scales: np.ndarray

    def valid_mask(self, *, stride: int, feat_hw: tuple[int, int]) -> torch.Tensor:
        """``(B, h, w)`` bool: True where a feature-map cell sees real image."""
        fh, fw = feat_hw
        rows = torch.arange(fh).view(1, fh, 1)
        cols = torch.arange(fw).view(1, 1, fw)
        hs = torch.as_tensor(np.ceil(self.sizes[:, 0] / stride), dtype=torch.long).view(-1, 1, 1)
        ws = torch.as_tensor(np.ceil(self.sizes[:, 1] / stride), dtype=torch.long).view(-1, 1, 1)
        return ((rows < hs) & (cols < ws)).to(self.pixels.device)


def _resize(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    arr = as_rgb_uint8(img)
    h0, w0 = arr.shape[:2]
    scale = max_side / max(h0, w0)
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)), scale


def iter_padded_groups(images: Sequence[np.ndarray], *, max_side: int, mean: Sequence[float],
                       std: Sequence[float], multiple: int = 32, batch_size: int = 16,
                       device: torch.device | str = "cpu") -> Iterator[tuple[np.ndarray, PaddedBatch]]:
    """Resize (aspect kept, longer side = ``max_side``), normalise and pad, grouped by padded size.

    Args:
        images: ``B`` images ``(H, W, 3)`` uint8 RGB (grey and RGBA are converted).

    Yields:
        ``(indices, batch)``: positions in ``images`` (int64) and their :class:`PaddedBatch` of at
        most ``batch_size`` images, all with the same padded size.
    """
    resized = [_resize(img, max_side) for img in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (arr, _) in enumerate(resized):
        key = tuple(math.ceil(v / multiple) * multiple for v in arr.shape[:2])
        groups.setdefault(key, []).append(i)
    for (H, W), members in groups.items():
        for start in range(0, len(members), batch_size):
            idx = np.asarray(members[start:start + batch_size], dtype=np.int64)
            yield idx, _pad([resized[i] for i in idx], H, W, mean, std, device)


def _pad(items: list[tuple[np.ndarray, float]], H: int, W: int, mean: Sequence[float],
         std: Sequence[float], device: torch.device | str) -> PaddedBatch:
    resized = [arr for arr, _ in items]
    sizes = [arr.shape[:2] for arr in resized]
    scales = [scale for _, scale in items]
    out = np.zeros((len(resized), 3, H, W), dtype=np.float32)
    m = np.asarray(mean, np.float32).reshape(3, 1, 1)
    s = np.asarray(std, np.float32).reshape(3, 1, 1)
    for i, arr in enumerate(resized):
        h, w = arr.shape[:2]
        out[i, :, :h, :w] = (arr.transpose(2, 0, 1).astype(np.float32) / 255.0 - m) / s
    return PaddedBatch(torch.from_numpy(out).to(device), np.asarray(sizes), np.asarray(scales))
