"""The AFF dynamic mixer (Wu et al., CVPR 2023; PAPERS.md section 2).

Every gallery feature gets its own linear map to d: one ``Linear(D_k, d)`` per global slot and
one ``Linear(d_m, d)`` per local slot, applied to each descriptor. A learnable fusion token is
prepended, ``Z0 = [fusion; K global tokens; sum_m L_m local tokens]``, and C post-LN layers run

    Z_bar = LN(Z + MHSA(Z));   Z = LN(Z_bar + MLP(Z_bar)),   MLP = Linear(d, d_e) -> GELU -> Linear(d_e, d)

with ``d_e = mlp_ratio * d`` and no dropout. The output is the fusion token after the last
layer, L2-normalised.

Padding descriptors are masked as attention keys, so they cannot change any valid token (and
their values are zeroed before the projection, so even NaN garbage stays out). The fusion and
global tokens are never masked: every query row has at least one key, and an image whose local
sets are all padding still gets a finite embedding. There are no positional embeddings, so the
output does not depend on the order of the descriptors within a local set.

**Anchored start** (``anchor=True``, an asymfuse addition for small training sets): the output
becomes ``normalize(A(x)) + W_o t_C``, where ``A`` is the PCA-whitened concatenation of the inputs
(:class:`~asymfuse.cloud.models.mixers.concat.ConcatMixer`, frozen buffers learnt by :meth:`fit`
on training rows) and ``W_o`` a ``Linear(d, d)`` on the fusion token ``t_C`` that starts at zero.
Before training the mixer therefore *is* the whitened concatenation, a space that already
retrieves well; training learns a correction on top of it instead of a space from scratch, which
on tens of classes collapses what the frozen inputs knew (measured in the closing notes of the
quality issue). With ``anchor=False`` the output is the fusion token alone, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.models.fusion import FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers.base import Mixer, check_positive_int, init_standard_layers
from asymfuse.cloud.models.mixers.concat import ConcatMixer
from asymfuse.edge.errors import ConfigError

FUSION_TOKEN_STD = 0.02
"""Standard deviation of the fusion token's normal initialisation."""


class PostLNBlock(nn.Module):
    """One post-LN transformer layer over ``(B, N, d)`` tokens; attention via
    :func:`torch.nn.functional.scaled_dot_product_attention` with a key-padding mask."""

    def __init__(self, *, embed_dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, z: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z: ``(B, N, d)`` tokens.
            attend: ``(B, 1, 1, N)`` bool, True where the key may be attended to.

        Returns:
            ``(B, N, d)`` tokens, each LayerNorm-ed.
        """
        b, n, d = z.shape
        qkv = self.qkv(z).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
        z = self.norm1(z + self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return self.norm2(z + self.fc2(F.gelu(self.fc1(z))))


class TransformerMixer(Mixer):
    """AFF dynamic mixer: ``FusionInputs`` -> ``(B, d)`` float32, unit-norm (the fusion token)."""

    name = "transformer"
    trainable = True

    def __init__(self, *, schema: GallerySchema, embed_dim: int, layers: int = 4, heads: int = 8,
                 mlp_ratio: float = 2.0, anchor: bool = False, anchor_weights: tuple[float, ...] = (),
                 anchor_shrink: float = 0.0) -> None:
        """
        Args:
            schema: the K global + M local inputs.
            embed_dim: token and output dimension d; must be divisible by ``heads``.
            layers: number C of post-LN layers.
            heads: attention heads.
            mlp_ratio: MLP hidden width d_e = round(mlp_ratio * d).
            anchor: start from the PCA-whitened concatenation (see the module docstring); then
                :meth:`fit` must run on training rows before ``forward``, and
                ``d <= sum of the input dimensions``.
            anchor_weights, anchor_shrink: the anchor's ``input_weights`` and ``shrink``
                (:class:`~asymfuse.cloud.models.mixers.concat.ConcatMixer`); anchor only.

        Raises:
            ConfigError: a non-positive size, ``embed_dim`` not divisible by ``heads``, ``anchor`` not a
                bool, or an anchor wider than the concatenated inputs.
        """
        check_positive_int("transformer mixer: layers", layers)
        check_positive_int("transformer mixer: heads", heads)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ConfigError(f"transformer mixer: mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        if not isinstance(anchor, bool):
            raise ConfigError(f"transformer mixer: anchor must be True or False, got {anchor!r}")
        options = {"layers": layers, "heads": heads, "mlp_ratio": float(mlp_ratio)}
        if anchor:  # recorded only when on, so configs written before the option still match
            options["anchor"] = True
        if (anchor_weights or anchor_shrink) and not anchor:
            raise ConfigError("transformer mixer: anchor_weights / anchor_shrink need anchor=True")
        if anchor_weights:
            options["anchor_weights"] = list(anchor_weights)
        if anchor_shrink:
            options["anchor_shrink"] = float(anchor_shrink)
        super().__init__(schema=schema, embed_dim=embed_dim, options=options)
        if embed_dim % heads:
            raise ConfigError(f"transformer mixer: embed_dim={embed_dim} must be divisible by heads={heads}; "
                              "change one of them")
        hidden = max(1, round(mlp_ratio * embed_dim))
        self.global_proj = nn.ModuleList(nn.Linear(s.dim, embed_dim) for s in schema.global_slots)
        self.local_proj = nn.ModuleList(nn.Linear(s.dim, embed_dim) for s in schema.local_slots)
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(PostLNBlock(embed_dim=embed_dim, heads=heads, hidden=hidden) for _ in range(layers))
        self.anchor = ConcatMixer(schema=schema, embed_dim=embed_dim, whiten=True, input_weights=tuple(anchor_weights),
                                  shrink=anchor_shrink) if anchor else None
        self.out_proj = nn.Linear(embed_dim, embed_dim) if anchor else None

    def reset_parameters(self, *, generator: torch.Generator) -> None:
        """Standard Linear/LayerNorm init plus a N(0, 0.02^2) fusion token, all from ``generator``."""
        init_standard_layers(self, generator=generator)
        with torch.no_grad():
            token = torch.empty(self.fusion_token.shape).normal_(0.0, FUSION_TOKEN_STD, generator=generator)
            self.fusion_token.copy_(token)
            if self.out_proj is not None:  # the anchored mixer starts as its anchor exactly
                self.out_proj.weight.zero_()
                self.out_proj.bias.zero_()

    def fit(self, inputs: FusionInputs) -> None:
        """Learn the anchor's PCA whitening from N training rows (no-op without an anchor).

        Raises:
            ShapeError: the batch does not match the schema.
            ConfigError: ``embed_dim > min(N - 1, D)`` or constant features (see ConcatMixer.fit).
        """
        inputs.check(self.schema)
        if self.anchor is not None:
            self.anchor.fit(inputs)

    def tokens(self, inputs: FusionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial tokens Z0 and their key mask.

        Returns:
            ``(B, 1 + K + sum L_m, d)`` tokens in the parameters' dtype, and ``(B, 1 + K + sum L_m)``
            bool, True where the token may be attended to (False only at local padding).
        """
        dtype = self.fusion_token.dtype
        b = inputs.batch_size
        parts = [self.fusion_token.expand(b, 1, self.embed_dim)]
        parts += [proj(g.to(dtype)).unsqueeze(1) for proj, g in zip(self.global_proj, inputs.globals_)]
        for proj, x, m in zip(self.local_proj, inputs.locals_, inputs.local_pads):
            parts.append(proj(x.to(dtype).masked_fill(m.unsqueeze(-1), 0.0)))
        always = torch.ones(b, 1 + len(inputs.globals_), dtype=torch.bool, device=parts[0].device)
        attend = torch.cat([always, *(~m for m in inputs.local_pads)], dim=1)
        return torch.cat(parts, dim=1), attend

    def mix(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, d)`` fusion token after the last layer, plus the anchor when there is one (not yet
        normalised).

        Raises:
            ConfigError: an anchored mixer whose :meth:`fit` has not run (nor a fitted state loaded).
        """
        z, attend = self.tokens(inputs)
        mask = attend[:, None, None, :]
        for block in self.blocks:
            z = block(z, mask)
        token = z[:, 0]
        if self.anchor is None:
            return token
        start = F.normalize(self.anchor.mix(inputs).float(), dim=-1).to(token.dtype)
        return start + self.out_proj(token)
