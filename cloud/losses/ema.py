"""The momentum classifier psi_q of AFF: an ArcFace head that is never trained by back-propagation.

Its weight follows the fused-gallery classifier psi_mix as an exponential moving average,
``w <- alpha * w + (1 - alpha) * w_mix`` (paper: alpha = 0.99; alpha = 0 copies psi_mix every step).
The weight is a persistent buffer, so it is saved in ``state_dict`` and moved by ``.to()``, but no
optimiser ever sees it.
"""

from __future__ import annotations

import torch
from torch import nn

from asymfuse.cloud.losses.arcface import _check_matrix, _check_scale_margin, arcface_logits, arcface_loss
from asymfuse.edge.errors import ConfigError, ShapeError


class EMAClassifier(nn.Module):
    """ArcFace classifier whose ``(C, d)`` float32 ``.weight`` buffer tracks a source classifier.

    Args:
        source: ``(C, d)`` floating weights to start from (copied and detached; rows need not be
            unit-norm, ArcFace normalises them).
        alpha: momentum in ``[0, 1]``; ``.alpha`` keeps it.
        scale, margin: ArcFace ``s`` and ``m``.

    Raises:
        ShapeError: ``source`` is not a non-empty 2-D floating tensor.
        ConfigError: ``alpha`` outside ``[0, 1]``, bad ``scale``/``margin``.
    """

    weight: torch.Tensor

    def __init__(self, *, source: torch.Tensor, alpha: float, scale: float = 32.0, margin: float = 0.3) -> None:
        super().__init__()
        _check_matrix("source", source)
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
            raise ConfigError(f"EMA momentum alpha must lie in [0, 1], got {alpha!r}; the paper uses 0.99")
        _check_scale_margin(scale, margin)
        self.alpha = float(alpha)
        self.scale, self.margin = float(scale), float(margin)
        self.register_buffer("weight", source.detach().to(torch.float32).clone(), persistent=True)

    @torch.no_grad()
    def update(self, source_weight: torch.Tensor) -> None:
        """One momentum step: ``w <- alpha * w + (1 - alpha) * source_weight`` (in place, no grad).

        ``source_weight`` ``(C, d)`` is cast to the buffer's dtype and device. With ``alpha == 0``
        the buffer becomes an exact copy of ``source_weight``.

        Raises:
            ShapeError: ``source_weight`` does not have the buffer's shape ``(C, d)``.
        """
        _check_matrix("source_weight", source_weight)
        if tuple(source_weight.shape) != tuple(self.weight.shape):
            raise ShapeError(f"source_weight has shape {tuple(source_weight.shape)} but the EMA classifier "
                             f"holds {tuple(self.weight.shape)}; pass the weight of the classifier it tracks")
        src = source_weight.detach().to(device=self.weight.device, dtype=self.weight.dtype)
        if self.alpha == 0.0:
            self.weight.copy_(src)
            return
        self.weight.copy_(self.weight * self.alpha + src * (1.0 - self.alpha))

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float32 ArcFace logits of ``x`` ``(B, d)`` against the buffer."""
        return arcface_logits(x, self.weight, labels, scale=self.scale, margin=self.margin)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar float32 ArcFace loss of ``x`` ``(B, d)``; the gradient flows into ``x`` only.

        Raises:
            ShapeError, ConfigError: as :func:`~asymfuse.cloud.losses.arcface.arcface_logits`.
        """
        return arcface_loss(x, self.weight, labels, scale=self.scale, margin=self.margin)

    def extra_repr(self) -> str:
        c, d = self.weight.shape
        return f"num_classes={c}, dim={d}, alpha={self.alpha}, scale={self.scale}, margin={self.margin}"
