"""Shared quantisation helpers: validate a calibration set and iterate it.

Format-specific quantisation (onnxruntime QDQ, PT2E for TFLite, Core ML weight quantisation)
lives in the format modules; this module holds what they share. NumPy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

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


QUANT_KEY = "asymfuse.quantization"
"""Metadata key of the JSON record of how an int8 artifact was quantised (e.g. its float layers)."""
INT8_SELF_CHECK = 0.995
"""Int8 exports keep more leading conv layers in float while their worst cosine vs the float model on
the calibration images is below this (the parity gate itself asks >= 0.99 on other images)."""
FLOAT_PREFIX_STEPS: tuple[int, ...] = (0, 4, 12, 20, 28)
"""Numbers of leading conv layers kept in float, tried in order. Measured on EfficientNet-Lite0 at
224 px (ONNX static int8, 64 calibration photos, half of them crops; worst cosine on calibration /
on the 22 bbx test queries): 12 convs 0.9945 / 0.9862, 16: 0.9940 / 0.9894, 20: 0.9960 / 0.9901,
24: 0.9952 / 0.9932. Steps stop at 28 of Lite0's 49: beyond that int8 buys little speed."""

T = TypeVar("T")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(N, D)`` arrays -> ``(N,)`` float64."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)


SCREEN_MARGIN = 0.005
"""A screened step (see :func:`search_float_prefix`) is built only when its simulated worst cosine
reaches ``target - SCREEN_MARGIN``. Measured on EfficientNet-Lite0 at 224 px (PT2E graph run in torch
vs the TFLite flatbuffer, 32 calibration photos; worst cosine simulated / real): k = 0: 0.8849 / 0.8793,
4: 0.9718 / 0.9788, 12: 0.99432 / 0.99453, 20: 0.99521 / 0.99553. Near the target the two differ by
under 0.0004, far below it by up to 0.007, where nothing is decided."""


def search_float_prefix(attempt: Callable[[int], tuple[T, np.ndarray, int]], reference: np.ndarray, *,
                        steps: Sequence[int] = FLOAT_PREFIX_STEPS, target: float = INT8_SELF_CHECK,
                        screen: Callable[[int], tuple[np.ndarray, int]] | None = None,
                        screen_margin: float = SCREEN_MARGIN) -> tuple[T, int, float, int]:
    """Quantise with ``k`` leading convs left in float, for ``k`` in ``steps``, until the worst
    cosine against ``reference`` reaches ``target``; keep the best attempt.

    Depthwise-separable nets (EfficientNet-Lite, MobileNet) lose most int8 accuracy in their first
    blocks, so leaving a few of them in float buys most of it back at little cost in speed.

    With ``screen`` (a cheap simulation of step ``k``, e.g. the quantized graph run in torch before
    the slow lowering to a file), a step whose simulated worst cosine is below
    ``target - screen_margin`` is not built. When every step is screened out, the one with the best
    simulated cosine is built, so an artifact always comes back.

    Args:
        attempt: ``k -> (artifact, outputs (N, D) on the calibration images, number of convs)``.
        reference: ``(N, D)`` float model outputs on the same images.
        steps: increasing ``k`` values; ``k`` values that would leave fewer than 2 convs
            quantised are skipped.
        target: stop at the first attempt whose worst cosine reaches this.
        screen: ``k -> (simulated outputs (N, D), number of convs)``, or None to build every step.
        screen_margin: see :data:`SCREEN_MARGIN`.

    Returns:
        ``(artifact, k, worst cosine, number of convs)`` of the best built attempt (ties: the smaller ``k``).
    """
    best: tuple[T, int, float] | None = None
    screened: list[tuple[float, int]] = []  # (simulated worst cosine, k) of the steps not built
    n_convs: int | None = None
    for k in steps:
        if k > 0 and n_convs is not None and k >= n_convs - 1:
            break
        if screen is not None:
            simulated, n_convs = screen(k)
            sim_cos = float(cosine_rows(simulated, reference).min())
            if sim_cos < target - screen_margin:
                screened.append((sim_cos, k))
                continue
        artifact, outputs, n_convs = attempt(k)
        cos = float(cosine_rows(outputs, reference).min())
        if best is None or cos > best[2] + 1e-4:
            best = (artifact, k, cos)
        if cos >= target:
            break
    if best is None and screened:
        k = min(screened, key=lambda item: (-item[0], item[1]))[1]
        artifact, outputs, n_convs = attempt(k)
        best = (artifact, k, float(cosine_rows(outputs, reference).min()))
    if best is None or n_convs is None:
        raise ConfigError("search_float_prefix needs at least one step, e.g. (0,)")
    return best[0], best[1], best[2], n_convs
