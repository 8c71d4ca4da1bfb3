"""A matching start for AMES: weights under which the untrained model already counts mutual matches.

A randomly initialised AMES attends uniformly at first (its query/key products are ~0.05), so its
matching token sees only set means, the BCE loss sits at ``ln 2`` and, with the few hundred steps
two CPU cores allow, never leaves it. This module writes a start into the *same* architecture (the
checkpoint layout does not change) under which the model computes a soft count of mutual nearest
neighbours, the classic untrained re-ranker (:mod:`asymfuse.cloud.ames.mutual_nn`), so that
training refines a re-ranker that already works, as the AFF side starts from closed-form maps.

Channels (``d = model_dim``, head width ``h = d / heads``): ``A = [0, k)`` the descriptor,
``B = [h, h + k)`` a copy slot, with ``k = min(h - 1, d - h - 4)``, and four reserved channels
``MARK+``, ``MARK-`` (the matching token's marker), ``SENSOR`` and ``COUNT``.

- ``remap_local``: its last linear layer projects onto the top ``k`` principal directions of its
  training inputs (unit descriptors, or the sign bits of a binary model), centred; its LayerNorm
  weight is 0 outside ``A``. The matching token is ``8 (e_MARK+ - e_MARK-)``, a fixed point of
  LayerNorm.
- block 0, across-image attention, head 0: every token attends the other image's tokens with
  logit ``sharpness * cos`` (the matching token is out of reach, logit -64) and adds its soft
  nearest neighbour's ``A`` into its ``B``.
- block 1, across-image attention: the same attention, reading the partners' ``B``, subtracts the
  soft neighbour of its neighbour from ``A``: ``A_i - NN(NN(i))`` is ~0 exactly when ``i`` is a
  mutual nearest neighbour. Its FFN erases ``B`` (``relu(B) - relu(-B)``) and writes a constant
  ``c = contrast * sqrt(d / 2)`` to ``SENSOR``. The next LayerNorm divides by the token's spread,
  so ``SENSOR`` becomes ``~ c / sqrt(|A_i - NN(NN(i))|^2 + c^2)`` (times ``sqrt(d)``): near
  ``sqrt(d)`` for a mutual match, small otherwise.
- block 2, within-image attention, head 0: the matching token keeps weight ``~1`` on itself (logit
  ``ln 1024``), so each image token adds ``SENSOR / 1024``: ``COUNT`` grows with the number of
  mutual matches of the pair, not their fraction.
- every other residual branch (attention output projections, the FFNs' second layers) is zero, so
  those blocks pass their input through (LayerNorm of a LayerNorm output is the identity).
- ``classifier``: a logit of about (mutual matches) / 4, the baseline's scale.

Zero residual branches train as in ReZero/SkipInit: their output projections receive gradients at
once, and the rest follows. Needs at least 3 blocks and 2 heads (the published model has 5 and 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.ames.model import AMES
from asymfuse.edge.errors import ConfigError, ShapeError

MARK = 8.0           # the matching token's marker value (a LayerNorm fixed point for 2 of d channels)
SINK = 1024.0        # block 2: exp(logit) of the matching token on itself; image tokens weigh ~1/SINK each
COUNT_GAIN = 8.0     # block 2: COUNT = COUNT_GAIN * sum of sensors / SINK
EXCLUDE = 8.0        # blocks 0-1: image tokens reach the matching token with logit -EXCLUDE**2
MAX_PCA_ROWS = 50_000


@dataclass(frozen=True)
class MatchStart:
    """Options of :func:`init_match_prior`.

    Attributes:
        sharpness: the across-image attention logit per unit of cosine similarity; larger = harder
            nearest-neighbour assignment.
        contrast: the sensor constant, in units of descriptor distance; smaller = a stricter mutual check.
        whiten: PCA whitening power of the descriptor channels (0 = plain PCA, 1 = full whitening).
    """

    sharpness: float = 50.0
    contrast: float = 0.05
    whiten: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sharpness", "contrast", "whiten"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"MatchStart.{name} must be a finite number, got {value!r}")
        if self.sharpness <= 0 or self.contrast <= 0:
            raise ConfigError(f"MatchStart.sharpness and contrast must be > 0, got {self.sharpness}, {self.contrast}")
        if not 0.0 <= self.whiten <= 1.0:
            raise ConfigError(f"MatchStart.whiten must lie in [0, 1], got {self.whiten}")


def _remap_inputs(model: AMES, descriptors: torch.Tensor) -> torch.Tensor:
    """What the last linear layer of ``remap_local`` sees: unit descriptors, or their sign bits."""
    x = F.normalize(descriptors.float(), dim=-1)
    if model.cfg.binary:
        binarize = model.remap_local[0]
        with torch.no_grad():
            return torch.where(x @ binarize.W.float() >= 0, 1.0, -1.0)
    return x


def _pca(x: torch.Tensor, *, components: int, whiten: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(components, n_in)`` projection rows and the ``(n_in,)`` mean of rows ``x`` ``(n, n_in)``."""
    x = x.double()
    mean = x.mean(dim=0)
    cov = (x - mean).T @ (x - mean) / max(x.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(1e-12), evecs[:, order]
    k = min(components, x.shape[1])
    rows = evecs[:, :k].T / evals[:k, None].pow(0.5 * whiten)
    out = torch.zeros(components, x.shape[1], dtype=torch.float64)
    out[:k] = rows / rows.norm(dim=1).max() if whiten else rows
    return out.float(), mean.float()


def _zero_residuals(model: AMES) -> None:
    for layer in model.decoder.layers:
        for mha in (layer.self_attn, layer.cross_attn):
            mha.out_proj.weight.zero_()
            mha.out_proj.bias.zero_()
        layer.linear2.weight.zero_()
        layer.linear2.bias.zero_()


def init_match_prior(model: AMES, descriptors: np.ndarray | torch.Tensor, *, start: MatchStart | None = None,
                     seed: int = 0) -> None:
    """Write the matching start (module docstring) into ``model`` in place.

    Args:
        model: a freshly built AMES (fp, or binary with its ITQ ``W`` already set).
        descriptors: ``(n, local_dim)`` float training descriptors (valid slots only).
        start: the options (default :class:`MatchStart`).
        seed: the row sample for the PCA when ``n`` exceeds 50,000.

    Raises:
        ShapeError: descriptors of another dimension, NaN/inf, or fewer than 2.
        ConfigError: fewer than 3 blocks, or a model too narrow for the channel layout.
    """
    start = start or MatchStart()
    cfg = model.cfg
    d, dh = cfg.model_dim, cfg.model_dim // cfg.heads
    if cfg.layers < 3:
        raise ConfigError(f"the matching start needs at least 3 blocks (neighbours, mutual check, count); this model "
                          f"has {cfg.layers}; use start='random'")
    if cfg.heads < 2 or dh < 8 or d < 2 * dh:
        raise ConfigError(f"the matching start needs >= 2 heads of >= 8 channels, got model_dim={d}, "
                          f"heads={cfg.heads}; use start='random'")
    x = torch.as_tensor(np.asarray(descriptors), dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != cfg.local_dim or x.shape[0] < 2:
        raise ShapeError(f"the matching start needs (n >= 2, {cfg.local_dim}) training descriptors, got "
                         f"{tuple(x.shape)}; pass the valid descriptors of the local feature the model is built for")
    if not torch.isfinite(x).all():
        raise ShapeError("training descriptors contain NaN/inf; re-extract the local feature")
    if x.shape[0] > MAX_PCA_ROWS:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:MAX_PCA_ROWS]]
    k = min(dh - 1, d - dh - 4)           # descriptor channels A = [0, k); copies B = [dh, dh + k)
    b0 = dh
    mark_p, mark_m, sensor, count = d - 4, d - 3, d - 2, d - 1
    excl = dh - 1                         # head-0 coordinate that keeps the matching token out of reach
    dev = model.mtc_token.device
    ia = torch.arange(k, device=dev)
    with torch.no_grad():
        rows, mean = _pca(_remap_inputs(model, x.to(dev)).cpu(), components=k, whiten=start.whiten)
        lin, norm = model.remap_local[-2], model.remap_local[-1]
        lin.weight.zero_()
        lin.weight[:k] = rows.to(dev)
        lin.bias.zero_()
        lin.bias[:k] = -(rows @ mean).to(dev)
        norm.weight.zero_()
        norm.weight[:k] = 1.0
        norm.bias.zero_()
        model.mtc_token.zero_()
        model.mtc_token[mark_p], model.mtc_token[mark_m] = MARK, -MARK
        _zero_residuals(model)

        # |A|^2 is about d after remap_local; after block 0 adds B (|B| ~ |A|) LayerNorm halves it.
        for i, (norm_a, value_src, value_dst, sign) in enumerate(((d, 0, b0, 1.0), (d / 2, b0, 0, -1.0))):
            cross = model.decoder.layers[i].cross_attn
            w, b = cross.in_proj_weight, cross.in_proj_bias
            w.zero_()
            b.zero_()
            a = math.sqrt(start.sharpness * math.sqrt(dh) / norm_a)  # logit = sharpness * <A_i, A_j> / |A|^2
            w[ia, ia] = a                                            # Q, head 0
            w[d + ia, ia] = a                                        # K, head 0
            b[excl] = EXCLUDE                                        # Q: every token ...
            w[d + excl, mark_p] = -EXCLUDE * math.sqrt(dh) / MARK          # ... K: only the matching token
            w[2 * d + ia, value_src + ia] = 1.0                      # V: A (block 0) or B (block 1)
            cross.out_proj.weight[value_dst + ia, ia] = sign         # B += NN(i); then A -= NN(NN(i))
        # block 1's FFN erases B (relu(B) - relu(-B) = B) and writes the sensor constant
        ffn = model.decoder.layers[1]
        nb = min(k, cfg.ffn_dim // 2)
        ib = torch.arange(nb, device=dev)
        ffn.linear1.weight.zero_()
        ffn.linear1.bias.zero_()
        ffn.linear1.weight[ib, b0 + ib] = 1.0
        ffn.linear1.weight[nb + ib, b0 + ib] = -1.0
        ffn.linear2.weight[b0 + ib, ib] = -1.0
        ffn.linear2.weight[b0 + ib, nb + ib] = 1.0
        ffn.linear2.bias[sensor] = start.contrast * math.sqrt(d / 2)
        # block 2, within-image attention, head 0: the matching token averages the sensor into COUNT
        within = model.decoder.layers[2].self_attn
        w, b = within.in_proj_weight, within.in_proj_bias
        w.zero_()
        b.zero_()
        g = math.sqrt(math.log(SINK) * math.sqrt(dh)) / MARK
        w[0, mark_p] = g                       # Q: only the matching token has a query ...
        w[d, mark_p] = g                       # ... and a key: it keeps weight SINK / (SINK + n) on itself
        w[2 * d, sensor] = 1.0                 # V: the sensor
        within.out_proj.weight[count, 0] = COUNT_GAIN
        # a mutual pair's sensors sum to ~2 sqrt(d): logit ~ (mutual pairs) / 4, as the mutual-NN baseline's
        model.classifier.weight.zero_()
        model.classifier.weight[0, count] = SINK / (COUNT_GAIN * 8.0 * math.sqrt(d))
        model.classifier.bias.zero_()


def calibrate_classifier(model: AMES, logits: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, *,
                         iterations: int = 50) -> tuple[float, float]:
    """Platt-scale the classifier so that ``a * logit + b`` fits ``targets`` by logistic regression.

    The matching start's logit is a count (always positive, ~5-15 on SIFT), so BCE on the first
    batches is large and its gradients reshape the whole network to move a single offset. Fitting the
    offset and scale on a sample of training pairs first lets training refine the matcher instead.
    Monotone for ``a > 0``: the model's ranking of candidates does not change.

    Args:
        logits: ``(n,)`` the model's logits on ``n >= 2`` training pairs.
        targets: ``(n,)`` their labels in {0, 1}, both classes present.

    Returns:
        ``(a, b)`` written into ``model.classifier`` (``a`` floored at 1e-3).

    Raises:
        ShapeError: shapes differ, NaN/inf logits, fewer than 2 pairs or one class only.
    """
    z = np.asarray(torch.as_tensor(logits).detach().cpu(), dtype=np.float64).reshape(-1)
    y = np.asarray(torch.as_tensor(targets).detach().cpu(), dtype=np.float64).reshape(-1)
    if z.shape != y.shape or z.size < 2:
        raise ShapeError(f"calibration needs (n >= 2,) logits and targets of one shape, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ShapeError("calibration logits contain NaN or inf; check the start's descriptors")
    if not (0 < y.sum() < y.size) or not np.isin(y, (0.0, 1.0)).all():
        raise ShapeError("calibration needs both positive and negative pairs (targets in {0, 1})")
    mu, sd = z.mean(), max(z.std(), 1e-6)
    u = (z - mu) / sd
    X = np.stack([u, np.ones_like(u)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):  # Newton steps of L2-regularised (1e-4) logistic regression
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) / y.size + 1e-4 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X / y.size + 1e-4 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    a = max(float(w[0] / sd), 1e-3)
    b = float(w[1] - a * mu)
    with torch.no_grad():
        model.classifier.weight.mul_(a)
        model.classifier.bias.mul_(a).add_(b)
    return a, b
