"""Reference preprocessing: the single place that turns pixels into model input.

NumPy + Pillow only, so the phone-side SDK, the exporters' parity checks and the torch training
code all feed a model exactly the same numbers. Everything is driven by a :class:`ModelSpec`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from asymfuse.edge.errors import CorruptDataError, ShapeError
from asymfuse.edge.spec import ModelSpec

_PIL_INTERP = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        CorruptDataError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise CorruptDataError(f"image {os.fspath(path)!r} does not exist; check the path") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise CorruptDataError(f"image {os.fspath(path)!r} is unreadable ({exc}); "
                               "re-download or remove it") from exc


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate and convert an image array to ``(H, W, 3)`` uint8 RGB.

    Accepts ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, as uint8 or as float in [0, 1].

    Raises:
        ShapeError: wrong rank/channels, empty, or non-finite values.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ShapeError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(f"image is empty: shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number):
            raise ShapeError(f"image dtype {arr.dtype} is not numeric")
        if not np.all(np.isfinite(arr)):
            raise ShapeError("image contains NaN or inf; pass uint8 pixels or floats in [0, 1]")
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_to_spec(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Apply the spec's resize policy.

    Args:
        image: ``(H0, W0, 3)`` uint8 RGB.

    Returns:
        ``(H, W, 3)`` uint8 with (H, W) = ``spec.input_size``.
    """
    img = as_rgb_uint8(image)
    out_h, out_w = spec.input_size
    pil = Image.fromarray(img)
    interp = _PIL_INTERP[spec.interpolation]
    if spec.resize == "squash":
        return np.asarray(pil.resize((out_w, out_h), interp))
    h0, w0 = img.shape[:2]
    if spec.resize == "center_crop":
        scale = max(out_h / h0, out_w / w0)
        new_w, new_h = max(out_w, round(w0 * scale)), max(out_h, round(h0 * scale))
        big = pil.resize((new_w, new_h), interp)
        left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
        return np.asarray(big.crop((left, top, left + out_w, top + out_h)))
    # letterbox: fit the longer side, pad with the mean colour (zero after normalisation).
    scale = min(out_h / h0, out_w / w0)
    new_w, new_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    resized = np.asarray(pil.resize((new_w, new_h), interp))
    fill = np.clip(np.rint(np.asarray(spec.mean) * 255.0), 0, 255).astype(np.uint8)
    canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
    canvas[:] = fill
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def normalize_pixels(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Scale uint8 pixels to [0, 1] and normalise.

    Args:
        pixels: ``(..., H, W, 3)`` uint8 RGB.

    Returns:
        ``(..., 3, H, W)`` float32, ``(x / 255 - mean) / std``.
    """
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    x = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3).astype(np.float32))


def preprocess(images: np.ndarray | Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Turn one image or a list of images into a model input batch.

    Args:
        images: one ``(H, W, 3)`` image or a sequence of them (any sizes), uint8 RGB.

    Returns:
        ``(B, 3, H, W)`` float32 NCHW, ready for the model described by ``spec``.

    Raises:
        ShapeError: an image has the wrong shape or non-finite values, or the list is empty.
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    if len(images) == 0:
        raise ShapeError("preprocess() got an empty list of images; pass at least one")
    batch = np.stack([resize_to_spec(img, spec) for img in images])
    return normalize_pixels(batch, spec)
