"""Batching images of different sizes for CNN gallery extractors.

Each image keeps its aspect ratio: its longer side is resized to ``max_side``, then it is
zero-padded (after normalisation) up to a multiple of the trunk stride. Only images with the same
padded size share a batch, so an image's features never depend on what it was batched with (BN
shifts make padded zeros non-zero after the first layer, unlike a conv's own zero padding). A
validity mask at feature-map resolution lets pooling and keypoint selection ignore the padding.

The work is split for DataLoader workers: :meth:`PadResize.prepare` (resize + normalise one
image) and :meth:`PadResize.collate` (group by padded size, pad) run on the CPU, in a worker or
in the caller; the extractor then moves each :class:`PaddedBatch` to its device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from asymfuse.cloud.features.base import ImagePreprocessor
from asymfuse.edge.errors import ConfigError
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

    def to(self, device: torch.device | str, *, channels_last: bool = False) -> PaddedBatch:
        """The batch with ``pixels`` on ``device`` (a non-blocking copy from pinned memory)."""
        pixels = self.pixels.to(device, non_blocking=True)
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return PaddedBatch(pixels, self.sizes, self.scales)

    def pin_memory(self) -> PaddedBatch:
        return PaddedBatch(self.pixels.pin_memory(), self.sizes, self.scales)


@dataclass(frozen=True)
class PreparedImage:
    """One resized, normalised image: ``pixels`` ``(3, h, w)`` float32, ``scale`` = h / H0."""

    pixels: np.ndarray
    scale: float


@dataclass(frozen=True)
class PaddedGroups:
    """A collated batch of ``count`` images: ``groups`` of ``(positions, PaddedBatch)``, each
    group one padded size; ``positions`` (int64) index the batch's images."""

    count: int
    groups: tuple[tuple[np.ndarray, PaddedBatch], ...]

    def pin_memory(self) -> PaddedGroups:  # called by DataLoader(pin_memory=True)
        return PaddedGroups(self.count, tuple((idx, batch.pin_memory()) for idx, batch in self.groups))


@dataclass(frozen=True)
class PadResize(ImagePreprocessor):
    """Resize (aspect kept, longer side = ``max_side``), normalise by ``mean``/``std`` (0-1
    pixels), pad to a multiple of ``multiple``; ``batch_size`` caps the images per padded group."""

    max_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    multiple: int = 32
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.max_side < 1 or self.multiple < 1 or self.batch_size < 1:
            raise ConfigError(f"PadResize needs max_side, multiple, batch_size >= 1; got {self.max_side}, "
                              f"{self.multiple}, {self.batch_size}")

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """``(H, W, 3)`` uint8 RGB (grey and RGBA are converted) -> :class:`PreparedImage`."""
        arr, scale = _resize(image, self.max_side)
        m = np.asarray(self.mean, np.float32).reshape(3, 1, 1)
        s = np.asarray(self.std, np.float32).reshape(3, 1, 1)
        pixels = (arr.transpose(2, 0, 1).astype(np.float32) / 255.0 - m) / s
        return PreparedImage(np.ascontiguousarray(pixels), scale)

    def collate(self, items: list[PreparedImage]) -> PaddedGroups:
        """Group ``items`` by padded size (first-seen order), at most ``batch_size`` per group, and pad."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(items):
            key = tuple(math.ceil(v / self.multiple) * self.multiple for v in item.pixels.shape[1:])
            groups.setdefault(key, []).append(i)
        out = []
        for (H, W), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                idx = np.asarray(members[start:start + self.batch_size], dtype=np.int64)
                out.append((idx, _pad([items[i] for i in idx], H, W)))
        return PaddedGroups(len(items), tuple(out))


def _resize(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    arr = as_rgb_uint8(img)
    h0, w0 = arr.shape[:2]
    scale = max_side / max(h0, w0)
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)), scale


def _pad(items: list[PreparedImage], H: int, W: int) -> PaddedBatch:
    out = torch.zeros((len(items), 3, H, W), dtype=torch.float32)
    for i, item in enumerate(items):
        h, w = item.pixels.shape[1:]
        out[i, :, :h, :w] = torch.from_numpy(item.pixels)
    sizes = np.asarray([item.pixels.shape[1:] for item in items])
    return PaddedBatch(out, sizes, np.asarray([item.scale for item in items]))
