"""Generalised-mean (GeM) pooling, the query nets' and CNN gallery features' pooling."""

from __future__ import annotations

import torch
from torch import nn


def gem(x: torch.Tensor, p: torch.Tensor | float, *, eps: float = 1e-6,
        valid: torch.Tensor | None = None) -> torch.Tensor:
    """GeM over the spatial axes: ``(mean over positions of x^p)^(1/p)``.

    Args:
        x: ``(B, C, H, W)`` feature map (clamped to ``eps`` so fractional powers stay real).
        p: the power, a scalar tensor (learnable) or float; p = 1 is average pooling.
        valid: optional ``(B, H, W)`` bool, True where a position is real image (not padding);
            padded positions are left out of the mean.

    Returns:
        ``(B, C)`` pooled features (not normalised).
    """
    xp = x.clamp(min=eps).pow(p)
    if valid is None:
        pooled = xp.mean(dim=(-2, -1))
    else:
        w = valid.to(xp.dtype).unsqueeze(1)
        pooled = (xp * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1)).clamp(min=1.0)
    return pooled.clamp(min=eps).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learnable power ``p`` (initial value 3, as in AFF)."""

    def __init__(self, *, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C)``; see :func:`gem`."""
        return gem(x, self.p, eps=self.eps, valid=valid)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"
