"""The MLP mixer baseline (AFF paper): pool, concatenate, then fully-connected layers.

Each local set is mean-pooled over its valid descriptors and L2-normalised
(:func:`~asymfuse.cloud.models.mixers.base.masked_mean_pool`); globals are L2-normalised. The
``K + M`` vectors are concatenated in schema order (``D = sum_k D_k + sum_m d_m``) and go through
``layers`` Linear layers with GELU between them: ``D -> hidden -> ... -> hidden -> d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.models.fusion import FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers.base import Mixer, check_positive_int, pooled_features


class MLPMixer(Mixer):
    """Concatenation + MLP: ``FusionInputs`` -> ``(B, d)`` float32, unit-norm."""

    name = "mlp"
    trainable = True

    def __init__(self, *, schema: GallerySchema, embed_dim: int, hidden: int | None = None, layers: int = 2) -> None:
        """
        Args:
            schema: the K global + M local inputs.
            embed_dim: output dimension d.
            hidden: width of the hidden layers; default ``2 * embed_dim``. Unused when ``layers == 1``.
            layers: number of Linear layers (1 = a single linear map ``D -> d``).

        Raises:
            ConfigError: a non-positive size.
        """
        check_positive_int("mlp mixer: layers", layers)
        check_positive_int("mlp mixer: embed_dim", embed_dim)
        hidden = 2 * embed_dim if hidden is None else check_positive_int("mlp mixer: hidden", hidden)
        super().__init__(schema=schema, embed_dim=embed_dim, options={"hidden": hidden, "layers": layers})
        widths = [sum(s.dim for s in schema.slots)] + [hidden] * (layers - 1) + [embed_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def mix(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, d)`` output of the last Linear layer (not yet normalised)."""
        x = torch.cat(pooled_features(inputs, dtype=self.layers[0].weight.dtype), dim=1)
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else F.gelu(x))
        return x
