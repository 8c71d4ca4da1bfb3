"""Convolutional trunks (feature extractors without their classifier heads).

Each trunk maps ``(B, 3, H, W)`` normalised images to a ``(B, C, H/32, W/32)`` feature map and
knows its output channels and the input normalisation its weights expect. Built by
:func:`create_trunk`; torchvision definitions come through :mod:`asymfuse.cloud.compat`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from asymfuse.cloud.compat import import_torchvision
from asymfuse.cloud.models.weights import (
    lite_weights_path,
    load_state_dict_file,
    load_strict,
    require_weights_path,
)
from asymfuse.cloud.registry import Registry
from asymfuse.edge.errors import missing_dependency
from asymfuse.edge.spec import HALF_MEAN, IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class TrunkInfo:
    """Static facts about a trunk: output channels, stride, expected normalisation."""

    out_channels: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Trunk(nn.Module):
    """A backbone without its head; ``forward`` returns ``(B, C, H/stride, W/stride)``."""

    def __init__(self, body: nn.Module, info: TrunkInfo) -> None:
        super().__init__()
        self.body = body
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LiteBody(nn.Module):
    """EfficientNet-Lite from the ``efficientnet-lite-pytorch`` package, minus pool/dropout/fc.

    Parameter names match the published weights (``_conv_stem``, ``_blocks.N``, ...).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks, self._conv_head, self._bn1 = net._blocks, net._conv_head, net._bn1
        self._swish = net._swish
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)

    def forward_blocks(self, x: torch.Tensor, *, upto: int | None = None) -> torch.Tensor:
        """Stem then blocks ``[0, upto)`` (all blocks when ``upto`` is None), no head conv."""
        x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks if upto is None else self._blocks[:upto]):
            rate = self.drop_connect_rate * idx / n if self.training else None
            x = block(x, drop_connect_rate=rate)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._swish(self._bn1(self._conv_head(self.forward_blocks(x))))

    def stage_ends(self) -> list[int]:
        """Block counts after which the spatial stride doubles next (ends of stages)."""
        ends = []
        for i, block in enumerate(self._blocks):
            stride = block._block_args.stride
            s = stride if isinstance(stride, int) else stride[0]
            if s > 1 and i > 0:
                ends.append(i)
        return ends


def load_efficientnet_lite(variant: str, *, pretrained: bool = True,
                           image_size: int | None = None) -> nn.Module:
    """The full EfficientNet-Lite classifier (with its ImageNet head).

    Args:
        variant: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``.
        pretrained: load the bundled ImageNet weights with ``strict=True``.
        image_size: fixed input size for static "same" padding (export-friendly), or None for
            padding computed from each input (any size).

    Raises:
        MissingDependencyError: ``efficientnet-lite-pytorch`` or the weight package is missing.
        ConfigError: the weights do not match the definition.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError as exc:
        raise missing_dependency("efficientnet-lite-pytorch", "cloud") from exc
    name = variant.replace("_", "-")
    net = EfficientNet.from_name(name, image_size=image_size)
    if pretrained:
        path = lite_weights_path(variant)
        load_strict(net, load_state_dict_file(path), source=str(path))
    return net


TrunkFactory = Callable[..., Trunk]
TRUNKS: Registry[TrunkFactory] = Registry("backbone")


def _lite(variant: str) -> TrunkFactory:
    def build(*, pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None,
              image_size: int | None = None) -> Trunk:
        net = load_efficientnet_lite(variant, pretrained=pretrained and weights_path is None,
                                     image_size=image_size)
        if weights_path is not None:
            load_strict(net, load_state_dict_file(weights_path), source=os.fspath(weights_path))
        body = LiteBody(net)
        return Trunk(body, TrunkInfo(net._bn1.num_features, 32, HALF_MEAN, HALF_MEAN))

    return build


for _v in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    TRUNKS.register(_v)(_lite(_v))


def _torchvision(arch: str, body_of: Callable[[nn.Module], nn.Module], channels: int) -> TrunkFactory:
    def build(*, pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None,
              image_size: int | None = None) -> Trunk:
        del image_size  # torchvision convs pad symmetrically; any size works
        tv = import_torchvision()
        net = getattr(tv.models, arch)(weights=None)
        if pretrained or weights_path is not None:
            path = require_weights_path(arch, weights_path)
            load_strict(net, load_state_dict_file(path), source=os.fspath(path))
        return Trunk(body_of(net), TrunkInfo(channels, 32, IMAGENET_MEAN, IMAGENET_STD))

    return build


def _shufflenet_body(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4, net.conv5)


def _resnet_body(net: nn.Module) -> nn.Module:
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)


TRUNKS.register("mobilenet_v2")(_torchvision("mobilenet_v2", lambda n: n.features, 1280))
TRUNKS.register("shufflenet_v2_x1_0")(_torchvision("shufflenet_v2_x1_0", _shufflenet_body, 1024))
TRUNKS.register("efficientnet_b0")(_torchvision("efficientnet_b0", lambda n: n.features, 1280))
TRUNKS.register("resnet50")(_torchvision("resnet50", _resnet_body, 2048))
TRUNKS.register("resnet101")(_torchvision("resnet101", _resnet_body, 2048))


def create_trunk(name: str, *, pretrained: bool = False,
                 weights_path: str | os.PathLike[str] | None = None,
                 image_size: int | None = None) -> Trunk:
    """Build a registered trunk.

    Args:
        name: one of :data:`TRUNKS` (``efficientnet_lite0..2`` have bundled ImageNet weights).
        pretrained: load ImageNet weights (bundled for Lite, else from ``weights_path``).
        weights_path: a torchvision-style state dict for the full classifier network.
        image_size: fixed input side for export-friendly static padding (Lite only).

    Raises:
        UnknownNameError: unknown name. ConfigError: pretrained without available weights.
    """
    return TRUNKS.get(name)(pretrained=pretrained, weights_path=weights_path, image_size=image_size)
