"""What the SDK accepts as an image, turned into ``(H, W, 3)`` uint8 RGB.

Accepted, each as one image:

- a NumPy array of dtype ``uint8``: ``(H, W, 3)`` in the caller's ``color_order`` (``"RGB"`` or
  ``"BGR"``, e.g. an OpenCV frame), ``(H, W, 4)`` RGBA / BGRA (alpha is dropped, not composited),
  ``(H, W)`` or ``(H, W, 1)`` grey (copied into all three channels);
- a ``PIL.Image.Image`` of any mode (``Image.convert("RGB")``: grey is copied to all channels,
  alpha is dropped, palettes are expanded);
- a path (``str`` / ``os.PathLike``) to an image file Pillow reads, decoded as RGB.

``color_order`` applies to NumPy arrays only: PIL images and files carry their own channel order.
Arrays of another dtype (float, int16, ...) are refused rather than guessed at: scale them to
uint8 0..255 first.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from PIL import Image

from asymfuse.edge.errors import ConfigError, ShapeError
from asymfuse.edge.preprocess import load_image, normalize_pixels, resize_to_spec
from asymfuse.edge.spec import ModelSpec

COLOR_ORDERS: tuple[str, ...] = ("RGB", "BGR")

ImageInput = Union[np.ndarray, Image.Image, str, "os.PathLike[str]"]
"""One image: a uint8 array, a PIL image or an image file path (see the module docstring)."""


def to_rgb_uint8(image: Any, *, color_order: str = "RGB") -> np.ndarray:
    """Convert one :data:`ImageInput` to ``(H, W, 3)`` uint8 RGB, C-contiguous.

    Raises:
        ShapeError: an array of the wrong dtype, rank or channel count, or an empty image.
        CorruptDataError: a file that is missing or not an image.
        ConfigError: an unknown ``color_order`` or an unsupported input type.
    """
    if color_order not in COLOR_ORDERS:
        raise ConfigError(f"color_order={color_order!r} is unknown; choose one of {list(COLOR_ORDERS)}")
    if isinstance(image, (str, os.PathLike)):
        return _check_size(load_image(image))
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ShapeError(f"image is empty: size {image.size}")
        return _check_size(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    if isinstance(image, np.ndarray):
        return _from_array(image, color_order)
    raise ConfigError(f"cannot embed a {type(image).__name__}; pass a uint8 (H, W, 3) NumPy array, a PIL image "
                      "or an image file path")


def to_model_input(image: Any, model_spec: ModelSpec, *, color_order: str = "RGB") -> np.ndarray:
    """One image -> the model's input row: :func:`to_rgb_uint8`, then the reference preprocessing
    (:func:`~asymfuse.edge.preprocess.resize_to_spec` and :func:`~asymfuse.edge.preprocess.normalize_pixels`,
    the functions the training side uses).

    Returns:
        ``(3, H, W)`` float32 NCHW row, (H, W) = ``model_spec.input_size``, ``(x / 255 - mean) / std``.

    Raises:
        ShapeError, CorruptDataError, ConfigError: as :func:`to_rgb_uint8`.
    """
    rgb = to_rgb_uint8(image, color_order=color_order)
    return normalize_pixels(resize_to_spec(rgb, model_spec), model_spec)


def _from_array(arr: np.ndarray, color_order: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ShapeError(f"image arrays must be uint8 0..255, got dtype {arr.dtype}; convert first, e.g. "
                         "np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ShapeError(f"expected an (H, W, 3) image (or (H, W), (H, W, 1) grey, (H, W, 4) with alpha), got "
                         f"shape {arr.shape}")
    rgb = arr[:, :, :3]
    if color_order == "BGR":
        rgb = rgb[:, :, ::-1]
    return _check_size(np.ascontiguousarray(rgb))


def _check_size(rgb: np.ndarray) -> np.ndarray:
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ShapeError(f"image is empty: shape {rgb.shape}; pass at least one pixel")
    return rgb
