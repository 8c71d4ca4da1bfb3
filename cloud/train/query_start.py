"""Closed-form start of a query net's whitening head: ridge regression onto the gallery space.

A query net is ``trunk -> GeM -> whitening Linear -> L2``. Drawn at random, the whitening layer
maps the trunk's pooled output to an arbitrary direction, and the compatibility loss must learn
the whole map to the gallery space from a few hundred labelled images; on small training sets it
never does. This module fits that layer in closed form before any gradient step:

    W, b = argmin_W,b  sum_i || GeM(trunk(v_i)) W + b - t(v_i) ||^2 + lam ||W||^2

over the training images and their crop views (:mod:`asymfuse.cloud.train.start_views`), each
with the target ``t`` the gallery vector *of the same pixels* (the mixer's output, or one frozen
gallery feature). Targeting a crop at its whole image's vector instead fits worse (measured on the
embedded benchmark, Lite0@224 into AFF(gem_lite1 + sift): 48.3 against 50.6 mAP-M asymmetric). The
ridge ``lam`` is relative: ``ridge * trace(X_c^T X_c) / C`` for centred features ``X_c`` of width
``C``; the inputs are :meth:`QueryNet.pooled` (unit-norm with ``gem_l2``). It is solved in float64
on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.models.query_net import QueryNet
from asymfuse.cloud.train.pooled_cache import cached_pooled
from asymfuse.edge.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class HeadFit:
    """What :func:`fit_query_head` did: ``rows`` = the images it fitted on, ``ridge`` the
    relative regulariser, ``train_cosine`` the mean cosine between fitted outputs and targets."""

    rows: int
    ridge: float
    train_cosine: float


def ridge_map(x: np.ndarray, y: np.ndarray, *, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge regression with an unregularised bias.

    Args:
        x: ``(n, C)`` inputs. y: ``(n, d)`` targets. ridge: relative regulariser (> 0).

    Returns:
        ``W`` ``(C, d)`` and ``b`` ``(d,)``, float64, minimising ``||x W + b - y||^2 + lam ||W||^2``
        with ``lam = ridge * trace(x_c^T x_c) / C``.

    Raises:
        ShapeError: mismatched rows, or NaN/inf. ConfigError: ``ridge <= 0``.
    """
    if not ridge > 0:
        raise ConfigError(f"ridge must be > 0, got {ridge!r}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ShapeError(f"ridge_map needs x (n, C) and y (n, d) with the same n >= 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ShapeError("ridge_map inputs hold NaN or inf")
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(float(np.trace(gram)) / x.shape[1], 1e-12)
    w = np.linalg.solve(gram + lam * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


def fit_query_head(query_net: QueryNet, *, sources: Sequence[tuple[TrainingSet, np.ndarray]], ridge: float = 10.0,
                   preload_side: int = 0, device: str | torch.device = "cpu",
                   cache_dir: str | os.PathLike[str] | None = None) -> HeadFit:
    """Set ``query_net.whiten`` to the ridge map from its pooled trunk output to gallery vectors.

    Args:
        query_net: the net to start (its trunk, GeM and spec are used; only ``whiten`` changes).
        sources: ``(images, targets)`` pairs: ``n`` labelled images (embedded whole, with the spec's
            reference preprocessing) and ``(n, embed_dim)`` float targets, the gallery vector of
            *the same pixels* (the training images, then the crop views of
            :mod:`asymfuse.cloud.train.start_views` with their own gallery vectors).
        ridge: relative ridge regulariser (see the module docstring).
        preload_side: as :class:`asymfuse.cloud.train.aff_data.AFFImageDataset`.
        device: where the trunk runs (the net must live there).
        cache_dir: where the pooled trunk outputs are cached (:mod:`asymfuse.cloud.train.pooled_cache`);
            None computes them without caching.

    Returns:
        A :class:`HeadFit` summary.

    Raises:
        ShapeError: targets that are not ``(n, embed_dim)`` or hold NaN/inf.
        ConfigError: no source.
    """
    if not sources:
        raise ConfigError("fit_query_head needs at least one (images, targets) source")
    d, dev = query_net.embed_dim, torch.device(device)
    xs, ys = [], []
    for images, targets in sources:
        t = np.asarray(targets, dtype=np.float64)
        if t.shape != (len(images), d):
            raise ShapeError(f"targets must be (n={len(images)}, embed_dim={d}), one gallery vector per image of "
                             f"{images.name!r}, got {t.shape}")
        xs.append(cached_pooled(query_net, images, cache_dir=cache_dir, preload_side=preload_side, device=dev))
        ys.append(t)
    return fit_head(query_net, x=np.concatenate(xs), y=np.concatenate(ys), ridge=ridge)


def fit_head(query_net: QueryNet, *, x: np.ndarray, y: np.ndarray, ridge: float) -> HeadFit:
    """Set ``query_net.whiten`` to :func:`ridge_map` from pooled rows ``x`` ``(n, C)`` to targets ``y``
    ``(n, embed_dim)``.

    Raises:
        ShapeError: mismatched rows or widths, NaN/inf. ConfigError: ``ridge <= 0``.
    """
    if x.ndim != 2 or x.shape[1] != query_net.whiten.in_features:
        raise ShapeError(f"pooled rows must be (n, {query_net.whiten.in_features}), got {x.shape}")
    w, b = ridge_map(x, y, ridge=ridge)
    fitted = x @ w + b
    cos = np.sum(fitted * y, axis=1) / np.maximum(np.linalg.norm(fitted, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
    with torch.no_grad():
        query_net.whiten.weight.copy_(torch.from_numpy(w.T).to(query_net.whiten.weight))
        query_net.whiten.bias.copy_(torch.from_numpy(b).to(query_net.whiten.bias))
    return HeadFit(rows=int(x.shape[0]), ridge=float(ridge), train_cosine=float(cos.mean()))
