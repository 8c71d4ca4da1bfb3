"""Input weights of the closed-form fusion start, measured on the training labels.

The PCA start of a mixer (``mixer_start = "pca"``) whitens the weighted concatenation of its K + M
inputs. PCA does not know which input carries the images' identity: an input of pure noise has as
much variance as a good feature, so whitening keeps its directions and scales them up to unit
variance, and the fused space is then worse than its best input (measured in ``bench aff``'s
robustness block: two synthetic noisy inputs next to gem_lite1 and SIFT).

``fusion_weighting = "margin"`` sets each input's weight from the training rows instead:

- an input's **class margin** is the mean cosine similarity of its same-class pairs minus that of
  its different-class pairs, after centring the input on its training mean (so the component every
  image shares does not count). It is about 0 for an input that says nothing about the class, and
  grows with how well the input separates the classes;
- the weights are the margins divided by the largest one (so the best input weighs 1), times the
  input's fixed ``fusion_weights`` entry; an input whose margin is at most ``floor`` of the largest
  weighs ``floor`` (a weight must stay > 0).

Computed in float64 from per-class sums, ``O(N * D)`` time and memory for ``N`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from asymfuse.cloud.models.fusion import FusionInputs
from asymfuse.cloud.models.mixers.base import pooled_features
from asymfuse.edge.errors import ConfigError

MARGIN_FLOOR = 0.01
"""The smallest weight, relative to the best input's."""


def class_margin(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean centred cosine of same-class pairs minus that of different-class pairs.

    Args:
        x: ``(N, D)`` rows of one input (any scale; each row is centred on the mean row, then
            L2-normalised; a row that is all zero after centring counts as zero similarity).
        labels: ``(N,)`` integer class of each row.

    Raises:
        ConfigError: no class has two rows, or all rows share one class.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or len(labels) != len(x):
        raise ConfigError(f"class_margin needs (N, D) rows and N labels, got {x.shape} and {labels.shape}")
    xc = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(xc, axis=1, keepdims=True)
    xc = np.where(norms > 1e-12, xc / np.maximum(norms, 1e-12), 0.0)
    self_sim = float(np.sum(xc * xc))  # the diagonal pairs (i, i), removed from both sums
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, inverse, xc)
    n_same = float(np.sum(counts * (counts - 1)))
    n_all = float(len(x) * (len(x) - 1))
    if n_same == 0 or n_all == n_same:
        raise ConfigError("the margin weighting needs at least one class with two training images and at least "
                          "two classes; use fusion_weighting=fixed")
    same = float(np.sum(sums * sums)) - self_sim
    total = float(np.sum(xc.sum(axis=0) ** 2)) - self_sim
    return same / n_same - (total - same) / (n_all - n_same)


def margin_weights(inputs: FusionInputs, labels: np.ndarray, *, fixed: Sequence[float] = (),
                   floor: float = MARGIN_FLOOR) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The inputs' weights from their class margins (see the module docstring).

    Args:
        inputs: ``N`` training rows (local sets are mean-pooled, as the mixers pool them).
        labels: ``(N,)`` class of each row.
        fixed: ``K + M`` fixed weights multiplied in, or ``()`` for all 1.
        floor: the smallest weight relative to the best input's, in ``(0, 1]``.

    Returns:
        ``(weights, margins)``, one value per input in schema order.

    Raises:
        ConfigError: bad labels (see :func:`class_margin`), a ``fixed`` of another length, a bad
            ``floor``, or no input with a positive margin (the labels say nothing the inputs see).
    """
    if not 0.0 < floor <= 1.0:
        raise ConfigError(f"floor must lie in (0, 1], got {floor!r}")
    parts = pooled_features(inputs, dtype=torch.float64)
    if fixed and len(fixed) != len(parts):
        raise ConfigError(f"got {len(fixed)} fixed weights for {len(parts)} inputs")
    margins = tuple(class_margin(p.cpu().numpy(), labels) for p in parts)
    best = max(margins)
    if not best > 0:
        raise ConfigError(f"no gallery input separates the training classes (class margins {margins}); check the "
                          "labels, or use fusion_weighting=fixed")
    scale = tuple(fixed) or (1.0,) * len(parts)
    weights = tuple(float(s * max(m / best, floor)) for s, m in zip(scale, margins))
    return weights, margins
