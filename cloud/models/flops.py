"""Compute cost of a model: parameters and FLOPs of one forward pass.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which traces the aten
ops of a real forward pass and counts a multiply-add as **2 FLOPs** (so FLOPs = 2 x MACs: a
``Linear(i, o)`` on a batch of B costs ``2 * B * i * o``; a ``Conv2d`` costs
``2 * B * H_out * W_out * C_out * (C_in / groups) * kh * kw``). Only matmul/conv-like ops are
counted: biases, activations, normalisation and pooling are not, which is the usual convention
for the "GFLOPs" figures of image models (MobileNetV2 at 224: 0.3 GMACs = 0.6 GFLOPs).
"""

from __future__ import annotations

import torch
from torch import nn

from asymfuse.edge.errors import ConfigError


def _hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        size = (input_size[0], input_size[1])
    else:
        raise ConfigError(f"input_size must be an int or an (H, W) pair, got {input_size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ConfigError(f"input_size must hold positive ints, got {input_size!r}")
    return size


def count_flops(model: nn.Module, *, input_size: int | tuple[int, int], batch: int = 1, channels: int = 3,
                device: str | torch.device = "cpu") -> int:
    """FLOPs (2 x multiply-adds) of one eval-mode forward pass on a ``(batch, channels, H, W)`` input.

    The model is run once on zeros under ``torch.inference_mode`` with ``eval()`` set; its
    training flag is restored afterwards. See the module docstring for what is counted.

    Args:
        model: any module taking one image batch ``(B, C, H, W)`` float32.
        input_size: ``S`` for a square ``S x S`` input, or ``(H, W)``.
        batch: B. channels: C (3 for RGB).
        device: where the forward pass runs (the model must already live there).

    Returns:
        The total FLOP count (an int >= 0).

    Raises:
        ConfigError: bad ``input_size``, ``batch`` or ``channels``.
    """
    h, w = _hw(input_size)
    for name, value in (("batch", batch), ("channels", channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(batch, channels, h, w, device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def query_net_cost(arch: str, *, size: int, embed_dim: int = 512) -> dict[str, float]:
    """Parameters and GFLOPs of a registered query net at a square input of side ``size``.

    Builds ``create_query_net(arch, pretrained=False, input_size=size)`` on the CPU (weights do
    not change the cost).

    Returns:
        ``{"params_m": parameters in millions, "gflops": GFLOPs of one image (2 x GMACs)}``.

    Raises:
        UnknownNameError: ``arch`` is not a registered query net.
        ConfigError: a bad ``size`` or ``embed_dim``.
    """
    from asymfuse.cloud.models.query_net import create_query_net

    net = create_query_net(arch, pretrained=False, input_size=size, embed_dim=embed_dim)
    return {"params_m": count_params(net) / 1e6, "gflops": count_flops(net, input_size=size) / 1e9}
