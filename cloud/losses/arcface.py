"""ArcFace (additive angular margin) logits, loss and a trainable head.

For an embedding ``x`` and class weights ``w_c`` the logit of class ``c`` is ``s * cos(theta_c)``,
except for the target class ``y`` where ``cos(theta_y)`` becomes ``cos(theta_y + m)``. When
``theta_y + m`` would pass ``pi`` the cosine stops being monotonic in ``theta``, so we use the usual
``easy_margin=False`` rule instead:

- ``cos(theta_y) > cos(pi - m)``: ``cos(theta_y + m)``;
- otherwise: ``cos(theta_y) - m * sin(pi - m)`` (a linear continuation that keeps penalising).

Cosines are clamped to ``[-1 + 1e-7, 1 - 1e-7]`` before ``sin``/``sqrt`` so gradients stay finite
even when an embedding coincides with a class weight. Everything is computed in float32, also under
autocast. The helpers ``_check_*`` are shared by the sibling loss modules.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.edge.errors import ConfigError, ShapeError

COS_EPS = 1e-7


@contextlib.contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    """Switch autocast off for ``device`` so the loss maths runs in float32."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _check_matrix(name: str, t: object, *, dim: int | None = None) -> torch.Tensor:
    """Return ``t`` if it is a non-empty 2-D floating tensor (with ``dim`` columns if given).

    Raises:
        ShapeError: not a tensor, not 2-D, empty, not floating point, or the wrong width.
    """
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"{name} must be a non-empty 2-D (rows, dim) tensor, got shape {tuple(t.shape)}; "
                         "reshape it to (rows, dim)")
    if not t.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {t.dtype}; cast it with .float()")
    if dim is not None and t.shape[1] != dim:
        raise ShapeError(f"{name} has dimension {t.shape[1]} but {dim} was expected; make the embedding "
                         "and the classifier/gallery features the same size")
    return t


def _check_labels(labels: object, *, batch: int, num_classes: int) -> torch.Tensor:
    """Return ``labels`` as int64 after checking shape ``(batch,)`` and range ``[0, num_classes)``.

    Raises:
        ShapeError: not a 1-D integer tensor of length ``batch``.
        ConfigError: a label is negative or ``>= num_classes``.
    """
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ShapeError("labels must be an integer torch.Tensor of shape (B,); build it with "
                         "torch.as_tensor(labels, dtype=torch.int64)")
    if labels.dtype == torch.bool or labels.ndim != 1 or labels.shape[0] != batch:
        raise ShapeError(f"labels must have shape ({batch},) and an integer dtype, got {tuple(labels.shape)} "
                         f"{labels.dtype}; pass one class index per embedding row")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}), got min {lo} max {hi}; "
                          "relabel the classes to 0..C-1 or build the classifier with more classes")
    return labels.long()


def _check_scale_margin(scale: float, margin: float) -> None:
    """Raises: ConfigError: ``scale <= 0`` or ``margin`` outside ``[0, pi)``."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"ArcFace scale must be a positive number, got {scale!r}; the paper uses 32")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < math.pi):
        raise ConfigError(f"ArcFace margin must lie in [0, pi), got {margin!r}; the paper uses 0.3")


def arcface_logits(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   scale: float = 32.0, margin: float = 0.3) -> torch.Tensor:
    """ArcFace logits.

    Args:
        x: ``(B, d)`` floating embeddings; L2-normalised here (callers usually pass unit-norm rows).
        weight: ``(C, d)`` floating class weights; rows L2-normalised here.
        labels: ``(B,)`` integer class indices in ``[0, C)``.
        scale: ``s``, multiplies every logit.
        margin: ``m`` in radians, added to the target angle (see the module docstring for the
            fallback when ``theta + m > pi``).

    Returns:
        ``(B, C)`` float32 logits ``s * cos(theta)``, with the target column replaced by
        ``s * cos(theta_y + m)`` (or its fallback). Gradients flow into ``x`` and ``weight``.

    Raises:
        ShapeError: wrong shapes or dtypes.
        ConfigError: labels out of range, ``scale <= 0`` or ``margin`` outside ``[0, pi)``.
    """
    _check_matrix("x", x)
    _check_matrix("weight", weight, dim=x.shape[1])
    labels = _check_labels(labels, batch=x.shape[0], num_classes=weight.shape[0])
    _check_scale_margin(scale, margin)
    with _fp32(x.device):
        xn = F.normalize(x.float(), dim=1)
        wn = F.normalize(weight.float(), dim=1)
        cos = (xn @ wn.t()).clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
        idx = labels.to(cos.device).unsqueeze(1)
        cos_y = cos.gather(1, idx)
        sin_y = torch.sqrt(1.0 - cos_y * cos_y)
        shifted = cos_y * math.cos(margin) - sin_y * math.sin(margin)
        fallback = cos_y - math.sin(math.pi - margin) * margin
        target = torch.where(cos_y > math.cos(math.pi - margin), shifted, fallback)
        return cos.scatter(1, idx, target) * scale


def arcface_loss(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                 scale: float = 32.0, margin: float = 0.3) -> torch.Tensor:
    """Mean cross-entropy of :func:`arcface_logits` against ``labels``.

    Returns:
        A float32 scalar tensor.

    Raises:
        ShapeError, ConfigError: as :func:`arcface_logits`.
    """
    logits = arcface_logits(x, weight, labels, scale=scale, margin=margin)
    with _fp32(logits.device):
        return F.cross_entropy(logits, labels.long().to(logits.device))


class ArcFaceHead(nn.Module):
    """A trainable ArcFace classifier: ``.weight`` is an ``(C, d)`` float32 ``nn.Parameter``.

    The weight starts as Gaussian rows scaled to unit norm, drawn from a private
    ``torch.Generator`` seeded with ``seed`` (the global RNG is untouched), so two heads built with
    the same arguments are identical.

    Raises:
        ConfigError: ``embed_dim`` or ``num_classes`` < 1, bad ``scale``/``margin``.
    """

    def __init__(self, *, embed_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.3,
                 seed: int = 0) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ArcFaceHead {name} must be a positive int, got {value!r}")
        _check_scale_margin(scale, margin)
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.scale, self.margin = float(scale), float(margin)
        gen = torch.Generator().manual_seed(int(seed))
        init = torch.randn(num_classes, embed_dim, generator=gen, dtype=torch.float32)
        self.weight = nn.Parameter(F.normalize(init, dim=1))

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float32 ArcFace logits of ``x`` ``(B, d)``; see :func:`arcface_logits`."""
        return arcface_logits(x, self.weight, labels, scale=self.scale, margin=self.margin)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar float32 ArcFace loss of ``x`` ``(B, d)`` against ``labels`` ``(B,)``.

        Raises:
            ShapeError, ConfigError: as :func:`arcface_logits`.
        """
        return arcface_loss(x, self.weight, labels, scale=self.scale, margin=self.margin)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, scale={self.scale}, margin={self.margin}"
