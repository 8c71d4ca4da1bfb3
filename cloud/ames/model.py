"""AMES (Suma et al., ECCV 2024): a transformer that scores a query/gallery pair of local sets.

Tokens are ``[t; q_1..q_Lq; x_1..x_Lx]`` (``t`` the matching token, no positional embedding).
Each of the N post-LN decoder blocks runs

1. *within-image* attention (query tokens see ``t`` and query tokens, gallery tokens see ``t``
   and gallery tokens; ``t`` sees everything),
2. *across-image* attention (query tokens see ``t`` and gallery tokens, gallery tokens see ``t``
   and query tokens; ``t`` sees everything),
3. an FFN ``dim -> ffn_dim -> dim``,

each followed by residual + LayerNorm. The logit is ``classifier(t_N)``.

Parameter names and shapes are those of the published checkpoints (``mtc_token``,
``remap_local.*``, ``decoder.layers.{i}.{self_attn,cross_attn,linear1,linear2,norm1,norm2,norm3}``,
``classifier``), so ``load_state_dict(strict=True)`` takes them unchanged. The attention modules
are ``nn.MultiheadAttention`` (their parameters are the official ones); the batched forward here
calls ``scaled_dot_product_attention`` with their weights, and
:mod:`asymfuse.cloud.ames.reference` runs the modules themselves, one pair at a time, as the oracle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.edge.errors import ConfigError, ShapeError

ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class AMESConfig:
    """Architecture of one AMES model (defaults: the published config).

    ``binary``: the gallery side is stored as ``model_dim`` sign bits per descriptor
    (projection ``sign(normalize(x) W)`` with ``W`` of shape ``(local_dim, model_dim)``), followed
    by ``Linear(model_dim, model_dim)`` and LayerNorm. Otherwise the projection is
    ``Linear(local_dim, model_dim)`` then LayerNorm.
    """

    local_dim: int
    binary: bool = False
    model_dim: int = 128
    heads: int = 2
    layers: int = 5
    ffn_dim: int = 1024
    activation: str = "relu"
    sigma: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("local_dim", "model_dim", "heads", "layers", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"AMESConfig.{name} must be a positive int, got {value!r}")
        if self.model_dim % self.heads:
            raise ConfigError(f"model_dim={self.model_dim} must be divisible by heads={self.heads}")
        if self.binary and self.model_dim % 8:
            raise ConfigError(f"a binary AMES packs model_dim bits into bytes; model_dim={self.model_dim} "
                              "must be a multiple of 8 (the published value is 128)")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {list(ACTIVATIONS)}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {self.sigma}")

    @property
    def variant(self) -> str:
        """``"binary"`` or ``"fp"``."""
        return "binary" if self.binary else "fp"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AMESConfig:
        """Raises: ConfigError: unknown keys (the message lists the valid ones)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown AMESConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)


class Binarize(nn.Module):
    """``x -> sign(x W)`` (eval) or ``erf(x W / sqrt(2 sigma))`` (training); ``W``: ``(d_in, bits)``.

    Sign convention: ``x W >= 0`` maps to +1 and to bit 1 in packed form
    (:func:`asymfuse.cloud.ames.binary.pack_signs`).
    """

    def __init__(self, d_in: int, bits: int, *, sigma: float = 1e-6) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_in, bits))
        nn.init.orthogonal_(self.W)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.W
        if self.training:
            return torch.erf(z / math.sqrt(2.0 * self.sigma))
        return signs_of(z)

    def bits(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in)`` unit-norm -> ``(..., bits)`` bool (True = +1)."""
        return (x @ self.W) >= 0


def signs_of(z: torch.Tensor) -> torch.Tensor:
    """+1 where ``z >= 0``, else -1 (no zeros, unlike ``torch.sign``)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class AMESDecoderLayer(nn.Module):
    """One post-LN block: within-image attention, across-image attention, FFN."""

    def __init__(self, cfg: AMESConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.heads, dropout=0.0, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, cfg.heads, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.activation = cfg.activation

    def forward(self, x: torch.Tensor, *, within: torch.Tensor, across: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T, d)``; masks: bool, broadcastable to ``(B, 1, T, T)``, True = may attend."""
        x = self.norm1(x + attend(self.self_attn, x, within))
        x = self.norm2(x + attend(self.cross_attn, x, across))
        act = F.relu if self.activation == "relu" else F.gelu
        return self.norm3(x + self.linear2(act(self.linear1(x))))


def attend(mha: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Self-attention of ``x`` ``(B, T, d)`` with ``mha``'s weights through ``scaled_dot_product_attention``.

    ``allowed``: bool ``(B or 1, 1, T, T)``, True where a query position may attend a key.
    Every row must allow at least one key (the matching token guarantees it).
    """
    b, t, d = x.shape
    h = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # (B, T, 3d)
    q, k, v = qkv.view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, T, d/h)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return mha.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _Decoder(nn.Module):
    def __init__(self, cfg: AMESConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AMESDecoderLayer(cfg) for _ in range(cfg.layers))


def pair_masks(q_pad: torch.Tensor, x_pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention masks for tokens ``[t; q; x]``.

    Args:
        q_pad: ``(B, Lq)`` bool, True = padding slot. x_pad: ``(B, Lx)`` bool, likewise.

    Returns:
        ``(within, across)``: bool ``(B, 1, T, T)`` with ``T = 1 + Lq + Lx``, True = may attend.
        Padding keys are blocked everywhere; the matching token is never blocked.
    """
    b, lq = q_pad.shape
    lx = x_pad.shape[1]
    dev = q_pad.device
    side = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.ones(lq, dtype=torch.long, device=dev),
                      torch.full((lx,), 2, dtype=torch.long, device=dev)])
    same = side[:, None] == side[None, :]
    token = (side[:, None] == 0) | (side[None, :] == 0)
    within = same | token
    across = ~same | token
    key_ok = ~torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=dev), q_pad, x_pad], dim=1)  # (B, T)
    keys = key_ok[:, None, None, :]
    return within[None, None] & keys, across[None, None] & keys


class AMES(nn.Module):
    """The AMES pair scorer; see the module docstring. Build with :func:`create_ames`."""

    def __init__(self, cfg: AMESConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        self.mtc_token = nn.Parameter(torch.empty(d))
        if cfg.binary:
            self.remap_local = nn.Sequential(Binarize(cfg.local_dim, d, sigma=cfg.sigma), nn.Linear(d, d),
                                             nn.LayerNorm(d))
        else:
            self.remap_local = nn.Sequential(nn.Linear(cfg.local_dim, d), nn.LayerNorm(d))
        self.decoder = _Decoder(cfg)
        self.classifier = nn.Linear(d, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.mtc_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------- projections
    def _check(self, desc: torch.Tensor, pad: torch.Tensor, what: str) -> None:
        if desc.ndim != 3 or desc.shape[-1] != self.cfg.local_dim:
            raise ShapeError(f"{what} descriptors must be (B, L, {self.cfg.local_dim}) for this checkpoint, got "
                             f"{tuple(desc.shape)}; extract them with the local feature the model was trained on")
        if pad.shape != desc.shape[:2] or pad.dtype != torch.bool:
            raise ShapeError(f"{what} mask must be bool {tuple(desc.shape[:2])} (True = padding), got "
                             f"{pad.dtype} {tuple(pad.shape)}")

    def project(self, desc: torch.Tensor, pad: torch.Tensor, *, gallery: bool) -> torch.Tensor:
        """Raw descriptors ``(B, L, local_dim)`` -> tokens ``(B, L, model_dim)``.

        Inputs are L2-normalised first; padding slots (``pad`` True) are zeroed first, so any
        value there, NaN included, leaves the output unchanged. In eval mode the full-precision
        model rounds gallery tokens through float16 (the published model's storage emulation).
        """
        self._check(desc, pad, "gallery" if gallery else "query")
        x = F.normalize(desc.masked_fill(pad[..., None], 0.0), dim=-1)
        tok = self.remap_local(x)
        if gallery and not self.cfg.binary and not self.training:
            tok = tok.half().to(tok.dtype)
        return tok

    def project_signs(self, signs: torch.Tensor) -> torch.Tensor:
        """Binary variant: ``(B, L, model_dim)`` +-1 floats (unpacked gallery bits) -> tokens.

        Raises:
            ConfigError: the model is full-precision.
        """
        if not self.cfg.binary:
            raise ConfigError("project_signs needs a binary AMES; this checkpoint is full-precision "
                              "(score it with float descriptors instead of packed bits)")
        return self.remap_local[2](self.remap_local[1](signs))

    # ----------------------------------------------------------------------------------- forward
    def forward_tokens(self, q_tok: torch.Tensor, q_pad: torch.Tensor, x_tok: torch.Tensor,
                       x_pad: torch.Tensor, *, return_tokens: bool = False
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Score projected tokens.

        Args:
            q_tok: ``(B or 1, Lq, d)``; a batch of 1 is shared by all ``B`` pairs.
            q_pad: ``(B or 1, Lq)`` bool, True = padding.
            x_tok: ``(B, Lx, d)``. x_pad: ``(B, Lx)`` bool.

        Returns:
            logits ``(B,)``; with ``return_tokens`` also the output tokens ``(B, T, d)``.
        """
        b = x_tok.shape[0]
        if q_tok.shape[0] != b:
            q_tok, q_pad = q_tok.expand(b, -1, -1), q_pad.expand(b, -1)
        tok = torch.cat([self.mtc_token.to(x_tok.dtype).expand(b, 1, -1), q_tok, x_tok], dim=1)
        within, across = pair_masks(q_pad, x_pad)
        for layer in self.decoder.layers:
            tok = layer(tok, within=within, across=across)
        logits = self.classifier(tok[:, 0]).view(-1)
        return (logits, tok) if return_tokens else logits

    def forward(self, q_desc: torch.Tensor, q_pad: torch.Tensor, x_desc: torch.Tensor, x_pad: torch.Tensor,
                *, return_tokens: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``B`` pairs from raw descriptors.

        Args:
            q_desc: ``(B, Lq, local_dim)`` float; q_pad: ``(B, Lq)`` bool, True = padding.
            x_desc: ``(B, Lx, local_dim)`` float; x_pad: ``(B, Lx)`` bool.

        Returns:
            logits ``(B,)`` (similarity is ``sigmoid(gamma * logit)``); with ``return_tokens``
            also the output tokens ``(B, 1 + Lq + Lx, model_dim)``.

        Raises:
            ShapeError: descriptor dimension other than ``local_dim``, or a bad mask.
        """
        q_tok = self.project(q_desc, q_pad, gallery=False)
        x_tok = self.project(x_desc, x_pad, gallery=True)
        return self.forward_tokens(q_tok, q_pad, x_tok, x_pad, return_tokens=return_tokens)


def create_ames(*, local_dim: int, binary: bool = False, seed: int = 0, **kwargs: Any) -> AMES:
    """Build an AMES model with the published defaults (see :class:`AMESConfig`), seeded init.

    Raises:
        ConfigError: a bad or unknown option.
    """
    cfg = AMESConfig.from_dict({"local_dim": local_dim, "binary": binary, **kwargs})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AMES(cfg)
