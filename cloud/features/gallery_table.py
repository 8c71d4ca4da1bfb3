"""Frozen gallery features of a set of images, gathered from feature stores into one in-memory table.

:class:`GalleryTable` / :func:`load_gallery_table` read the gallery feature stores of ``N`` items
in a fixed id order and serve them as :class:`FusionInputs` batches: the mixer's training data,
and what ``index fuse`` runs a trained mixer over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.features.store import FeatureStore
from asymfuse.cloud.models.fusion import FeatureSlot, FusionInputs, GallerySchema
from asymfuse.edge.errors import ConfigError, CorruptDataError

LOG = logging.getLogger(__name__)

_SHOW = 5  # how many missing ids an error message lists


@dataclass(frozen=True)
class _Slot:
    slot: FeatureSlot
    store: Path
    values: np.ndarray            # (N, D) global or (N, L, d) local, float32
    mask: np.ndarray | None       # (N, L) bool, True = padding (local only)


class GalleryTable:
    """Frozen gallery features of ``N`` images, all in memory, in a fixed row (id) order.

    Slots follow :attr:`schema`: global stores first, then local stores, each group in the order
    the stores were given. Global rows are ``(D,)`` float32; local rows ``(local_tokens, d)``
    float32 (the store's top-weighted descriptors, zero at padding) with a ``(local_tokens,)`` bool
    mask, True = padding.
    """

    def __init__(self, *, ids: Sequence[str], slots: Sequence[_Slot]) -> None:
        self._ids = tuple(ids)
        self._slots = tuple(slots)
        self._schema = GallerySchema(tuple(s.slot for s in self._slots))

    @property
    def schema(self) -> GallerySchema:
        return self._schema

    @property
    def ids(self) -> tuple[str, ...]:
        """The ``N`` item ids, in row order."""
        return self._ids

    @property
    def store_roots(self) -> tuple[Path, ...]:
        """The store folders, in schema order."""
        return tuple(s.store for s in self._slots)

    def __len__(self) -> int:
        return len(self._ids)

    def inputs(self, indices: Sequence[int] | np.ndarray | torch.Tensor | slice) -> FusionInputs:
        """Rows ``indices`` (in the given order) as a CPU :class:`FusionInputs` batch.

        Raises:
            ConfigError: an index is not an int in ``[0, N)``.
        """
        idx = self._check_indices(indices)
        glob, loc, masks = [], [], []
        for s in self._slots:
            rows = torch.from_numpy(np.ascontiguousarray(s.values[idx]))
            if s.mask is None:
                glob.append(rows)
            else:
                loc.append(rows)
                masks.append(torch.from_numpy(np.ascontiguousarray(s.mask[idx])))
        return FusionInputs(tuple(glob), tuple(loc), tuple(masks))

    def global_matrix(self, slot: int | str) -> np.ndarray:
        """All rows of one global slot (by schema index or name), ``(N, D)`` float32, read-only.

        Raises:
            ConfigError: no such slot, or the slot is local.
        """
        names = list(self._schema.names)
        if isinstance(slot, str):
            if slot not in names:
                raise ConfigError(f"no feature slot named {slot!r}; the table has {names}")
            slot = names.index(slot)
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < len(names):
            raise ConfigError(f"slot index {slot!r} is out of range; the table has {len(names)} slots {names}")
        entry = self._slots[int(slot)]
        if entry.mask is not None:
            raise ConfigError(f"slot {entry.slot.name!r} holds local features; global_matrix() needs a global slot")
        view = entry.values.view()
        view.setflags(write=False)
        return view

    def _check_indices(self, indices: Sequence[int] | np.ndarray | torch.Tensor | slice) -> np.ndarray:
        n = len(self)
        if isinstance(indices, slice):
            return np.arange(n, dtype=np.int64)[indices]
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ConfigError(f"indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= n:
            raise ConfigError(f"indices must lie in [0, {n}), got values in [{idx.min()}, {idx.max()}]")
        return idx.astype(np.int64)


def load_gallery_table(store_roots: Sequence[str | os.PathLike[str]], *, ids: Sequence[str], local_tokens: int,
                       names: Sequence[str] | None = None) -> GalleryTable:
    """Gather the rows of ``ids`` from each feature store into one in-memory :class:`GalleryTable`.

    Args:
        store_roots: one feature store per gallery feature, global or local, any order: global
            stores are moved before local ones (keeping each group's order), as the schema requires.
        ids: the ``N`` item ids; row ``r`` of the table is ``ids[r]`` in every store.
        local_tokens: descriptors per image kept from local stores: their first (top-weighted)
            ``local_tokens`` slots, padded (mask True, zeros) when the store holds fewer.
        names: slot names, one per store (default: the store's ``extractor_name`` metadata, else
            the feature folder of the cache layout ``<features_dir>/<name>/<part>/gallery``, else
            the store folder's name).

    Raises:
        ConfigError: no stores, bad ``local_tokens``, duplicate slot names, a store that is not a
            store, or ids missing from a store (the message counts them and says to extract).
        CorruptDataError: a store holds NaN/inf (names the store and the first bad id; fix: delete
            it and re-extract) or fails its checksums.
    """
    if not store_roots:
        raise ConfigError("load_gallery_table needs at least one feature store")
    if isinstance(local_tokens, bool) or not isinstance(local_tokens, int) or local_tokens < 1:
        raise ConfigError(f"local_tokens must be a positive int, got {local_tokens!r}")
    if names is not None and len(names) != len(store_roots):
        raise ConfigError(f"got {len(names)} names for {len(store_roots)} stores; pass one name per store")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ConfigError("ids contain duplicates; every table row needs a unique id")
    slots = [_load_slot(Path(root), ids=ids, local_tokens=local_tokens, name=None if names is None else names[k])
             for k, root in enumerate(store_roots)]
    ordered = [s for s in slots if s.mask is None] + [s for s in slots if s.mask is not None]
    if ordered != slots:
        LOG.info("gallery stores reordered global-first: %s", [s.slot.name for s in ordered])
    seen = [s.slot.name for s in ordered]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"two feature stores share a slot name ({seen}); pass distinct names= "
                          "or give each store its own extractor_name")
    return GalleryTable(ids=ids, slots=ordered)


def _load_slot(root: Path, *, ids: list[str], local_tokens: int, name: str | None) -> _Slot:
    with FeatureStore.open(root, verify="lazy") as store:
        meta = store.meta
        rows = _rows_of(store, ids)
        features = store.get(rows)
        if store.kind == "global":
            values, mask = np.array(features.features, dtype=np.float32), None
            _check_finite(values, root=root, ids=ids)
        else:
            _check_finite(features.descriptors, root=root, ids=ids)
            values, mask = _fit_tokens(features.descriptors, features.mask, local_tokens)
        slot = FeatureSlot(name=name or _slot_name(root, meta), kind=store.kind, dim=int(store.dim),  # type: ignore[arg-type]
                           max_local=None if store.kind == "global" else local_tokens,
                           extractor_id=str(meta.get("extractor_id") or ""))
    return _Slot(slot=slot, store=root, values=values, mask=mask)


def _rows_of(store: FeatureStore, ids: list[str]) -> np.ndarray:
    position = {item: r for r, item in enumerate(store.ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:_SHOW])
        raise ConfigError(f"feature store {store.root} lacks {len(missing)} of the {len(ids)} requested ids "
                          f"(e.g. {shown}); extract features for this training set into it (e.g. "
                          "feature_cache.ensure_training_features) or point at the right store")
    return np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))


def _fit_tokens(desc: np.ndarray, mask: np.ndarray, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``tokens`` slots (valid slots come first, by decreasing weight); pad with masked zeros."""
    n, length, d = desc.shape
    keep = min(length, tokens)
    values = np.zeros((n, tokens, d), dtype=np.float32)
    pad = np.ones((n, tokens), dtype=bool)
    values[:, :keep] = desc[:, :keep]
    pad[:, :keep] = mask[:, :keep]
    values[pad] = 0.0
    return values, pad


def _check_finite(values: np.ndarray, *, root: Path, ids: list[str]) -> None:
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        first = ids[int(np.flatnonzero(bad)[0])]
        raise CorruptDataError(f"feature store {root} holds NaN or inf for {int(bad.sum())} items (first: id "
                               f"{first!r}); delete the store folder and re-extract it")


def _slot_name(root: Path, meta: dict[str, Any]) -> str:
    if meta.get("extractor_name"):
        return str(meta["extractor_name"])
    if root.name in ("gallery", "queries") and root.parent.parent.name:
        return root.parent.parent.name  # <features_dir>/<name>/<part>/gallery
    return root.name
