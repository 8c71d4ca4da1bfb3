"""The gallery feature-extractor interface and its batch records.

Extractors are frozen: they take a batch of RGB images of any sizes and return NumPy arrays,
the currency of the feature store. Global extractors return :class:`GlobalFeatures`, local
extractors :class:`LocalFeatures` padded to a fixed ``max_local`` with a padding mask.

An extractor splits its work in two halves: its :class:`ImagePreprocessor` (resize, normalise,
pad: CPU work that DataLoader workers can run) and :meth:`FeatureExtractor.extract_collated` (the
model). :meth:`FeatureExtractor.extract` runs both in the calling process, so the two paths give
the same features.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from asymfuse.edge.errors import ShapeError

FeatureKind = Literal["global", "local"]


@dataclass(frozen=True)
class GlobalFeatures:
    """``features``: ``(B, D)`` float32, unit-norm rows."""

    features: np.ndarray

    def __post_init__(self) -> None:
        f = self.features
        if f.ndim != 2 or f.dtype != np.float32:
            raise ShapeError(f"GlobalFeatures needs (B, D) float32, got {f.shape} {f.dtype}")

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class LocalFeatures:
    """A padded batch of local descriptor sets.

    - ``descriptors``: ``(B, L, d)`` float32, unit-norm rows; padding rows are zero.
    - ``weights``: ``(B, L)`` float32 detector score (higher = more important); 0 at padding.
    - ``mask``: ``(B, L)`` bool, True where the slot is padding (AMES convention: 1 = pad).
    - ``xy``: ``(B, L, 2)`` float32 keypoint (x, y) in pixels of the original image.
    - ``scale``: ``(B, L)`` float32 keypoint scale in pixels of the original image.

    Valid slots come first in each row, sorted by decreasing weight.
    """

    descriptors: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    xy: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        d = self.descriptors
        if d.ndim != 3 or d.dtype != np.float32:
            raise ShapeError(f"LocalFeatures.descriptors needs (B, L, d) float32, got {d.shape} {d.dtype}")
        b, n = d.shape[:2]
        expect = {"weights": (b, n), "mask": (b, n), "xy": (b, n, 2), "scale": (b, n)}
        for name, shape in expect.items():
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ShapeError(f"LocalFeatures.{name} must have shape {shape}, got {arr.shape}")
        if self.mask.dtype != np.bool_:
            raise ShapeError(f"LocalFeatures.mask must be bool (True = padding), got {self.mask.dtype}")

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """``(B,)`` int64 number of valid descriptors per image."""
        return (~self.mask).sum(axis=1).astype(np.int64)


Features = GlobalFeatures | LocalFeatures


class ImagePreprocessor:
    """The CPU half of an extractor, safe to run in DataLoader worker processes.

    ``prepare`` turns one decoded ``(H, W, 3)`` uint8 RGB image into whatever the extractor wants
    per image; ``collate`` turns a list of prepared images into one batch for
    :meth:`FeatureExtractor.extract_collated`. It holds no model and must pickle. This default
    passes the images through unchanged (a list of arrays).
    """

    def prepare(self, image: np.ndarray) -> Any:
        return image

    def collate(self, items: list[Any]) -> Any:
        return list(items)


class FeatureExtractor(abc.ABC):
    """A frozen gallery model.

    Attributes:
        name: registry name, e.g. ``"gem_lite2"``.
        kind: ``"global"`` or ``"local"``.
        dim: output dimension D (global) or d (local).
        max_local: L, the padded number of local descriptors (None for global extractors).
        precision: ``"fp32"``, or the autocast precision of the model's forward (``"bf16"``,
            ``"fp16"``); features then differ from fp32 by rounding only, so the ``extractor_id``
            stays the same and feature stores record the precision in their ``meta``.
    """

    name: str
    kind: FeatureKind
    dim: int
    max_local: int | None = None
    precision: str = "fp32"

    @property
    @abc.abstractmethod
    def extractor_id(self) -> str:
        """Stable id of this extractor: name, config and a weight digest. Two extractors with the
        same id produce the same features; embedding-space ids are built from these."""

    @abc.abstractmethod
    def extract(self, images: Sequence[np.ndarray]) -> Features:
        """Extract features of a batch.

        Args:
            images: ``B`` images, each ``(H, W, 3)`` uint8 RGB, sizes may differ.

        Returns:
            :class:`GlobalFeatures` with ``(B, dim)`` or :class:`LocalFeatures` with
            ``(B, max_local, dim)``.

        Raises:
            ShapeError: an image is malformed, or the batch is empty.
        """

    @property
    def preprocessor(self) -> ImagePreprocessor:
        """The picklable CPU half (resize, normalise, pad) that DataLoader workers may run."""
        return ImagePreprocessor()

    def extract_collated(self, batch: Any) -> Features:
        """Features of a batch made by ``self.preprocessor.collate`` (the model half).

        The default preprocessor passes images through, so this default is :meth:`extract`.

        Raises:
            ShapeError: as :meth:`extract`.
        """
        return self.extract(batch)

    @property
    def store_meta(self) -> dict[str, Any]:
        """Extra metadata a feature store of this extractor records (e.g. an embedding-space id)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook; most extractors hold no native handle
        """Release native handles (sessions). Safe to call twice."""

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_batch(images: Sequence[np.ndarray]) -> None:
    """Raise :class:`ShapeError` if the batch is empty."""
    if len(images) == 0:
        raise ShapeError("extract() got an empty batch; pass at least one image")
