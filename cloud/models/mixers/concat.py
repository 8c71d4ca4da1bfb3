"""The concatenation ("ensemble") baseline, optionally PCA-whitened; no trainable parameters.

Each input is L2-normalised (local sets are mean-pooled first, see
:func:`~asymfuse.cloud.models.mixers.base.masked_mean_pool`), the ``K + M`` vectors are
concatenated in schema order, each scaled by its input weight ``w_i`` (default 1) and all by
``1 / sqrt(sum_i w_i^2)``, so the result is unit-norm (shorter only when a local set is all
padding, which pools to zero). Its dimension is ``D = sum_k D_k + sum_m d_m``. A weight below 1
lowers an input's share of the concatenation *before* whitening; measured on the embedded
benchmark, SIFT at 0.5 next to gem_lite1 keeps the fused space at least as good as gem_lite1 and
makes it far easier for a query CNN to predict (the pooled SIFT directions are the ones a CNN
cannot reproduce).

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
``y = (x - mu) @ [v_i / sqrt(lambda_i + eps + shrink * mean_j lambda_j)]`` with ``eps = 1e-6 * lambda_max``
and the mean over the kept eigenvalues. ``shrink = 0`` (default) is full whitening; ``shrink > 0``
damps the tail directions (shrinkage whitening), which are the noisiest to predict from a query net. The relative
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


def check_input_weights(weights: object, *, count: int, names: list[str]) -> tuple[float, ...]:
    """``()`` or ``count`` finite positive floats, one per input in schema order.

    Raises:
        ConfigError: another length, or a weight that is not a finite number > 0.
    """
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise ConfigError(f"input_weights must be a sequence of numbers, got {weights!r}")
    values = tuple(weights)  # type: ignore[arg-type]
    if not values:
        return ()
    if len(values) != count:
        raise ConfigError(f"input_weights has {len(values)} values for the {count} inputs {names}; give one weight "
                          "per input in that order, or () for equal weights")
    for w in values:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w < math.inf:
            raise ConfigError(f"input_weights must be finite numbers > 0, got {list(values)}")
    return tuple(float(w) for w in values)


class ConcatMixer(Mixer):
    """Normalised concatenation (+ PCA whitening): ``FusionInputs`` -> ``(B, embed_dim)`` float32, unit-norm."""

    name = "concat"
    trainable = False

    def __init__(self, *, schema: GallerySchema, embed_dim: int | None, whiten: bool = True,
                 input_weights: tuple[float, ...] = (), shrink: float = 0.0) -> None:
        """
        Args:
            schema: the K global + M local inputs.
            embed_dim: whitened output dimension (``whiten=True``), or ``None`` / the concatenated
                dimension D (``whiten=False``); see the module docstring.
            whiten: learn a PCA whitening with :meth:`fit`.
            input_weights: ``K + M`` positive weights in schema order, or ``()`` for all 1.
            shrink: whitening shrinkage (>= 0, see the module docstring).

        Raises:
            ConfigError: ``whiten`` not a bool, ``embed_dim`` breaks the rule above, bad weights or shrink.
        """
        if not isinstance(whiten, bool):
            raise ConfigError(f"concat mixer: whiten must be True or False, got {whiten!r}")
        slots = check_schema("concat mixer", schema).slots
        weights = check_input_weights(input_weights, count=len(slots), names=[s.name for s in slots])
        if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not 0.0 <= shrink < math.inf:
            raise ConfigError(f"concat mixer: shrink must be a number >= 0, got {shrink!r}")
        total = sum(s.dim for s in slots)
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
        options: dict = {"whiten": whiten}
        if weights:  # recorded only when set, so configs written before the options still match
            options["input_weights"] = list(weights)
        if shrink:
            options["shrink"] = float(shrink)
        super().__init__(schema=schema, embed_dim=out_dim, options=options)
        self.whiten = whiten
        self.input_weights = weights
        self.shrink = float(shrink)
        self.input_dim = total
        if whiten:
            self.register_buffer("mean", torch.zeros(total))
            self.register_buffer("projection", torch.zeros(total, self.embed_dim))
            self.register_buffer("fitted", torch.tensor(False))

    def concatenate(self, inputs: FusionInputs) -> torch.Tensor:
        """``(B, D)`` float32: normalised (pooled) inputs, weighted, concatenated, scaled to unit norm."""
        parts = pooled_features(inputs, dtype=torch.float32)
        if not self.input_weights:
            return torch.cat(parts, dim=1) / math.sqrt(len(parts))
        norm = math.sqrt(sum(w * w for w in self.input_weights))
        return torch.cat([p * (w / norm) for p, w in zip(parts, self.input_weights)], dim=1)

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
        kept = evals.clamp_min(0.0)
        projection = evecs / torch.sqrt(kept + RELATIVE_EPS * top + self.shrink * kept.mean())
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
