"""Training-time image augmentation for the query net: random resized crop + colour jitter.

NumPy + Pillow only, and deterministic given a ``numpy.random.Generator``: the same generator
state always gives the same output, whatever process, worker or rank runs it. The crop follows
the usual "random resized crop" recipe (an area fraction and a log-uniform aspect ratio, up to
10 tries, then a centre crop); the jitter scales brightness, contrast and saturation in that fixed
order. Evaluation images use the spec's reference preprocessing instead (:func:`eval_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from asymfuse.edge.errors import ConfigError
from asymfuse.edge.preprocess import as_rgb_uint8, resize_to_spec
from asymfuse.edge.spec import ModelSpec

CROP_TRIES = 10
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" mode


@dataclass(frozen=True)
class AugmentConfig:
    """How training images are augmented.

    Attributes:
        crop_scale_min: smallest crop area as a fraction of the image area, in (0, 1]; the
            fraction is drawn uniformly from ``[crop_scale_min, 1]``.
        crop_ratio: (min, max) crop aspect ratio w/h, 0 < min <= max; drawn log-uniformly.
        color_jitter: j in [0, 1); brightness, contrast and saturation factors are each drawn
            uniformly from ``[1 - j, 1 + j]`` (0 = no jitter).
        hflip: flip horizontally with probability 1/2 (off by default: landmarks are not
            mirror-symmetric and text flips).
    """

    crop_scale_min: float = 0.35
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.3
    hflip: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_ratio", tuple(float(r) for r in self.crop_ratio))
        if not isinstance(self.crop_scale_min, (int, float)) or not 0.0 < self.crop_scale_min <= 1.0:
            raise ConfigError(f"crop_scale_min must lie in (0, 1], got {self.crop_scale_min!r}")
        lo_hi = self.crop_ratio
        if len(lo_hi) != 2 or not all(math.isfinite(r) and r > 0 for r in lo_hi) or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio!r}")
        if not isinstance(self.color_jitter, (int, float)) or not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError(f"color_jitter must lie in [0, 1), got {self.color_jitter!r}")
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"hflip must be a bool, got {self.hflip!r}")


def augment_image(img: np.ndarray, *, rng: np.random.Generator, size: tuple[int, int],
                  cfg: AugmentConfig) -> np.ndarray:
    """Random resized crop to ``size``, optional flip, then colour jitter.

    Args:
        img: ``(H0, W0, 3)`` uint8 RGB (grey, RGBA and float [0, 1] are accepted and converted).
        rng: the only source of randomness; its state advances.
        size: output ``(H, W)``.
        cfg: augmentation settings.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ConfigError: ``size`` is not two positive ints.
        ShapeError: ``img`` is malformed or empty.
    """
    out_h, out_w = _check_size(size)
    image = as_rgb_uint8(img)
    top, left, h, w = crop_box(image.shape[0], image.shape[1], rng=rng, cfg=cfg)
    pil = Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR,
                                        box=(left, top, left + w, top + h))
    out = np.asarray(pil, dtype=np.uint8)
    if cfg.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if cfg.color_jitter > 0:
        out = color_jitter(out, rng=rng, strength=cfg.color_jitter)
    return np.ascontiguousarray(out)


def crop_box(height: int, width: int, *, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[int, int, int, int]:
    """Draw a crop ``(top, left, h, w)`` inside a ``height x width`` image.

    Up to :data:`CROP_TRIES` draws of (area fraction, log-uniform aspect ratio); the first that
    fits is used. Otherwise: the largest centred crop whose aspect ratio is clamped into
    ``cfg.crop_ratio`` (the whole image when its own ratio is inside the range).
    """
    area = height * width
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(cfg.crop_scale_min, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    ratio = width / height
    if ratio < cfg.crop_ratio[0]:
        w, h = width, min(height, max(1, int(round(width / cfg.crop_ratio[0]))))
    elif ratio > cfg.crop_ratio[1]:
        h, w = height, min(width, max(1, int(round(height * cfg.crop_ratio[1]))))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(img: np.ndarray, *, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Scale brightness, contrast and saturation (in that order) by factors in ``[1 - s, 1 + s]``.

    Brightness multiplies the pixels; contrast blends with the mean luma of the image; saturation
    blends with the per-pixel luma. Values are clipped to [0, 255] after each step.

    Args:
        img: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    b, c, s = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    x = np.clip(img.astype(np.float32) * np.float32(b), 0.0, 255.0)
    mean = np.float32((x @ _LUMA).mean())
    x = np.clip((x - mean) * np.float32(c) + mean, 0.0, 255.0)
    grey = (x @ _LUMA)[..., None]
    x = np.clip((x - grey) * np.float32(s) + grey, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def eval_image(img: np.ndarray, *, spec: ModelSpec) -> np.ndarray:
    """The spec's reference preprocessing without normalisation (no randomness).

    Args:
        img: ``(H0, W0, 3)`` uint8 RGB.

    Returns:
        ``(H, W, 3)`` uint8 with (H, W) = ``spec.input_size``, resized by the spec's policy
        (:func:`asymfuse.edge.preprocess.resize_to_spec`).

    Raises:
        ShapeError: ``img`` is malformed or empty.
    """
    return resize_to_spec(img, spec)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (H, W), got {size!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (h, w)):
        raise ConfigError(f"size must be two positive ints (H, W), got {size!r}")
    return int(h), int(w)
