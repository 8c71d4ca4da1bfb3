"""Resumable, batched extraction of gallery features into a feature store.

The driver loads images, runs an already-constructed :class:`FeatureExtractor` (which owns its
device) batch by batch and appends to a :class:`FeatureStoreWriter`. Interrupted runs resume after
the last complete shard; an exception raised during the run (a bad image, a failing extractor,
Ctrl-C) still lands the batches already extracted, so that work is not redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.store import FeatureStore, FeatureStoreWriter
from asymfuse.cloud.features.store_format import MANIFEST
from asymfuse.edge.errors import ConfigError, ShapeError, missing_dependency
from asymfuse.edge.preprocess import load_image

RESERVED_META = ("extractor_id", "extractor_name", "kind", "dim", "max_local", "ids_sha256", "num_target_items")


def default_ids(image_paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Ids for ``image_paths``: each path relative to their common parent folder, '/'-separated.

    ``["/data/ox/a.jpg", "/data/ox/sub/b.jpg"]`` -> ``["a.jpg", "sub/b.jpg"]``.

    Raises:
        ConfigError: ``image_paths`` is empty or mixes absolute and relative paths.
    """
    if len(image_paths) == 0:
        raise ConfigError("image_paths is empty; pass at least one image")
    paths = [Path(os.path.normpath(os.fspath(p))) for p in image_paths]
    try:
        common = Path(os.path.commonpath([os.fspath(p.parent) for p in paths]))
    except ValueError as exc:
        raise ConfigError(f"cannot derive ids from image paths ({exc}); pass ids= explicitly") from exc
    return [p.relative_to(common).as_posix() for p in paths]


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the JSON list of ids: the identity of an extraction job's item list."""
    return hashlib.sha256(json.dumps(list(ids)).encode("utf-8")).hexdigest()


def extract_to_store(extractor: FeatureExtractor, image_paths: Sequence[str | os.PathLike[str]],
                     root: str | os.PathLike[str], *, ids: Sequence[str] | None = None, batch_size: int = 16,
                     shard_size: int = 256, resume: bool = True, progress: bool = True,
                     meta: dict[str, Any] | None = None, desc_dtype: str = "float32",
                     load_fn: Callable[[Any], Any] = load_image) -> FeatureStore:
    """Extract features of ``image_paths`` into the store at ``root`` and open it.

    Args:
        extractor: a constructed extractor; its device and precision are its own.
        image_paths: ``N`` image files, read with :func:`asymfuse.edge.preprocess.load_image`.
        ids: ``N`` unique item ids (default: :func:`default_ids`).
        shard_size: items per shard (a new store only; a resumed store keeps its own).
        resume: continue a store left by an earlier run of the same extractor on the same ids,
            skipping complete shards; False overwrites an existing store.
        meta: extra JSON metadata (e.g. the model spec); the keys in ``RESERVED_META`` are
            recorded by the driver and may not be passed.
        desc_dtype: on-disk dtype of local descriptors (``"float32"`` or ``"float16"``).
        load_fn: turns one entry of ``image_paths`` into an ``(H, W, 3)`` uint8 RGB image; e.g.
            ``dataset.load_query_image`` with ``image_paths=range(nq)`` and explicit ``ids`` to
            extract bbx-cropped queries.

    Returns:
        The opened store: rows in ``image_paths`` order, ``meta`` holding ``extractor_id``,
        ``kind``, ``dim``, ``max_local``, ``ids_sha256`` and the user ``meta``.

    Raises:
        ConfigError: bad arguments, or an existing store at ``root`` was built by a different
            extractor or for a different id list (use a new folder or ``resume=False``).
        ShapeError: the extractor returned the wrong kind, shape or NaN/inf values.
        CorruptDataError: an image is unreadable (the batches before it are kept).
        MissingDependencyError: ``progress=True`` and tqdm is not installed.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    paths = list(image_paths)
    if ids is None and load_fn is not load_image:
        raise ConfigError("pass ids= when load_fn reads something other than image paths")
    ids = default_ids(paths) if ids is None else list(ids)
    if len(ids) != len(paths):
        raise ConfigError(f"got {len(ids)} ids for {len(paths)} image paths; pass one id per image")
    if len(set(ids)) != len(ids):
        raise ConfigError("ids contain duplicates; every image needs a unique id")
    store_meta = _store_meta(extractor, ids, meta)
    writer = _open_writer(Path(root), extractor, store_meta, ids, resume=resume,
                          shard_size=shard_size, desc_dtype=desc_dtype)
    with writer:
        _run(extractor, writer, paths, ids, batch_size=batch_size, progress=progress, load_fn=load_fn)
    return FeatureStore.open(root)


def _store_meta(extractor: FeatureExtractor, ids: Sequence[str], meta: dict[str, Any] | None) -> dict[str, Any]:
    clash = sorted(set(meta or {}) & set(RESERVED_META))
    if clash:
        raise ConfigError(f"meta keys {clash} are recorded by extract_to_store itself; rename them")
    if extractor.kind not in ("global", "local"):
        raise ConfigError(f"extractor {extractor.name!r} has kind {extractor.kind!r}; expected 'global' or 'local'")
    return {**(meta or {}), **extractor.store_meta, "extractor_id": extractor.extractor_id,
            "extractor_name": extractor.name,
            "kind": extractor.kind, "dim": int(extractor.dim),
            "max_local": None if extractor.kind == "global" else int(extractor.max_local or 0),
            "ids_sha256": ids_digest(ids), "num_target_items": len(ids)}


def _open_writer(root: Path, extractor: FeatureExtractor, store_meta: dict[str, Any], ids: list[str], *,
                 resume: bool, shard_size: int, desc_dtype: str) -> FeatureStoreWriter:
    """A writer positioned after the work already done (a fresh store when there is none)."""
    if resume and (root / MANIFEST).is_file():
        writer = FeatureStoreWriter.open_for_resume(root)
        try:
            _check_resumable(writer, store_meta, ids, desc_dtype=desc_dtype)
        except BaseException:
            writer.abort()
            raise
        return writer
    return FeatureStoreWriter.create(
        root, kind=extractor.kind, dim=int(extractor.dim), max_local=store_meta["max_local"],
        desc_dtype=desc_dtype if extractor.kind == "local" else "float32", meta=store_meta,
        shard_size=shard_size, overwrite=not resume)


def _check_resumable(writer: FeatureStoreWriter, store_meta: dict[str, Any], ids: list[str], *,
                     desc_dtype: str) -> None:
    old = writer.meta
    fix = f"write to a new output folder, or pass resume=False to overwrite {writer.root}"
    if old.get("extractor_id") != store_meta["extractor_id"]:
        raise ConfigError(f"{writer.root} was built by extractor {old.get('extractor_id')!r}, not "
                          f"{store_meta['extractor_id']!r}; {fix}")
    if old.get("ids_sha256") != store_meta["ids_sha256"] or writer.ids != ids[:len(writer)]:
        raise ConfigError(f"{writer.root} was built for a different list of images "
                          f"({old.get('num_target_items')} items, now {len(ids)}); {fix}")
    if writer.layout.kind == "local" and writer.layout.desc_dtype != desc_dtype:
        raise ConfigError(f"{writer.root} stores {writer.layout.desc_dtype} descriptors, not {desc_dtype}; {fix}")


def _run(extractor: FeatureExtractor, writer: FeatureStoreWriter, paths: list[str | os.PathLike[str]],
         ids: list[str], *, batch_size: int, progress: bool, load_fn: Callable[[Any], Any]) -> None:
    """Extract items ``len(writer):`` batch by batch, appending each batch."""
    done = len(writer)
    bar = _progress_bar(total=len(ids), initial=done, desc=f"extract {extractor.name}", enabled=progress)
    try:
        for start in range(done, len(ids), batch_size):
            stop = min(start + batch_size, len(ids))
            images = [load_fn(p) for p in paths[start:stop]]
            features = extractor.extract(images)
            if len(features) != stop - start:
                raise ShapeError(f"extractor {extractor.name!r} returned {len(features)} rows for "
                                 f"{stop - start} images; it must return one row per image")
            writer.append(ids[start:stop], features)
            bar.update(stop - start)
    finally:
        bar.close()


def _progress_bar(*, total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise missing_dependency("tqdm", "cloud") from exc
    return tqdm(total=total, initial=initial, desc=desc, unit="img")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
