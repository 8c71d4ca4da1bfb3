"""The mixer interface: K global + M local frozen gallery features -> one ``(B, d)`` embedding.

A :class:`Mixer` owns its :class:`~asymfuse.cloud.models.fusion.GallerySchema` and checks every
batch against it before mixing, so a feature store whose dimensions disagree with the mixer
config fails with a :class:`~asymfuse.edge.errors.ShapeError` naming the slot, not with a
matmul error deep inside torch.

Subclasses implement :meth:`Mixer.mix` (the un-normalised output) and, when they have
parameters, :meth:`Mixer.reset_parameters`, which must draw only from the explicit
``torch.Generator`` it is given, so that weights depend on ``seed`` alone. Build mixers with
:func:`~asymfuse.cloud.models.mixers.registry.create_mixer`, which does that; a subclass
constructed directly keeps PyTorch's default (global-RNG) initialisation.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.models.fusion import FusionInputs, GallerySchema
from asymfuse.edge.errors import ConfigError, ShapeError


class Mixer(nn.Module):
    """Base class of the gallery-side fusion models.

    Attributes:
        name: the registry name (class constant).
        trainable: whether the mixer has parameters to train by back-propagation (class
            constant); a non-trainable mixer may still need :meth:`fit`.
        schema: the K global + M local inputs this mixer was built for.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True

    def __init__(self, *, schema: GallerySchema, embed_dim: int, options: dict[str, Any]) -> None:
        """
        Args:
            schema: the gallery inputs, in order.
            embed_dim: output dimension d.
            options: the subclass keyword options, as :meth:`config` should record them
                (JSON-able values, defaults resolved).

        Raises:
            ConfigError: ``schema`` is not a GallerySchema or ``embed_dim`` is not a positive int.
        """
        super().__init__()
        check_schema(f"mixer {self.name!r}", schema)
        check_positive_int(f"mixer {self.name!r}: embed_dim", embed_dim)
        self.schema = schema
        self._embed_dim = int(embed_dim)
        self._options = dict(options)

    @property
    def embed_dim(self) -> int:
        """Output dimension d."""
        return self._embed_dim

    def forward(self, inputs: FusionInputs) -> torch.Tensor:
        """Fuse one batch.

        Args:
            inputs: K globals ``(B, D_k)`` and M local sets ``(B, L_m, d_m)`` with masks
                ``(B, L_m)`` bool, True = padding, in schema order.

        Returns:
            ``(B, d)`` float32, unit-norm rows.

        Raises:
            ShapeError: the batch does not match the schema (count or dimension of inputs).
            ConfigError: the mixer needs :meth:`fit` first (concat with whitening).
        """
        inputs.check(self.schema)
        return F.normalize(self.mix(inputs).float(), dim=-1)

    def mix(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, d)`` un-normalised output for a batch already checked against the schema."""
        raise NotImplementedError

    def fit(self, inputs: FusionInputs) -> None:
        """Learn any data-dependent, non-gradient state from training rows (no-op by default).

        Raises:
            ShapeError: the batch does not match the schema.
        """
        inputs.check(self.schema)

    def reset_parameters(self, *, generator: torch.Generator) -> None:
        """Re-initialise every parameter from ``generator`` (CPU); the default handles
        Linear (uniform +-1/sqrt(fan_in) weights, zero bias) and LayerNorm (1, 0)."""
        init_standard_layers(self, generator=generator)

    def config(self) -> dict[str, Any]:
        """JSON-able description that :func:`mixer_from_config` rebuilds the architecture from.

        Returns:
            ``{"name", "embed_dim", "kwargs", "schema"}``; weights are not included (use state_dict).
        """
        return {"name": self.name, "embed_dim": self.embed_dim, "kwargs": dict(self._options),
                "schema": self.schema.to_dict()}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, slots={list(self.schema.names)}"


def check_positive_int(what: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1.

    Raises:
        ConfigError: otherwise, naming ``what``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def check_schema(what: str, schema: object) -> GallerySchema:
    """Return ``schema`` if it is a GallerySchema.

    Raises:
        ConfigError: otherwise, naming ``what``.
    """
    if not isinstance(schema, GallerySchema):
        raise ConfigError(f"{what} needs a GallerySchema, got {type(schema).__name__}; "
                          "build one with GallerySchema(slots=(FeatureSlot(...), ...))")
    return schema


def init_standard_layers(module: nn.Module, *, generator: torch.Generator) -> None:
    """Initialise every Linear and LayerNorm inside ``module`` from ``generator``, in module order.

    Linear weights are uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default range) and biases zero;
    LayerNorm weights are one and biases zero. Parameters must live on the CPU (the generator's
    device); move the module afterwards.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(-bound, bound, generator=generator))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()


def masked_mean_pool(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean of the valid rows of each local set, L2-normalised.

    Padded rows are ignored even if they hold garbage (NaN/inf included).

    Args:
        x: ``(B, L, d)`` float local descriptors.
        pad: ``(B, L)`` bool, True = padding.

    Returns:
        ``(B, d)`` in ``x``'s dtype, unit-norm; an all-padding set gives the zero vector.

    Raises:
        ShapeError: shapes disagree or the pad mask is not bool.
    """
    if x.ndim != 3 or pad.shape != x.shape[:2] or pad.dtype != torch.bool:
        raise ShapeError(f"masked_mean_pool needs x (B, L, d) and a bool pad mask (B, L), got x {tuple(x.shape)} "
                         f"and pad {pad.dtype} {tuple(pad.shape)}")
    total = x.masked_fill(pad.unsqueeze(-1), 0.0).sum(dim=1)
    count = (~pad).sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return F.normalize(total / count, dim=-1)


def pooled_features(inputs: FusionInputs, *, dtype: torch.dtype) -> list[torch.Tensor]:
    """One ``(B, D)`` vector per slot, in schema order: the K globals L2-normalised, then the
    M local sets mean-pooled (:func:`masked_mean_pool`); all cast to ``dtype``."""
    out = [F.normalize(g.to(dtype), dim=-1) for g in inputs.globals_]
    out += [masked_mean_pool(x.to(dtype), m) for x, m in zip(inputs.locals_, inputs.local_pads)]
    return out
