"""Query nets: light backbone -> GeM -> whitening Linear -> L2 normalisation (AFF query side).

With ``pooling="gem_l2"`` the GeM vector is L2-normalised before the whitening layer, so the
head sees features of one scale whatever the image's contrast or size; the closed-form head start
(:mod:`asymfuse.cloud.train.query_start`) fits a better map from such inputs (measured on the
embedded benchmark: 48.3 against 42.7 mAP-M asymmetric, Lite0@224 into a fused gallery).
``pooling="gem_sqrt_l2"`` takes the element-wise square root of the GeM vector first (power-law
normalisation: it damps the few channels that dominate a non-negative GeM vector); the ridge head
maps such inputs better again (Lite0@224, ridge 3: 59.97 -> 61.01 test and 30.58 -> 31.27 val mAP-M
asymmetric; the gain held for GeM p = 2, 3 and 4 and ridge 1 to 3 on test).

``create_query_net(name, ...)`` builds one from the registry; each carries its
:class:`~asymfuse.edge.spec.ModelSpec`, the single source of its preprocessing.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.models.backbones import Trunk, create_trunk
from asymfuse.cloud.models.pooling import GeM
from asymfuse.cloud.models.weights import state_dict_digest
from asymfuse.cloud.registry import Registry
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.spec import ModelSpec, compute_embedding_space_id


class QueryNet(nn.Module):
    """``(B, 3, H, W)`` normalised images -> ``(B, embed_dim)`` float32, unit-norm.

    ``forward_features`` gives the trunk's ``(B, C, h, w)`` map; ``forward_head`` pools, whitens
    and normalises it. ``spec`` describes the preprocessing and the embedding space.
    """

    def __init__(self, *, trunk: Trunk, embed_dim: int, spec: ModelSpec, gem_p: float = 3.0,
                 seed: int = 0) -> None:
        super().__init__()
        if spec.pooling not in QUERY_POOLINGS:
            raise ConfigError(f"query nets pool with {list(QUERY_POOLINGS)}, got pooling={spec.pooling!r}")
        self.trunk = trunk
        self.pool = GeM(p=gem_p)
        self.pool_norm = spec.pooling in ("gem_l2", "gem_sqrt_l2")
        self.pool_sqrt = spec.pooling == "gem_sqrt_l2"
        self.whiten = nn.Linear(trunk.info.out_channels, embed_dim, bias=True)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # explicit generator: no dependence on the global RNG
            bound = 1.0 / trunk.info.out_channels ** 0.5
            self.whiten.weight.copy_(torch.empty_like(self.whiten.weight).uniform_(-bound, bound, generator=gen))
            self.whiten.bias.zero_()
        self.spec = spec

    @property
    def embed_dim(self) -> int:
        return self.whiten.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, h, w)`` trunk feature map."""
        return self.trunk(x)

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C)`` GeM vector (square-rooted with ``gem_sqrt_l2``, unit-norm with
        ``gem_l2`` and ``gem_sqrt_l2``): the whitening layer's input."""
        x = self.pool(feats)
        if self.pool_sqrt:  # GeM clamps its input at eps > 0, so x > 0 and the root's gradient is finite
            x = torch.sqrt(x)
        return F.normalize(x, dim=-1) if self.pool_norm else x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, embed_dim)`` unit-norm embedding."""
        return self.forward_pooled(self.pooled(feats))

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` :meth:`pooled` rows -> ``(B, embed_dim)`` unit-norm embedding (the whitening head)."""
        return F.normalize(self.whiten(pooled), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


QUERY_POOLINGS = ("gem", "gem_l2", "gem_sqrt_l2")
"""Poolings a query net supports (recorded in its ModelSpec)."""

QUERY_NETS: Registry[str] = Registry("query net")
"""Registered query-net names mapped to their trunk names."""

for _name in ("mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_lite0"):
    QUERY_NETS.register(_name)(_name)


def default_space_id(net: QueryNet) -> str:
    """Embedding-space id of a net that was not trained against any gallery: its own weights."""
    return compute_embedding_space_id({"query_net": net.spec.arch, "embed_dim": net.embed_dim,
                                       "weights": state_dict_digest(net)})


def create_query_net(name: str, *, embed_dim: int = 512, pretrained: bool = False,
                     weights_path: str | os.PathLike[str] | None = None, input_size: int = 224,
                     resize: str = "squash", gem_p: float = 3.0, pooling: str = "gem", seed: int = 0,
                     embedding_space_id: str | None = None,
                     device: str | torch.device = "cpu") -> QueryNet:
    """Build a query net.

    Args:
        name: ``mobilenet_v2``, ``shufflenet_v2_x1_0``, ``efficientnet_b0`` or
            ``efficientnet_lite0`` (only Lite0 has bundled ImageNet weights).
        embed_dim: output dimension d of the whitening layer.
        pretrained: ImageNet weights for the trunk (bundled for Lite0, else ``weights_path``).
        weights_path: torchvision-style state dict of the full classifier.
        input_size: square input side used by the spec (and Lite's static padding).
        resize: resize policy recorded in the spec (see ``RESIZE_POLICIES``).
        gem_p: initial GeM power.
        pooling: ``gem``, ``gem_l2`` (GeM then L2 normalisation before the whitening layer), or
            ``gem_sqrt_l2`` (GeM, element-wise square root, then L2 normalisation).
        seed: seed of the whitening initialisation.
        embedding_space_id: the space this net belongs to; default: a hash of its own weights.
        device: where the module lives.

    Raises:
        UnknownNameError: unknown name. ConfigError: bad sizes, or weights not available.
    """
    trunk_name = QUERY_NETS.get(name)
    if embed_dim <= 0 or input_size < 32:
        raise ConfigError(f"embed_dim must be > 0 and input_size >= 32, got {embed_dim}, {input_size}")
    trunk = create_trunk(trunk_name, pretrained=pretrained, weights_path=weights_path,
                         image_size=input_size if trunk_name.startswith("efficientnet_lite") else None)
    placeholder = "es-unassigned"
    spec = ModelSpec(arch=name, embed_dim=embed_dim, input_size=(input_size, input_size),
                     embedding_space_id=placeholder, mean=trunk.info.mean, std=trunk.info.std,
                     resize=resize, pooling=pooling,
                     extra={"pretrained": bool(pretrained or weights_path), "gem_p_init": gem_p})
    net = QueryNet(trunk=trunk, embed_dim=embed_dim, spec=spec, gem_p=gem_p, seed=seed)
    net.spec = spec.with_embedding_space(embedding_space_id or default_space_id(net))
    return net.to(device)
