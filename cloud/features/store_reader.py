"""Reading the on-disk feature store: memory-mapped shards, verified against their checksums.

See ``STORE_FORMAT.md`` for the layout. Import :class:`FeatureStore` from
:mod:`asymfuse.cloud.features.store`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from asymfuse.cloud.features.base import Features, GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store_format import (
    StoreLayout,
    read_ids,
    read_manifest,
    shard_error,
    verify_file,
)
from asymfuse.edge.errors import ConfigError, UnknownNameError

VerifyMode = Literal["lazy", "eager", "none"]
VERIFY_MODES = ("lazy", "eager", "none")


class FeatureStore:
    """Read-only view of a feature store; arrays are memory-mapped (``np.load(mmap_mode='r')``).

    Rows come back as :class:`GlobalFeatures` ``(n, D)`` float32 or :class:`LocalFeatures`
    ``(n, L, d)`` (descriptors float32; a float16 store is upcast on read). Contiguous reads that
    stay inside one shard are zero-copy ``np.memmap`` views; other reads are copies.

    Checksums: ``verify='lazy'`` hashes each shard file the first time it is read, ``'eager'``
    hashes every file in :meth:`open`, ``'none'`` only checks file sizes.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], layout: StoreLayout, verify: VerifyMode) -> None:
        self._root, self._manifest, self._layout, self._verify = root, manifest, layout, verify
        self._shards: list[dict[str, Any]] = manifest["shards"]
        self._starts = np.array([s["start"] for s in self._shards] + [manifest["num_items"]], dtype=np.int64)
        self._cache: dict[tuple[int, str], np.ndarray] = {}
        self._ids: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._closed = False

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, verify: VerifyMode = "lazy") -> FeatureStore:
        """Open the store in ``root``.

        Raises:
            ConfigError: ``root`` is missing or not a store, or ``verify`` is unknown.
            CorruptDataError: the manifest is bad, or (``verify='eager'``) a shard file is missing,
                truncated or fails its checksum; the message names the shard and the fix.
        """
        if verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        path = Path(root)
        manifest, layout = read_manifest(path)
        store = cls(path, manifest, layout, verify)
        if verify == "eager":
            for shard in manifest["shards"]:
                for key in shard["files"]:
                    verify_file(path, shard, key, check_sha=True)
        return store

    # -- metadata
    @property
    def root(self) -> Path:
        return self._root

    @property
    def layout(self) -> StoreLayout:
        return self._layout

    @property
    def kind(self) -> str:
        """``"global"`` or ``"local"``."""
        return self._layout.kind

    @property
    def dim(self) -> int:
        """Descriptor dimension: D (global) or d (local)."""
        return self._layout.dim

    @property
    def max_local(self) -> int | None:
        """L, slots per image (local stores); None for global stores."""
        return self._layout.max_local

    @property
    def desc_dtype(self) -> str:
        """On-disk dtype of the descriptors, ``"float32"`` or ``"float16"``."""
        return self._layout.desc_dtype

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the free-form metadata (extractor_id, model spec, ...)."""
        return _json_copy(self._manifest["meta"])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __len__(self) -> int:
        return int(self._manifest["num_items"])

    def __repr__(self) -> str:
        return (f"FeatureStore(root={str(self._root)!r}, kind={self.kind!r}, n={len(self)}, dim={self.dim}, "
                f"max_local={self.max_local}, shards={self.num_shards})")

    @property
    def ids(self) -> list[str]:
        """The ``N`` item ids in row order (a copy).

        Raises:
            CorruptDataError: an ids file is missing, truncated, fails its checksum or is malformed.
        """
        return list(self._all_ids())

    def index_of(self, item_id: str) -> int:
        """Row index of ``item_id``.

        Raises:
            UnknownNameError: the id is not in the store.
        """
        if self._index is None:
            self._index = {item: n for n, item in enumerate(self._all_ids())}
        try:
            return self._index[item_id]
        except KeyError:
            raise UnknownNameError(f"id {item_id!r} is not in feature store {self._root} "
                                   f"({len(self)} items); check the id or re-extract with it") from None

    # -- data
    def global_features(self) -> np.ndarray:
        """All global features, ``(N, D)`` float32 (unit-norm if the extractor's were).

        A single-shard store returns its ``np.memmap`` itself; several shards are concatenated
        into memory (use :meth:`iter_batches` to stream a large store).

        Raises:
            ConfigError: this is a local store, or the store is closed.
            CorruptDataError: a shard file is missing, truncated or fails its checksum.
        """
        self._check_open()
        if self.kind != "global":
            raise ConfigError("global_features() needs a global store; this one holds local features: "
                              "use get() or iter_batches()")
        return self._rows(0, len(self))["features"]

    def get(self, indices: Sequence[int] | np.ndarray | slice) -> Features:
        """Rows ``indices`` (in the given order) as :class:`GlobalFeatures` or :class:`LocalFeatures`.

        Raises:
            ConfigError: an index is not an int in ``[0, N)``, or the store is closed.
            CorruptDataError: a shard file is missing, truncated or fails its checksum.
        """
        self._check_open()
        if isinstance(indices, slice):
            start, stop, step = indices.indices(len(self))
            if step == 1:
                return self._features(self._rows(start, max(start, stop)))
            idx = np.arange(start, stop, step, dtype=np.int64)
        else:
            idx = self._check_indices(indices)
        return self._features(self._gather(idx))

    def iter_batches(self, batch_size: int) -> Iterator[tuple[list[str], Features]]:
        """Stream the store in row order as ``(ids, features)`` batches of ``batch_size`` rows
        (the last may be smaller); batches inside one shard are zero-copy memmap views.

        Raises:
            ConfigError: ``batch_size < 1``, or the store is closed.
            CorruptDataError: a shard file is missing, truncated or fails its checksum.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_open()
        ids = self._all_ids()
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield ids[start:stop], self._features(self._rows(start, stop))

    def close(self) -> None:
        """Drop the memory maps held by this object (arrays already returned stay valid). Idempotent."""
        self._cache.clear()
        self._ids = self._index = None
        self._closed = True

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"feature store {self._root} is closed; open it again with FeatureStore.open")

    def _all_ids(self) -> list[str]:
        self._check_open()
        if self._ids is None:
            check = self._verify == "lazy"
            self._ids = [i for shard in self._shards for i in read_ids(self._root, shard, check_sha=check)]
        return self._ids

    def _array(self, si: int, key: str) -> np.ndarray:
        """Shard ``si``'s array ``key`` as a validated read-only memmap (verified on first access)."""
        cached = self._cache.get((si, key))
        if cached is not None:
            return cached
        shard = self._shards[si]
        path = verify_file(self._root, shard, key, check_sha=self._verify == "lazy")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise shard_error(self._root, shard["name"], f"shard file {path.name} is unreadable ({exc})") from exc
        row_shape, dtype = self._layout.arrays()[key]
        if arr.shape != (shard["count"], *row_shape) or arr.dtype != np.dtype(dtype):
            raise shard_error(self._root, shard["name"], f"shard file {path.name} holds {arr.shape} {arr.dtype}, "
                              f"expected {(shard['count'], *row_shape)} {dtype}")
        self._cache[(si, key)] = arr
        return arr

    def _empty(self) -> dict[str, np.ndarray]:
        return {k: np.zeros((0, *shape), dtype) for k, (shape, dtype) in self._layout.arrays().items()}

    def _rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)``: views when inside one shard, else concatenated copies."""
        pieces = []
        si = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            s0, s1 = int(self._starts[si]), int(self._starts[si + 1])
            end = min(stop, s1)
            pieces.append({k: self._array(si, k)[start - s0:end - s0] for k in self._layout.arrays()})
            start, si = end, si + 1
        if not pieces:
            return self._empty()
        if len(pieces) == 1:
            return pieces[0]
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows at arbitrary indices ``idx`` (validated), copied in the given order."""
        out = {k: np.empty((len(idx), *shape), dtype) for k, (shape, dtype) in self._layout.arrays().items()}
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for si in np.unique(shard_of):
            sel = shard_of == si
            local = idx[sel] - self._starts[si]
            for key, arr in out.items():
                arr[sel] = self._array(int(si), key)[local]
        return out

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim > 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ConfigError(f"indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
        idx = idx.reshape(-1).astype(np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise ConfigError(f"index {int(bad[0])} is out of range for a store of {len(self)} items; "
                              f"use indices in [0, {len(self)})")
        return idx

    def _features(self, arrays: dict[str, np.ndarray]) -> Features:
        if self.kind == "global":
            return GlobalFeatures(features=arrays["features"])
        desc = arrays["descriptors"]
        return LocalFeatures(descriptors=desc if desc.dtype == np.float32 else desc.astype(np.float32),
                             weights=arrays["weights"], mask=arrays["mask"], xy=arrays["xy"], scale=arrays["scale"])


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value))
