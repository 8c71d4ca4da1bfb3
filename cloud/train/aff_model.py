"""``AFFSystem``: the trainable parts of one AFF run in one module, and its loss for each scheme.

One module (rather than loose parts) so that DistributedDataParallel can wrap it whole and one
state dict checkpoints it. Which loss runs depends on the scheme and the *stage*:

- ``"mixer"``: ArcFace(g_mix; psi_mix) only (mixer_only, and stage 1 of two_stage).
- ``"joint"``: ArcFace(g_mix; psi_mix) + ArcFace(q; psi_q), psi_q an EMA of psi_mix.
- ``"query"``: the query net alone against a frozen target: psi_q frozen (two_stage stage 2),
  or one frozen gallery feature (bct, reg, lce, csd), or its own head (symmetric).

psi_q is a buffer, never a parameter: :meth:`AFFSystem.after_step` moves it towards psi_mix
after each optimiser step, identically on every rank because psi_mix is synchronised by DDP.
"""

from __future__ import annotations

import torch
from torch import nn

from asymfuse.cloud.losses import (
    ArcFaceHead,
    EMAClassifier,
    bct_loss,
    csd_loss,
    lce_loss,
    reg_loss,
)
from asymfuse.cloud.models.fusion import FusionInputs
from asymfuse.cloud.models.query_net import QueryNet
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.edge.errors import ConfigError

STAGES = ("mixer", "joint", "query")


class AFFSystem(nn.Module):
    """Mixer, query net and classifiers of one run.

    Args:
        config: the run's config (scheme, ArcFace s/m, alpha, CSD/LCE settings).
        num_classes: C, training classes.
        mixer: the gallery-side fusion model (mixer schemes), else None.
        query_net: the query net (query schemes), else None.
        gallery_weight: ``(C, D)`` frozen gallery classifier (bct, lce, csd).
        bank: ``(N, D)`` unit-norm frozen gallery features of the training set (csd).
    """

    def __init__(self, *, config: TrainConfig, num_classes: int, mixer: nn.Module | None,
                 query_net: QueryNet | None, gallery_weight: torch.Tensor | None = None,
                 bank: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.scheme = config.scheme
        self.mixer = mixer
        self.query_net = query_net
        self.stage = "joint"
        s, m = config.arcface_scale, config.arcface_margin
        self.head_mix = ArcFaceHead(embed_dim=mixer.embed_dim, num_classes=num_classes, scale=s, margin=m,
                                    seed=config.seed) if mixer is not None else None
        self.ema = None
        if self.head_mix is not None and config.trains_query:
            self.ema = EMAClassifier(source=self.head_mix.weight.detach(), alpha=config.alpha, scale=s, margin=m)
        self.head_q = None
        if self.scheme == "symmetric" and query_net is not None:
            self.head_q = ArcFaceHead(embed_dim=query_net.embed_dim, num_classes=num_classes, scale=s, margin=m,
                                      seed=config.seed)
        self.register_buffer("gallery_weight", gallery_weight, persistent=gallery_weight is not None)
        # The CSD bank is rebuilt from the feature store; kept out of the state dict and out of
        # DDP's per-step buffer broadcast.
        self.bank = bank

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Move the (non-buffer) CSD bank along with the module."""
        out = super()._apply(fn, *args, **kwargs)
        if self.bank is not None:
            self.bank = fn(self.bank)
        return out

    def stages(self) -> list[tuple[str, int]]:
        """``[(stage, epochs), ...]`` in training order."""
        c = self.config
        if c.scheme == "joint":
            return [("joint", c.epochs)]
        if c.scheme == "mixer_only":
            return [("mixer", c.epochs)]
        if c.scheme == "two_stage":
            return [("mixer", c.stage1_epochs), ("query", c.epochs - c.stage1_epochs)]
        return [("query", c.epochs)]

    def set_stage(self, stage: str) -> None:
        """Select the loss and freeze what the stage does not train.

        Entering the ``query`` stage of two_stage copies psi_mix into psi_q, which then stays frozen.
        """
        if stage not in STAGES:
            raise ConfigError(f"stage {stage!r} is unknown; choose one of {list(STAGES)}")
        if stage == "query" and self.scheme == "two_stage" and self.stage != "query" and self.ema is not None:
            with torch.no_grad():
                self.ema.weight.copy_(self.head_mix.weight.detach())
        self.stage = stage
        train_gallery = stage in ("mixer", "joint")
        train_query = stage in ("joint", "query")
        for module, flag in ((self.mixer, train_gallery), (self.head_mix, train_gallery),
                             (self.query_net, train_query), (self.head_q, train_query)):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(flag and getattr(module, "trainable", True))
        if self.query_net is not None and self.trunk_frozen:
            self.query_net.trunk.requires_grad_(False)
            if self.config.query_inputs == "cached":  # the cached rows are GeM outputs: p stays too
                self.query_net.pool.requires_grad_(False)

    @property
    def trunk_frozen(self) -> bool:
        """Whether the query trunk stays at its start (``query_trunk_lr_mult = 0``)."""
        return self.config.query_trunk_lr_mult == 0

    def forward(self, images: torch.Tensor | None, gallery: FusionInputs | None,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        Args:
            images: ``(B, 3, H, W)`` normalised query images, or ``(B, C)`` pooled trunk rows
                (``query_inputs = "cached"``; None in the mixer stage).
            gallery: the batch's frozen gallery features (None for the symmetric scheme).
            labels: ``(B,)`` int64 class ids.

        Returns:
            ``{"loss": scalar, "loss_mix": scalar, "loss_q": scalar}`` (zeros for absent terms).
        """
        zero = labels.new_zeros((), dtype=torch.float32)
        loss_mix, loss_q = zero, zero
        if self.stage in ("mixer", "joint"):
            g_mix = self.mixer(gallery)
            loss_mix = self.head_mix(g_mix.float(), labels)
        if self.stage in ("joint", "query"):
            q = (self.query_net.forward_pooled(images) if images.ndim == 2 else self.query_net(images)).float()
            loss_q = self._query_loss(q, gallery, labels)
        return {"loss": loss_mix + loss_q, "loss_mix": loss_mix.detach(), "loss_q": loss_q.detach()}

    def _query_loss(self, q: torch.Tensor, gallery: FusionInputs | None, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        s, m = c.arcface_scale, c.arcface_margin
        if self.scheme in ("joint", "two_stage"):
            return self.ema(q, labels)
        if self.scheme == "symmetric":
            return self.head_q(q, labels)
        g = gallery.globals_[0].float()
        if self.scheme == "reg":
            return reg_loss(q, g)
        if self.scheme == "bct":
            return bct_loss(q, labels, gallery_weight=self.gallery_weight, scale=s, margin=m)
        if self.scheme == "lce":
            return lce_loss(q, g, labels, gallery_weight=self.gallery_weight, scale=s, margin=m,
                            boundary_weight=c.lce_boundary_weight)
        # csd: the structure term plus the BCT term (the KL term alone is invariant to where in
        # the gallery space q lands, so it is paired with the gallery classifier).
        return (bct_loss(q, labels, gallery_weight=self.gallery_weight, scale=s, margin=m)
                + csd_loss(q, g, bank=self.bank, k=c.csd_k, t_teacher=c.csd_t_teacher, t_student=c.csd_t_student))

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum update of psi_q from psi_mix (joint stage only)."""
        if self.stage == "joint" and self.ema is not None:
            self.ema.update(self.head_mix.weight.detach())

    def set_bn_mode(self, mode: str) -> None:
        """``frozen`` (or a frozen trunk): the query net's BatchNorm layers use their running statistics
        while training, so they do not move."""
        if (mode == "frozen" or self.trunk_frozen) and self.query_net is not None:
            for mod in self.query_net.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
