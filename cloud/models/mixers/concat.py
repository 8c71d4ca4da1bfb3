"""The concatenation ("ensemble") baseline, optionally PCA-whitened; no trainable parameters.

Each input is L2-normalised (local sets are mean-pooled first, see
:func:`~asymfuse.cloud.models.mixers.base.masked_mean_pool`), the ``K + M`` vectors are
concatenated in schema order and scaled by ``1 / sqrt(K + M)``, so the result is unit-norm
(shorter only when a local set is all padding, which pools to zero). Its dimension is
``D = sum_k D_k + sum_m d_m``.

Dimension rule:
    - ``whiten=True`` (default): ``embed_dim`` is the PCA-whitened output dimension, ``1 <= embed_dim <= D``,
      and :meth:`ConcatMixer.fit` must run on training rows before ``forward``; fitting needs
      ``embed_dim <= min(N - 1, D)`` for N training rows.
    - ``whiten=False``: the output is the plain concatenation, so ``embed_dim`` must be ``None`` or
      exactly ``D`` (anything else is a ConfigError rather than being silently ignored);
      :attr:`ConcatMixer.embed_dim` is then ``D``.

Whitening (learnt by :meth:`ConcatMixer.fit`, computed in float64): centre on the training mean
``mu``, eigendecompose the covariance ``C = Xc^T Xc / (N - 1)``, keep the top ``embed_dim`` eigenvectors
``v_i`` (sign fixed so that each one's largest-magnitude entry is positive) and project
``y = (x - mu) @ [v_i / sqrt(lambda_i + eps)]`` with ``eps = 1e-6 * lambda_max``. The relative
``eps`` keeps near-null directions from being blown up by at most a factor 1e3 relative to the
leading one, whatever the feature scale; the whitened training rows have covariance
``diag(lambda_i / (lambda_i + eps))``, i.e. identity up to that damping. The output is L2-normalised.
The fitted ``mean``/``projection``/``fitted`` buffers exist from construction with their final
shapes, so ``load_state_dict`` restores a fitted mixer into a fresh instance.
"""

from __future__ import annotations

import math

import torch

from asymfuse.cloud.models.fusion import FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers.base import Mixer, check_positive_int, check_schema, pooled_features
from asymfuse.edge.errors import ConfigError

RELATIVE_EPS = 1e-6
"""Whitening regulariser, relative to the largest covariance eigenvalue."""


class ConcatMixer(Mixer):
    """Normalised concatenation (+ PCA whitening): ``FusionInputs`` -> ``(B, embed_dim)`` float32, unit-norm."""

    name = "concat"
    trainable = False

    def __init__(self, *, schema: GallerySchema, embed_dim: int | None, whiten: bool = True) -> None:
        """
        Args:
            schema: the K global + M local inputs.
            embed_dim: whitened output dimension (``whiten=True``), or ``None`` / the concatenated
                dimension D (``whiten=False``); see the module docstring.
            whiten: learn a PCA whitening with :meth:`fit`.

        Raises:
            ConfigError: ``whiten`` not a bool, or ``embed_dim`` breaks the rule above.
        """
        if not isinstance(whiten, bool):
            raise ConfigError(f"concat mixer: whiten must be True or False, got {whiten!r}")
        total = sum(s.dim for s in check_schema("concat mixer", schema).slots)
        out_dim = total
        if whiten:
            out_dim = check_positive_int("concat mixer: embed_dim", embed_dim)
            if out_dim > total:
                raise ConfigError(f"concat mixer: whitened embed_dim={embed_dim} exceeds the concatenated dimension "
                                  f"{total}; "
                                  f"use embed_dim <= {total} or whiten=False")
        elif embed_dim is not None and embed_dim != total:
            raise ConfigError(f"concat mixer: with whiten=False the output is the plain concatenation of "
                              f"dimension {total}; pass embed_dim=None or embed_dim={total}, or set whiten=True")
        super().__init__(schema=schema, embed_dim=out_dim, options={"whiten": whiten})
        self.whiten = whiten
        self.input_dim = total
        if whiten:
            self.register_buffer("mean", torch.zeros(total))
            self.register_buffer("projection", torch.zeros(total, self.embed_dim))
            self.register_buffer("fitted", torch.tensor(False))

    def concatenate(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, D)`` float32: normalised (pooled) inputs, concatenated, scaled by 1/sqrt(K + M)."""
        parts = pooled_features(inputs, dtype=torch.float32)
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))

    @torch.no_grad()
    def fit(self, inputs: FusionInputs) -> None:
        """Learn the PCA whitening from training rows (no-op when ``whiten=False``).

        Args:
            inputs: N training rows.

        Raises:
            ShapeError: the batch does not match the schema.
            ConfigError: ``embed_dim > min(N - 1, D)``, or the training features are all identical.
        """
        inputs.check(self.schema)
        if not self.whiten:
            return
        x = self.concatenate(inputs).to("cpu", torch.float64)
        n = x.shape[0]
        limit = min(n - 1, self.input_dim)
        if self.embed_dim > limit:
            raise ConfigError(f"concat mixer: whitening to embed_dim={self.embed_dim} needs embed_dim <= "
                              f"min(N - 1, D) = {limit} "
                              f"(N={n} training rows, D={self.input_dim}); lower embed_dim or fit on more rows")
        mean = x.mean(dim=0)
        xc = x - mean
        evals, evecs = torch.linalg.eigh(xc.T @ xc / (n - 1))  # ascending
        evals, evecs = evals.flip(0)[: self.embed_dim], evecs.flip(1)[:, : self.embed_dim]
        top = float(evals[0])
        if not top > 0:
            raise ConfigError("concat mixer: the training features have zero variance; fit on distinct rows")
        rows = evecs.abs().argmax(dim=0)
        evecs = evecs * torch.sign(evecs[rows, torch.arange(self.embed_dim)])
        projection = evecs / torch.sqrt(evals.clamp_min(0.0) + RELATIVE_EPS * top)
        self.mean.copy_(mean.to(self.mean))
        self.projection.copy_(projection.to(self.projection))
        self.fitted.fill_(True)

    def mix(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, embed_dim)``: the scaled concatenation, whitened when ``whiten=True`` (not yet normalised).

        Raises:
            ConfigError: ``whiten=True`` and :meth:`fit` has not run (nor a fitted state dict loaded).
        """
        x = self.concatenate(inputs)
        if not self.whiten:
            return x
        if not bool(self.fitted):
            raise ConfigError("concat mixer with whiten=True is not fitted: call fit(train inputs) first, "
                              "or load a fitted state dict")
        return (x - self.mean) @ self.projection
