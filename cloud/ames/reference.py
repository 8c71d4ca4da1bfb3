"""The straightforward AMES path: one pair at a time through ``nn.MultiheadAttention``.

This is the oracle that the batched path (:meth:`AMES.forward_tokens` and
:mod:`asymfuse.cloud.ames.scorer`) is tested and timed against. It drops padding slots before
building the token sequence, so it needs no key-padding mask, and uses the modules exactly as the
published code does (boolean ``attn_mask``, True = blocked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asymfuse.cloud.ames.model import AMES


def _blocked_masks(lq: int, lx: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, T)`` bool masks for ``nn.MultiheadAttention`` (True = blocked), T = 1 + lq + lx."""
    t = 1 + lq + lx
    within = torch.zeros(t, t, dtype=torch.bool, device=device)
    within[1:lq + 1, lq + 1:] = True
    within[lq + 1:, 1:lq + 1] = True
    across = torch.zeros(t, t, dtype=torch.bool, device=device)
    across[1:lq + 1, 1:lq + 1] = True
    across[lq + 1:, lq + 1:] = True
    return within, across


@torch.inference_mode()
def reference_logit(model: AMES, q_tok: torch.Tensor, x_tok: torch.Tensor) -> float:
    """Logit of one pair of *valid* projected tokens ``(Lq, d)`` and ``(Lx, d)`` (no padding)."""
    lq, lx = q_tok.shape[0], x_tok.shape[0]
    within, across = _blocked_masks(lq, lx, q_tok.device)
    x = torch.cat([model.mtc_token[None], q_tok, x_tok], dim=0)[None]  # (1, T, d)
    act = F.relu if model.cfg.activation == "relu" else F.gelu
    for layer in model.decoder.layers:
        x = layer.norm1(x + layer.self_attn(x, x, x, attn_mask=within, need_weights=False)[0])
        x = layer.norm2(x + layer.cross_attn(x, x, x, attn_mask=across, need_weights=False)[0])
        x = layer.norm3(x + layer.linear2(act(layer.linear1(x))))
    return float(model.classifier(x[0, 0]))


@torch.inference_mode()
def reference_scores(model: AMES, q_desc: torch.Tensor, q_pad: torch.Tensor, x_desc: torch.Tensor,
                     x_pad: torch.Tensor) -> torch.Tensor:
    """Logits ``(B,)`` of ``B`` gallery items against one query, one pair at a time.

    Args:
        q_desc: ``(Lq, local_dim)``; q_pad: ``(Lq,)`` bool, True = padding.
        x_desc: ``(B, Lx, local_dim)``; x_pad: ``(B, Lx)`` bool.
    """
    q_valid = q_desc[~q_pad][None]
    q_tok = model.project(q_valid, torch.zeros(q_valid.shape[:2], dtype=torch.bool), gallery=False)[0]
    out = []
    for i in range(x_desc.shape[0]):
        x_valid = x_desc[i][~x_pad[i]][None]
        x_tok = model.project(x_valid, torch.zeros(x_valid.shape[:2], dtype=torch.bool), gallery=True)[0]
        out.append(reference_logit(model, q_tok, x_tok))
    return torch.tensor(out)
