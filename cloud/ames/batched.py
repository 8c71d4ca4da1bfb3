"""One batched AMES forward for one query against all its candidates, with swappable linear layers.

:class:`PreparedAMES` is a serving copy of an :class:`~asymfuse.cloud.ames.model.AMES`: the
attention projections become plain ``nn.Linear`` modules (``self_qkv``, ``self_out``,
``cross_qkv``, ``cross_out``; the last block has ``cross_q`` / ``cross_kv`` instead), so that
``torch.ao.quantization.quantize_dynamic`` can turn every one of them into an int8 layer
(:func:`prepare_ames` with ``weights="int8"``). The source model is not modified.

The forward is the block forward of :mod:`asymfuse.cloud.ames.block_forward` (tokens ``[q; t; x]``,
each attention as three ``scaled_dot_product_attention`` calls on contiguous key slices, the last
block's second half for the matching token only), without the per-query layer-1 shortcut, so one
call scores a whole padded batch of candidates: on a GPU, one call per query instead of one per
bucket and chunk.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.ames.model import AMES, AMESDecoderLayer
from asymfuse.cloud.ames.block_forward import KeyMasks, _heads, _key_masks, _merge, block_sdpa
from asymfuse.edge.errors import ConfigError

WEIGHTS = ("fp32", "int8")


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


class _Block(nn.Module):
    """One decoder block with split linear layers (weights copied from an ``AMESDecoderLayer``)."""

    def __init__(self, layer: AMESDecoderLayer, *, last: bool) -> None:
        super().__init__()
        sa, ca = layer.self_attn, layer.cross_attn
        d = sa.embed_dim
        self.heads = sa.num_heads
        self.self_qkv = _linear(sa.in_proj_weight, sa.in_proj_bias)
        self.self_out = _linear(sa.out_proj.weight, sa.out_proj.bias)
        if last:  # the matching token's query only; keys and values of every row
            self.cross_q = _linear(ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            self.cross_kv = _linear(ca.in_proj_weight[d:], ca.in_proj_bias[d:])
        else:
            self.cross_qkv = _linear(ca.in_proj_weight, ca.in_proj_bias)
        self.cross_out = _linear(ca.out_proj.weight, ca.out_proj.bias)
        self.ffn1 = _linear(layer.linear1.weight, layer.linear1.bias)
        self.ffn2 = _linear(layer.linear2.weight, layer.linear2.bias)
        self.norm1, self.norm2, self.norm3 = (copy.deepcopy(n) for n in (layer.norm1, layer.norm2, layer.norm3))
        self.gelu = layer.activation == "gelu"
        self.last = last

    def attend(self, x: torch.Tensor, lq: int, masks: KeyMasks, *, within: bool) -> torch.Tensor:
        """Within- or across-image attention of ``[q; t; x]`` ``(B, T, d)`` -> ``(B, T, d)``."""
        qkv, out = (self.self_qkv, self.self_out) if within else (self.cross_qkv, self.cross_out)
        q, k, v = _heads(qkv(x), 3, self.heads)
        return out(block_sdpa(q, k, v, lq, masks, within=within))

    def ffn(self, tok: torch.Tensor) -> torch.Tensor:
        hidden = self.ffn1(tok)
        hidden = F.gelu(hidden) if self.gelu else F.relu(hidden, inplace=not torch.is_grad_enabled())
        return self.norm3(tok + self.ffn2(hidden))

    def last_across(self, tok: torch.Tensor, lq: int, masks: KeyMasks) -> torch.Tensor:
        """Across-image attention and FFN of the matching token only -> ``(B, 1, d)``."""
        k, v = _heads(self.cross_kv(tok), 2, self.heads)
        row = tok[:, lq:lq + 1]
        q = _heads(self.cross_q(row), 1, self.heads)[0]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[2])
        return self.ffn(self.norm2(row + self.cross_out(_merge([out]))))


class PreparedAMES(nn.Module):
    """A serving copy of an AMES model for :meth:`forward` (see the module docstring).

    Build with :func:`prepare_ames`. ``weights`` is ``"fp32"`` or ``"int8"`` (dynamic int8
    linear layers, CPU only).
    """

    def __init__(self, model: AMES) -> None:
        super().__init__()
        layers = list(model.decoder.layers)
        self.blocks = nn.ModuleList(_Block(layer, last=i == len(layers) - 1)  # type: ignore[arg-type]
                                    for i, layer in enumerate(layers))
        self.mtc_token = nn.Parameter(model.mtc_token.detach().clone(), requires_grad=False)
        self.classifier = _linear(model.classifier.weight, model.classifier.bias)
        self.weights = "fp32"

    def forward(self, q_tok: torch.Tensor, q_pad: torch.Tensor, x_tok: torch.Tensor,
                x_pad: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` of projected query tokens ``q_tok`` ``(1 or B, Lq, d)``, ``q_pad``
        ``(1 or B, Lq)`` bool (True = padding) against ``x_tok`` ``(B, Lx, d)``, ``x_pad``
        ``(B, Lx)`` bool; ``Lq, Lx >= 1``; padding slots of ``x_tok`` should hold zeros."""
        b, _, d = x_tok.shape
        lq = q_tok.shape[1]
        q_tok, q_pad = q_tok.expand(b, -1, -1), q_pad.expand(b, -1)
        tok = torch.cat([q_tok, self.mtc_token.to(x_tok.dtype).expand(b, 1, d), x_tok], dim=1)
        masks = _key_masks(q_pad, x_pad)
        blocks: list[_Block] = list(self.blocks)  # type: ignore[arg-type]
        for block in blocks:
            tok = block.norm1(tok + block.attend(tok, lq, masks, within=True))
            if not block.last:
                tok = block.norm2(tok + block.attend(tok, lq, masks, within=False))
                tok = block.ffn(tok)
        return self.classifier(blocks[-1].last_across(tok, lq, masks)).reshape(-1)


def _linear_names(prepared: PreparedAMES) -> set[str]:
    """The names of the blocks' linear layers (the classifier stays float: one output)."""
    return {name for name, m in prepared.blocks.named_modules() if isinstance(m, nn.Linear)}


def prepare_ames(model: AMES, *, weights: str = "fp32", device: str | torch.device = "cpu") -> PreparedAMES:
    """A :class:`PreparedAMES` of ``model`` on ``device``, in eval mode (``model`` is untouched).

    Args:
        weights: ``"fp32"``, or ``"int8"``: every linear layer of the blocks as a dynamically
            quantized int8 layer (``quantize_dynamic``, per-tensor activations, per-channel weights).

    Raises:
        ConfigError: not an AMES, an unknown ``weights``, or int8 on a non-CPU device.
    """
    if not isinstance(model, AMES):
        raise ConfigError(f"prepare_ames needs an AMES model, got {type(model).__name__}")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights {weights!r} is unknown; choose one of {list(WEIGHTS)}")
    dev = torch.device(device)
    if weights == "int8" and dev.type != "cpu":
        raise ConfigError(f"int8 dynamic quantization runs on CPU only, not {dev}; use kind 'bf16' on a GPU")
    with torch.no_grad():
        prepared = PreparedAMES(model).float().eval()
    if weights == "int8":
        prepared = _quantize(prepared)
        prepared.weights = "int8"
    return prepared.to(dev)


def _quantize(prepared: PreparedAMES) -> PreparedAMES:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {f"blocks.{name}": per_channel_dynamic_qconfig for name in _linear_names(prepared)}
    with warnings.catch_warnings():  # torch.ao's deprecation notices; the API is what this torch offers
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(prepared, spec, dtype=torch.qint8, inplace=True)
