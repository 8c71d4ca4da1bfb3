"""Writing the on-disk feature store: sharded ``.npy`` arrays plus a JSON manifest.

One store holds either global features ``(N, D)`` or padded local features ``(N, L, d)`` with
their weights, padding mask, keypoints and scales, each row keyed by a string id. The layout,
the atomic-write rules and the checksum rules are documented in ``STORE_FORMAT.md`` next to this
module. Writers append through :class:`FeatureStoreWriter`; readers memory-map shards through
:class:`FeatureStore` (defined in ``store_reader`` and re-exported here). One writer per store at
a time (an advisory lock enforces it on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.features.base import Features, GlobalFeatures
from asymfuse.cloud.features.store_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    SHARD_FILE,
    TMP_PREFIX,
    StoreLayout,
    acquire_lock,
    atomic_write,
    check_features,
    intact_prefix,
    read_ids,
    read_manifest,
    release_lock,
    remove_store_files,
    write_manifest,
)
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.edge.errors import ConfigError, ShapeError

__all__ = ["FeatureStore", "FeatureStoreWriter", "StoreLayout", "create_store_from_arrays", "new_store",
           "remove_store_files"]


class FeatureStoreWriter:
    """Appends items to a store; every ``shard_size`` items become one atomically written shard.

    Use :meth:`create` or :meth:`open_for_resume`; close with :meth:`close` or a ``with`` block.
    Closing (also when the block raises) writes the buffered items as a final, possibly smaller
    shard, so appended work is never lost by an exception; call :meth:`abort` to drop it instead.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], layout: StoreLayout, ids: list[str],
                 lock_fd: int | None) -> None:
        self._root, self._manifest, self._layout, self._lock_fd = root, manifest, layout, lock_fd
        self._ids, self._id_set = ids, set(ids)
        self._buf_ids: list[str] = []
        self._buf: list[dict[str, np.ndarray]] = []
        self._closed = self._failed = False

    @classmethod
    def create(cls, root: str | os.PathLike[str], *, kind: str, dim: int, max_local: int | None = None,
               desc_dtype: str = "float32", meta: dict[str, Any] | None = None, shard_size: int = 1024,
               overwrite: bool = False) -> FeatureStoreWriter:
        """Start a new, empty store in ``root`` (created if needed).

        Raises:
            ConfigError: bad layout/shard_size, ``meta`` not JSON-serialisable, ``root`` already holds
                a store and ``overwrite`` is False, or another writer holds the store.
        """
        layout = StoreLayout(kind=kind, dim=dim, max_local=max_local, desc_dtype=desc_dtype)
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size must be a positive int, got {shard_size!r}")
        try:
            meta = json.loads(json.dumps(dict(meta or {})))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"store meta must be JSON-serialisable: {exc}") from exc
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = acquire_lock(path)
        try:
            existing = [p.name for p in path.iterdir() if p.name == MANIFEST or SHARD_FILE.match(p.name)]
            if existing and not overwrite:
                raise ConfigError(f"{path} already holds a feature store; open it with FeatureStore.open, "
                                  "continue it with FeatureStoreWriter.open_for_resume, or pass overwrite=True")
            remove_store_files(path)
            manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **layout.to_json(),
                        "shard_size": shard_size, "num_items": 0, "meta": meta, "shards": []}
            write_manifest(path, manifest)
        except BaseException:
            release_lock(lock_fd)
            raise
        return cls(path, manifest, layout, [], lock_fd)

    @classmethod
    def open_for_resume(cls, root: str | os.PathLike[str]) -> FeatureStoreWriter:
        """Reopen a store to append more items after its last complete shard.

        Removes temp files and shard files the manifest does not list (left by a crash). A listed
        shard whose files are missing or have the wrong size is dropped with all later shards, so
        resuming recomputes them.

        Raises:
            ConfigError: ``root`` is not a store, or another writer holds it.
            CorruptDataError: the manifest or an ids file is unreadable.
        """
        path = Path(root)
        read_manifest(path)  # fail before creating a lock file in a folder that is not a store
        lock_fd = acquire_lock(path)
        try:
            manifest, layout = read_manifest(path)  # re-read under the lock
            keep = intact_prefix(path, manifest["shards"])
            if keep < len(manifest["shards"]):
                manifest["shards"] = manifest["shards"][:keep]
                manifest["num_items"] = sum(s["count"] for s in manifest["shards"])
                write_manifest(path, manifest)
            listed = {f["file"] for s in manifest["shards"] for f in s["files"].values()}
            for entry in path.iterdir():
                if entry.name.startswith(TMP_PREFIX) or (SHARD_FILE.match(entry.name) and entry.name not in listed):
                    entry.unlink(missing_ok=True)
            ids = [i for s in manifest["shards"] for i in read_ids(path, s, check_sha=False)]
        except BaseException:
            release_lock(lock_fd)
            raise
        return cls(path, manifest, layout, ids, lock_fd)

    # -- properties
    @property
    def root(self) -> Path:
        return self._root

    @property
    def layout(self) -> StoreLayout:
        return self._layout

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the free-form metadata recorded at creation."""
        return json.loads(json.dumps(self._manifest["meta"]))

    @property
    def ids(self) -> list[str]:
        """Ids appended so far (complete shards, then buffered items)."""
        return [*self._ids, *self._buf_ids]

    @property
    def num_committed(self) -> int:
        """Number of items in complete shards listed by the manifest."""
        return int(self._manifest["num_items"])

    def __len__(self) -> int:
        return len(self._ids) + len(self._buf_ids)

    # -- writing
    def append(self, ids: Sequence[str], features: Features) -> None:
        """Buffer a batch; full shards are written as they fill.

        Args:
            ids: ``B`` unique, non-empty string ids.
            features: :class:`GlobalFeatures` ``(B, dim)`` or :class:`LocalFeatures`
                ``(B, max_local, dim)`` matching the store; finite values only.

        Raises:
            ConfigError: the writer is closed/failed, ids are not strings, or an id is a duplicate.
            ShapeError: wrong kind, dim or max_local, ``len(ids) != B``, or NaN/inf values.
        """
        self._check_open()
        arrays = check_features(self._layout, features)
        ids = list(ids)
        if len(ids) != len(features):
            raise ShapeError(f"got {len(ids)} ids for {len(features)} feature rows; pass one id per row")
        for item in ids:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"ids must be non-empty strings, got {item!r}")
        new_ids = set(ids)
        clash = (new_ids & self._id_set) or ([] if len(new_ids) == len(ids) else _first_repeat(ids))
        if clash:
            raise ConfigError(f"duplicate id {min(clash)!r}; every item in a store needs a unique id")
        self._id_set |= new_ids
        self._buf_ids.extend(ids)
        self._buf.append(arrays)
        shard_size = int(self._manifest["shard_size"])
        while len(self._buf_ids) >= shard_size:
            self._write_shard(shard_size)

    def flush(self) -> None:
        """Write all buffered items as one (possibly smaller) shard.

        Raises:
            ConfigError: the writer is closed or failed earlier.
        """
        self._check_open()
        if self._buf_ids:
            self._write_shard(len(self._buf_ids))

    def abort(self) -> None:
        """Drop buffered items and release the store; complete shards stay. Safe to call twice."""
        self._buf_ids, self._buf = [], []
        self._closed = True
        release_lock(self._lock_fd)
        self._lock_fd = None

    def close(self) -> None:
        """Flush buffered items (unless an earlier write failed) and release the store. Idempotent."""
        try:
            if not self._closed and not self._failed:
                self.flush()
        finally:
            self.abort()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("the feature-store writer is closed; reopen it with FeatureStoreWriter.open_for_resume")
        if self._failed:
            raise ConfigError("an earlier shard write failed; close this writer and reopen the store "
                              "with FeatureStoreWriter.open_for_resume")

    def _write_shard(self, count: int) -> None:
        """Write the first ``count`` buffered items as the next shard, then list it in the manifest."""
        merged = {k: np.concatenate([b[k] for b in self._buf]) for k in self._buf[0]}
        ids = self._buf_ids[:count]
        name = f"shard-{len(self._manifest['shards']):05d}"
        entry: dict[str, Any] = {"name": name, "start": int(self._manifest["num_items"]), "count": count}
        try:
            text = json.dumps(ids).encode("utf-8")
            files = {"ids": _write_file(self._root, f"{name}.ids.json", lambda f: f.write(text))}
            for key, data in merged.items():
                files[key] = _write_file(self._root, f"{name}.{key}.npy", _npy_writer(data[:count]))
            entry["files"] = files
            new = {**self._manifest, "shards": [*self._manifest["shards"], entry],
                   "num_items": entry["start"] + count}
            write_manifest(self._root, new)
        except BaseException:
            self._failed = True
            raise
        self._manifest = new
        self._ids.extend(ids)
        self._buf_ids = self._buf_ids[count:]
        self._buf = [{k: v[count:] for k, v in merged.items()}] if self._buf_ids else []


def _npy_writer(rows: np.ndarray) -> Callable[[Any], None]:
    return lambda f: np.save(f, rows, allow_pickle=False)


def _write_file(root: Path, name: str, write: Any) -> dict[str, Any]:
    sha, size = atomic_write(root, name, write)
    return {"file": name, "sha256": sha, "bytes": size}


def _first_repeat(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return [item]
        seen.add(item)
    return []


def create_store_from_arrays(root: str | os.PathLike[str], *, ids: Sequence[str], features: Features,
                             meta: dict[str, Any] | None = None, shard_size: int = 1024,
                             desc_dtype: str = "float32", overwrite: bool = False) -> FeatureStore:
    """Write in-memory features as a new store and open it.

    Args:
        ids: ``N`` unique string ids.
        features: :class:`GlobalFeatures` ``(N, D)`` or :class:`LocalFeatures` ``(N, L, d)``.

    Raises:
        ConfigError, ShapeError: as :meth:`FeatureStoreWriter.create` and :meth:`FeatureStoreWriter.append`.
    """
    if isinstance(features, GlobalFeatures):
        kind, dim, max_local = "global", features.features.shape[1], None
    else:
        kind, dim, max_local = "local", features.descriptors.shape[2], features.descriptors.shape[1]
    with new_store(root, kind=kind, dim=int(dim), max_local=max_local, desc_dtype=desc_dtype,
                   meta=meta, shard_size=shard_size, overwrite=overwrite) as writer:
        writer.append(ids, features)
    return FeatureStore.open(root)


@contextlib.contextmanager
def new_store(root: str | os.PathLike[str], **create_kwargs: Any) -> Iterator[FeatureStoreWriter]:
    """Create a store, yield its writer, and close it; on any error remove the partial store.

    ``create_kwargs`` are those of :meth:`FeatureStoreWriter.create`.
    """
    writer = FeatureStoreWriter.create(root, **create_kwargs)
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        remove_store_files(root)
        raise
