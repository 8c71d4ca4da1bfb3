"""The AMES forward pass by attention blocks, used by the scorers.

The forward pass (:func:`block_logits`) computes what :meth:`AMES.forward_tokens` computes, with
less work:

1. **Attention by blocks.** With the tokens ordered ``[q_1..q_Lq; t; x_1..x_Lx]``, every key set
   AMES allows is one contiguous slice:

   ============  =====================  ======================
   rows          within-image keys      across-image keys
   ============  =====================  ======================
   query         ``[q; t]``             ``[t; x]``
   matching t    all                    all
   gallery       ``[t; x]``             ``[q; t]``
   ============  =====================  ======================

   so each attention is three ``scaled_dot_product_attention`` calls on slices with a boolean
   key-padding mask ``(B, 1, 1, K)`` (None when nothing is padded): the blocked part of the
   ``T x T`` scores is never computed and no ``(B, 1, T, T)`` mask is built.
2. **The query's layer-1 self-attention once.** In the first within-image attention the query
   rows see only ``[q; t]`` with ``t`` still the learnt token, so that part is the same for every
   candidate (:class:`QueryState`, computed once per query).
3. **Only the matching token in the last block's second half.** The classifier reads ``t`` alone,
   so the last across-image attention and FFN run for that one row.

The logits equal :func:`asymfuse.cloud.ames.reference.reference_scores` up to float rounding (the
tests hold them to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.ames.model import AMES, AMESDecoderLayer

KeyMasks = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def _key_masks(q_pad: torch.Tensor, x_pad: torch.Tensor) -> KeyMasks:
    """Boolean keep-masks ``(B, 1, 1, K)`` (True = may attend) for keys ``[q; t]``, ``[t; x]``
    and ``[q; t; x]``; None where no key in the slice is padding."""
    q_any, x_any = bool(q_pad.any()), bool(x_pad.any())
    one = torch.ones(x_pad.shape[0], 1, dtype=torch.bool, device=x_pad.device)
    qt = torch.cat([~q_pad, one], dim=1)[:, None, None] if q_any else None
    tx = torch.cat([one, ~x_pad], dim=1)[:, None, None] if x_any else None
    every = torch.cat([~q_pad, one, ~x_pad], dim=1)[:, None, None] if q_any or x_any else None
    return qt, tx, every


def _layers(model: AMES) -> list[AMESDecoderLayer]:
    return list(model.decoder.layers)  # type: ignore[arg-type]


def _heads(x: torch.Tensor, parts: int, h: int) -> torch.Tensor:
    """``(B, T, parts * d)`` projections -> ``(parts, B, h, T, d / h)`` (a view)."""
    b, t, width = x.shape
    return x.view(b, t, parts, h, width // (parts * h)).permute(2, 0, 3, 1, 4)


def _merge(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention outputs ``(B, h, T_i, d / h)`` -> ``(B, sum T_i, d)``, rows in the given order."""
    b, h, _, dh = outs[0].shape
    return torch.cat([o.transpose(1, 2) for o in outs], dim=1).reshape(b, -1, h * dh)


def _block_attend(mha: nn.MultiheadAttention, x: torch.Tensor, lq: int, masks: KeyMasks, *,
                  within: bool) -> torch.Tensor:
    """Within- or across-image attention of tokens ``[q; t; x]`` ``(B, T, d)`` with ``mha``'s weights."""
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    return mha.out_proj(block_sdpa(q, k, v, lq, masks, within=within))


def block_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lq: int, masks: KeyMasks, *,
               within: bool) -> torch.Tensor:
    """The three SDPA calls of one block attention (module docstring, point 1): heads ``(B, h, T, d / h)``
    of tokens ``[q; t; x]`` -> merged outputs ``(B, T, d)`` before the output projection."""
    t = q.shape[2]
    m_qt, m_tx, m_all = masks
    qt, tx = slice(0, lq + 1), slice(lq, t)
    q_keys, x_keys, q_mask, x_mask = (qt, tx, m_qt, m_tx) if within else (tx, qt, m_tx, m_qt)
    sdpa = F.scaled_dot_product_attention
    o_q = sdpa(q[:, :, :lq], k[:, :, q_keys], v[:, :, q_keys], attn_mask=q_mask)
    o_t = sdpa(q[:, :, lq:lq + 1], k, v, attn_mask=m_all)
    o_x = sdpa(q[:, :, lq + 1:], k[:, :, x_keys], v[:, :, x_keys], attn_mask=x_mask)
    return _merge([o_q, o_t, o_x])


def _ffn(layer: AMESDecoderLayer, tok: torch.Tensor, *, gelu: bool) -> torch.Tensor:
    hidden = layer.linear1(tok)
    hidden = F.gelu(hidden) if gelu else F.relu(hidden, inplace=not torch.is_grad_enabled())
    return layer.norm3(tok + layer.linear2(hidden))


@dataclass(frozen=True)
class QueryState:
    """What layer 1 computes for the query rows before they meet any gallery token.

    In the first within-image attention the query rows see only ``[q; t]`` and ``t`` is still the
    learnt ``mtc_token``, so that sublayer's query output is the same for every candidate; it is
    computed once per query (:func:`query_state`) and shared by all its pairs.

    Attributes:
        tokens: ``(n, Lq, d)`` query rows after the first within-image sublayer (post norm1).
        k, v: ``(n, heads, Lq, d / heads)`` the query rows' keys and values in that sublayer.
        pad: ``(n, Lq)`` bool, True = padding.
    """

    tokens: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pad: torch.Tensor

    def take(self, rows: torch.Tensor, length: int) -> QueryState:
        """Rows ``rows`` (indices), first ``length`` slots."""
        return QueryState(self.tokens[rows, :length], self.k[rows, :, :length], self.v[rows, :, :length],
                          self.pad[rows, :length])

    def expand(self, b: int) -> QueryState:
        """A batch of 1 broadcast to ``b`` (a view)."""
        if self.tokens.shape[0] == b:
            return self
        return QueryState(self.tokens.expand(b, -1, -1), self.k.expand(b, -1, -1, -1), self.v.expand(b, -1, -1, -1),
                          self.pad.expand(b, -1))


def query_state(model: AMES, q_tok: torch.Tensor, q_pad: torch.Tensor) -> QueryState:
    """Layer-1 within-image attention of the query rows: ``q_tok`` ``(n, Lq, d)``, ``q_pad`` ``(n, Lq)``."""
    layer = _layers(model)[0]
    mha = layer.self_attn
    n, lq, d = q_tok.shape
    x = torch.cat([q_tok, model.mtc_token.to(q_tok.dtype).expand(n, 1, d)], dim=1)
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    one = torch.ones(n, 1, dtype=torch.bool, device=q_pad.device)
    mask = torch.cat([~q_pad, one], dim=1)[:, None, None] if bool(q_pad.any()) else None
    out = F.scaled_dot_product_attention(q[:, :, :lq], k, v, attn_mask=mask)
    tokens = layer.norm1(q_tok + mha.out_proj(_merge([out])))
    return QueryState(tokens, k[:, :, :lq], v[:, :, :lq], q_pad)


def _first_within_gallery(model: AMES, state: QueryState, x_tok: torch.Tensor, masks: KeyMasks) -> torch.Tensor:
    """Layer-1 within-image attention of rows ``[t; x]`` -> ``(B, 1 + Lx, d)`` after norm1."""
    layer = _layers(model)[0]
    mha = layer.self_attn
    b, _, d = x_tok.shape
    x = torch.cat([model.mtc_token.to(x_tok.dtype).expand(b, 1, d), x_tok], dim=1)
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    _, m_tx, m_all = masks
    o_t = F.scaled_dot_product_attention(q[:, :, :1], torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2),
                                         attn_mask=m_all)
    o_x = F.scaled_dot_product_attention(q[:, :, 1:], k, v, attn_mask=m_tx)
    return layer.norm1(x + mha.out_proj(_merge([o_t, o_x])))


def _last_across(layer: AMESDecoderLayer, tok: torch.Tensor, lq: int, masks: KeyMasks, *,
                 gelu: bool) -> torch.Tensor:
    """The last block after its within-image sublayer, for the matching token only (the classifier
    reads nothing else): its across-image attention over all keys, then the FFN. -> ``(B, 1, d)``."""
    mha = layer.cross_attn
    d = tok.shape[2]
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    k, v = _heads(F.linear(tok, w[d:], bias[d:]), 2, mha.num_heads)
    row = tok[:, lq:lq + 1]
    q = _heads(F.linear(row, w[:d], bias[:d]), 1, mha.num_heads)[0]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[2])
    row = layer.norm2(row + mha.out_proj(_merge([out])))
    return _ffn(layer, row, gelu=gelu)


def logits_from_state(model: AMES, state: QueryState, x_tok: torch.Tensor, x_pad: torch.Tensor) -> torch.Tensor:
    """Logits ``(B,)`` of a :class:`QueryState` (batch ``B`` or 1) against ``x_tok`` ``(B, Lx, d)``,
    ``x_pad`` ``(B, Lx)`` bool: the rest of layer 1, then layers 2..N, by blocks; the last block's
    across-image attention and FFN run for the matching token only."""
    b = x_tok.shape[0]
    state = state.expand(b)
    lq = state.tokens.shape[1]
    masks = _key_masks(state.pad, x_pad)
    gelu = model.cfg.activation == "gelu"
    layers = _layers(model)
    tok = torch.cat([state.tokens, _first_within_gallery(model, state, x_tok, masks)], dim=1)
    for i, layer in enumerate(layers):
        if i:
            tok = layer.norm1(tok + _block_attend(layer.self_attn, tok, lq, masks, within=True))
        if i < len(layers) - 1:
            tok = layer.norm2(tok + _block_attend(layer.cross_attn, tok, lq, masks, within=False))
            tok = _ffn(layer, tok, gelu=gelu)
    return model.classifier(_last_across(layers[-1], tok, lq, masks, gelu=gelu)).view(-1)


def block_logits(model: AMES, q_tok: torch.Tensor, q_pad: torch.Tensor, x_tok: torch.Tensor,
                 x_pad: torch.Tensor) -> torch.Tensor:
    """Logits of ``B`` pairs of projected tokens, attention split by blocks (module docstring).

    Same inputs and result as :meth:`AMES.forward_tokens`: ``q_tok`` ``(B or 1, Lq, d)``,
    ``q_pad`` ``(B or 1, Lq)`` bool (True = padding), ``x_tok`` ``(B, Lx, d)``, ``x_pad``
    ``(B, Lx)`` bool, with ``Lq, Lx >= 1``; returns logits ``(B,)``. A query batch of 1 runs its
    gallery-independent part of layer 1 once. Differentiable; the scorer runs it under
    ``torch.inference_mode``.
    """
    return logits_from_state(model, query_state(model, q_tok, q_pad), x_tok, x_pad)
