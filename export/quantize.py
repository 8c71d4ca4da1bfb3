"""Shared quantisation helpers: validate a calibration set and iterate it.

Format-specific quantisation (onnxruntime QDQ, PT2E for TFLite, Core ML weight quantisation)
lives in the format modules; this module holds what they share. NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from asymfuse.edge.errors import ConfigError, ShapeError


def check_calibration(images: np.ndarray | None, *, minimum: int, input_size: int | None = None) -> np.ndarray:
    """Validate real calibration images for static int8.

    Args:
        images: ``(N, 3, H, W)`` preprocessed float images (see :func:`asymfuse.edge.preprocess.preprocess`).
        minimum: the least N accepted.
        input_size: when given, H and W must equal it.

    Returns:
        ``(N, 3, H, W)`` contiguous float32.

    Raises:
        ConfigError: no images or fewer than ``minimum``.
        ShapeError: wrong rank/channels/size, or NaN/inf values.
    """
    if images is None:
        raise ConfigError(f"static int8 needs real calibration images: got none, need >= {minimum}; "
                          "pass more images (e.g. --calibration DIR)")
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ShapeError(f"calibration images must be (N, 3, H, W) NCHW preprocessed floats, got shape {arr.shape}")
    if input_size is not None and arr.shape[2:] != (input_size, input_size):
        raise ShapeError(f"calibration images are {arr.shape[2]}x{arr.shape[3]} but the export is "
                         f"{input_size}x{input_size}; preprocess them with the exported ModelSpec")
    if arr.shape[0] < minimum:
        raise ConfigError(f"too few calibration images: got {arr.shape[0]}, need >= {minimum}; "
                          "pass more images (e.g. --calibration DIR)")
    if not np.issubdtype(arr.dtype, np.number):
        raise ShapeError(f"calibration images must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ShapeError("calibration images contain NaN or inf; preprocess real images with the ModelSpec")
    return arr


def batches(images: np.ndarray, *, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Yield ``(b, 3, H, W)`` float32 slices of ``images`` in order (the last may be smaller)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
