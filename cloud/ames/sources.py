"""Where AMES finds the local descriptors of gallery items: the :class:`GalleryLocals` protocol.

A source answers two questions about items (0-based indices): how many valid descriptors each
has (:meth:`GalleryLocals.counts`) and what their projected tokens are
(:meth:`GalleryLocals.tokens`). Two implementations exist:

- :class:`ArrayLocals` (here): float descriptors held in memory, projected on the fly by
  ``model.project(..., gallery=True)``. It works for the full-precision and the binary model (the
  binary one signs the descriptors on the fly), and it also serves the query side of offline
  evaluation (:meth:`ArrayLocals.descriptors`).
- :class:`asymfuse.cloud.ames.packed_store.PackedLocalStore`: the binary gallery, 16 bytes per
  descriptor, unpacked on the fly.

Slot order is the extractor's (detector score, best first), so "the first ``L`` valid slots" are
the top-``L`` descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

_READ_BATCH = 1024


class MissingLocalsWarning(UserWarning):
    """A query or candidate without local descriptors (a featureless photo): AMES leaves its global score."""


@runtime_checkable
class GalleryLocals(Protocol):
    """Local descriptors of ``len(self)`` items, addressed by 0-based index."""

    def __len__(self) -> int: ...

    def counts(self, indices: np.ndarray) -> np.ndarray:
        """``(n,)`` int: valid descriptors of each item in ``indices``."""
        ...

    def tokens(self, model: AMES, indices: np.ndarray, *, length: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (n, length, model_dim), pad (n, length) bool)`` on ``device``, True = padding;
        item ``i`` holds its first ``min(count_i, length)`` valid slots, then padding."""
        ...


def check_indices(indices: Sequence[int] | np.ndarray, n: int, *, what: str) -> np.ndarray:
    """``indices`` as a ``(k,)`` int64 array, each in ``[0, n)``.

    Raises:
        ConfigError: not a 1-D integer sequence, or an index out of range.
    """
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"{what} indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise ConfigError(f"index {int(bad[0])} is out of range for {what} of {n} items; use indices in [0, {n})")
    return idx


def check_length(length: object, name: str = "length") -> int:
    """Raises: ConfigError: ``length`` is not a positive int."""
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
        raise ConfigError(f"{name} must be a positive int, got {length!r}")
    return int(length)


def compact_valid(descriptors: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the valid slots of each row to the front, keeping their order; zero the rest.

    Args:
        descriptors: ``(N, L, d)``; mask: ``(N, L)`` bool, True = padding.

    Returns:
        ``(descriptors (N, L, d) float32, counts (N,) int64)``; a new array (the input is not modified).
    """
    counts = (~mask).sum(axis=1).astype(np.int64)
    slots = np.arange(mask.shape[1])[None, :]
    out = np.array(descriptors, dtype=np.float32, copy=True)
    if not np.array_equal(mask, slots >= counts[:, None]):
        order = np.argsort(mask, axis=1, kind="stable")  # False (valid) first, store order kept
        out = np.take_along_axis(out, order[..., None], axis=1)
    out[slots >= counts[:, None]] = 0.0
    return out, counts


class ArrayLocals:
    """In-memory float local descriptors, a :class:`GalleryLocals`.

    Args:
        descriptors: ``(N, L, d)`` float (any norm; AMES normalises), padding slots may hold anything.
        mask: ``(N, L)`` bool, True = padding; None = every slot is valid.
        ids: optional ``N`` item ids, used in error messages.
        max_local: keep only the first ``max_local`` valid slots per item (saves memory).

    Raises:
        ShapeError: wrong ranks or shapes.
        CorruptDataError: NaN/inf in a valid slot (the message names the item).
        ConfigError: bad ``max_local`` or ``ids`` length.
    """

    def __init__(self, descriptors: np.ndarray, mask: np.ndarray | None = None, *,
                 ids: Sequence[str] | None = None, max_local: int | None = None) -> None:
        desc = np.asarray(descriptors)
        if desc.ndim != 3 or not np.issubdtype(desc.dtype, np.floating):
            raise ShapeError(f"descriptors must be a (N, L, d) float array, got {desc.dtype} {desc.shape}")
        pad = np.zeros(desc.shape[:2], dtype=bool) if mask is None else np.asarray(mask)
        if pad.shape != desc.shape[:2] or pad.dtype != np.bool_:
            raise ShapeError(f"mask must be bool {desc.shape[:2]} (True = padding), got {pad.dtype} {pad.shape}")
        if ids is not None and len(ids) != desc.shape[0]:
            raise ConfigError(f"{len(ids)} ids for {desc.shape[0]} descriptor sets; give one id per item")
        ids_list = None if ids is None else [str(i) for i in ids]
        _check_finite(desc, pad, ids_list)
        compact, counts = compact_valid(desc, pad)
        if max_local is not None:
            keep = check_length(max_local, "max_local")
            compact, counts = np.ascontiguousarray(compact[:, :keep]), np.minimum(counts, keep)
        self._desc, self._counts, self._ids = compact, counts, ids_list

    @classmethod
    def from_store(cls, store: FeatureStore, *, max_local: int | None = None) -> ArrayLocals:
        """All items of a local feature store, in store order (ids kept for messages).

        Reads the store in batches into one ``(N, L, d)`` float32 array (``L = max_local`` or the
        store's); no second copy is made.

        Raises:
            ConfigError: a global store, a closed store or a bad ``max_local``.
            CorruptDataError: unreadable shards, or NaN/inf in a valid slot.
        """
        if store.kind != "local":
            raise ConfigError(f"{store.root} holds global features; AMES needs a local feature store")
        keep = store.max_local if max_local is None else min(check_length(max_local, "max_local"), store.max_local)
        n = len(store)
        desc = np.zeros((n, keep, store.dim), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        for start in range(0, n, _READ_BATCH):
            feats: LocalFeatures = store.get(slice(start, min(n, start + _READ_BATCH)))  # type: ignore[assignment]
            d, c = compact_valid(feats.descriptors, feats.mask)
            desc[start:start + len(c)] = d[:, :keep]
            counts[start:start + len(c)] = np.minimum(c, keep)
        ids = store.ids
        _check_finite(desc, np.arange(keep)[None, :] >= counts[:, None], ids)
        obj = cls.__new__(cls)
        obj._desc, obj._counts, obj._ids = desc, counts, ids
        return obj

    # -- metadata
    def __len__(self) -> int:
        return int(self._desc.shape[0])

    def __repr__(self) -> str:
        return f"ArrayLocals(n={len(self)}, max_local={self.max_local}, dim={self.dim})"

    @property
    def dim(self) -> int:
        """Descriptor dimension ``d``."""
        return int(self._desc.shape[2])

    @property
    def max_local(self) -> int:
        """Slots per item ``L``."""
        return int(self._desc.shape[1])

    @property
    def ids(self) -> list[str] | None:
        """The item ids given at construction (a copy), or None."""
        return None if self._ids is None else list(self._ids)

    # -- data
    def counts(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(n,)`` int64 valid descriptors of items ``indices``.

        Raises:
            ConfigError: bad indices.
        """
        return self._counts[check_indices(indices, len(self), what="the local descriptor source")]

    def descriptors(self, indices: Sequence[int] | np.ndarray, *, length: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw descriptors of items ``indices``, valid slots first.

        Returns:
            ``(descriptors (n, length, d) float32 (padding zeroed), pad (n, length) bool)``;
            ``length`` defaults to :attr:`max_local` (longer lengths are zero-padded).

        Raises:
            ConfigError: bad indices or ``length``.
        """
        idx = check_indices(indices, len(self), what="the local descriptor source")
        length = self.max_local if length is None else check_length(length)
        out = np.zeros((idx.size, length, self.dim), dtype=np.float32)
        keep = min(length, self.max_local)
        out[:, :keep] = self._desc[idx, :keep]
        pad = np.arange(length)[None, :] >= self._counts[idx][:, None]
        return out, pad

    def tokens(self, model: AMES, indices: Sequence[int] | np.ndarray, *, length: int,
               device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Gallery tokens ``model.project(desc, pad, gallery=True)`` of items ``indices``.

        Returns:
            ``(tokens (n, length, model_dim), pad (n, length) bool, True = padding)`` on ``device``
            in the model's dtype; the first ``min(count, length)`` valid slots, then padding.

        Raises:
            ShapeError: the descriptors are not ``model.cfg.local_dim``-d.
            ConfigError: bad indices or ``length``.
        """
        if self.dim != model.cfg.local_dim:
            raise ShapeError(f"these local descriptors are {self.dim}-d but the AMES checkpoint expects "
                             f"{model.cfg.local_dim}-d; use the local feature the checkpoint was trained on")
        desc, pad = self.descriptors(indices, length=check_length(length))
        dtype = model.mtc_token.dtype
        x = torch.from_numpy(desc).to(device=device, dtype=dtype)
        p = torch.from_numpy(pad).to(device)
        return model.project(x, p, gallery=True), p


def _check_finite(desc: np.ndarray, pad: np.ndarray, ids: list[str] | None) -> None:
    bad = ~np.isfinite(desc).all(axis=-1) & ~pad
    if bad.any():
        item = int(np.flatnonzero(bad.any(axis=1))[0])
        name = f"item {item}" + ("" if ids is None else f" ({ids[item]!r})")
        raise CorruptDataError(f"{name} has NaN/inf in local descriptor slot(s) "
                               f"{np.flatnonzero(bad[item]).tolist()[:5]}; re-extract its local features")
