"""Resumable, batched extraction of gallery features into a feature store.

The driver loads images, runs an already-constructed :class:`FeatureExtractor` (which owns its
device) batch by batch and appends to a :class:`FeatureStoreWriter`. Interrupted runs resume after
the last complete shard; an exception raised during the run (a bad image, a failing extractor,
Ctrl-C) still lands the batches already extracted, so that work is not redone. With ``workers > 0``
decoding and preprocessing run in DataLoader workers (:mod:`asymfuse.cloud.features.batches`).
For several processes (torchrun) see :mod:`asymfuse.cloud.features.extract_sharded`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.batches import check_workers, iter_collated
from asymfuse.cloud.features.store import FeatureStore, FeatureStoreWriter
from asymfuse.cloud.features.store_format import MANIFEST
from asymfuse.cloud.features.store_parts import parts_dir, remove_parts
from asymfuse.edge.errors import ConfigError, ShapeError, missing_dependency
from asymfuse.edge.preprocess import load_image

RESERVED_META = ("extractor_id", "extractor_name", "kind", "dim", "max_local", "ids_sha256", "num_target_items",
                 "precision")


@dataclass(frozen=True)
class ExtractOptions:
    """How an extraction runs (what it extracts is the extractor's business).

    - ``batch_size``: images per DataLoader batch (the extractor may split it further).
    - ``shard_size``: items per store shard (a new store only; a resumed store keeps its own).
    - ``workers``: DataLoader worker processes that decode and preprocess; 0 = in the caller.
    - ``resume``: continue a store left by an earlier run of the same job; False overwrites.
    - ``progress``: show a progress bar (rank 0 only in a distributed run).
    - ``desc_dtype``: on-disk dtype of local descriptors, ``"float32"`` or ``"float16"``.
    - ``dist_timeout_s``: seconds a rank waits for the others at a barrier (distributed runs).
    """

    batch_size: int = 16
    shard_size: int = 256
    workers: int = 0
    resume: bool = True
    progress: bool = True
    desc_dtype: str = "float32"
    dist_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        for key in ("batch_size", "shard_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive int, got {value!r}")
        check_workers(self.workers)
        if self.desc_dtype not in ("float32", "float16"):
            raise ConfigError(f"desc_dtype must be 'float32' or 'float16', got {self.desc_dtype!r}")
        if isinstance(self.dist_timeout_s, bool) or not isinstance(self.dist_timeout_s, (int, float)) \
                or not self.dist_timeout_s > 0:
            raise ConfigError(f"dist_timeout_s must be a number of seconds > 0, got {self.dist_timeout_s!r}")


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
                     load_fn: Callable[[Any], Any] = load_image, workers: int = 0) -> FeatureStore:
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
        workers: DataLoader worker processes for ``load_fn`` and the extractor's preprocessing
            (0: in this process); the features are the same either way.

    Returns:
        The opened store: rows in ``image_paths`` order, ``meta`` holding ``extractor_id``,
        ``kind``, ``dim``, ``max_local``, ``ids_sha256`` (and ``precision`` unless fp32) and the
        user ``meta``.

    Raises:
        ConfigError: bad arguments, or an existing store at ``root`` was built by a different
            extractor or for a different id list (use a new folder or ``resume=False``).
        ShapeError: the extractor returned the wrong kind, shape or NaN/inf values.
        CorruptDataError: an image is unreadable (the batches before it are kept).
        MissingDependencyError: ``progress=True`` and tqdm is not installed.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    check_workers(workers)
    paths, ids = job_items(image_paths, ids, load_fn=load_fn)
    store_meta = store_meta_of(extractor, ids, meta)
    writer = _open_writer(Path(root), extractor, store_meta, ids, resume=resume,
                          shard_size=shard_size, desc_dtype=desc_dtype)
    with writer:
        _run(extractor, writer, paths, ids, batch_size=batch_size, progress=progress, load_fn=load_fn,
             workers=workers)
    return FeatureStore.open(root)


def job_items(image_paths: Sequence[Any], ids: Sequence[str] | None, *,
              load_fn: Callable[[Any], Any]) -> tuple[list[Any], list[str]]:
    """``(sources, ids)`` of an extraction job, checked: one unique id per source.

    Raises:
        ConfigError: no ids with a custom ``load_fn``, a count mismatch, duplicate ids, or no items.
    """
    paths = list(image_paths)
    if ids is None and load_fn is not load_image:
        raise ConfigError("pass ids= when load_fn reads something other than image paths")
    ids = default_ids(paths) if ids is None else list(ids)
    if len(ids) != len(paths):
        raise ConfigError(f"got {len(ids)} ids for {len(paths)} image paths; pass one id per image")
    if not ids:
        raise ConfigError("image_paths is empty; pass at least one image")
    if len(set(ids)) != len(ids):
        raise ConfigError("ids contain duplicates; every image needs a unique id")
    return paths, ids


def store_meta_of(extractor: FeatureExtractor, ids: Sequence[str], meta: dict[str, Any] | None) -> dict[str, Any]:
    """The ``meta`` an extraction driver records: the user's, the extractor's and the job's keys.

    Raises:
        ConfigError: ``meta`` uses a key of :data:`RESERVED_META`, or the extractor's kind is unknown.
    """
    clash = sorted(set(meta or {}) & set(RESERVED_META))
    if clash:
        raise ConfigError(f"meta keys {clash} are recorded by extract_to_store itself; rename them")
    if extractor.kind not in ("global", "local"):
        raise ConfigError(f"extractor {extractor.name!r} has kind {extractor.kind!r}; expected 'global' or 'local'")
    precision = getattr(extractor, "precision", "fp32")
    return {**(meta or {}), **extractor.store_meta, "extractor_id": extractor.extractor_id,
            "extractor_name": extractor.name,
            "kind": extractor.kind, "dim": int(extractor.dim),
            "max_local": None if extractor.kind == "global" else int(extractor.max_local or 0),
            "ids_sha256": ids_digest(ids), "num_target_items": len(ids),
            **({} if precision == "fp32" else {"precision": precision})}


def _open_writer(root: Path, extractor: FeatureExtractor, store_meta: dict[str, Any], ids: list[str], *,
                 resume: bool, shard_size: int, desc_dtype: str) -> FeatureStoreWriter:
    """A writer positioned after the work already done (a fresh store when there is none)."""
    if resume and parts_dir(root).is_dir():
        raise ConfigError(f"{root} holds the unfinished work of a distributed (torchrun) extraction; resume it "
                          "under torchrun (any number of processes, also --nproc_per_node 1), or pass "
                          "resume=False (CLI: --no-resume) to start again")
    if not resume:
        remove_parts(root)
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
    check_same_job(writer.root, writer.meta, store_meta, desc_dtype=(writer.layout.kind, writer.layout.desc_dtype,
                                                                     desc_dtype))
    if writer.ids != ids[:len(writer)]:
        raise ConfigError(f"{writer.root} was built for a different list of images "
                          f"({writer.meta.get('num_target_items')} items, now {len(ids)}); "
                          f"write to a new output folder, or pass resume=False to overwrite {writer.root}")


def check_same_job(root: Path, old: dict[str, Any], new: dict[str, Any], *,
                   desc_dtype: tuple[str, str, str]) -> None:
    """Refuse to continue a store whose ``meta`` ``old`` is another job than ``new``.

    ``desc_dtype`` is ``(store kind, stored desc dtype, requested desc dtype)``.

    Raises:
        ConfigError: another extractor, id list, precision or (local) descriptor dtype.
    """
    fix = f"write to a new output folder, or pass resume=False (CLI: --no-resume) to overwrite {root}"
    if old.get("extractor_id") != new["extractor_id"]:
        raise ConfigError(f"{root} was built by extractor {old.get('extractor_id')!r}, not "
                          f"{new['extractor_id']!r}; {fix}")
    if old.get("ids_sha256") != new["ids_sha256"]:
        raise ConfigError(f"{root} was built for a different list of images "
                          f"({old.get('num_target_items')} items, now {new['num_target_items']}); {fix}")
    if old.get("precision", "fp32") != new.get("precision", "fp32"):
        raise ConfigError(f"{root} was extracted at precision {old.get('precision', 'fp32')}, not "
                          f"{new.get('precision', 'fp32')}; use the same precision, or {fix}")
    kind, stored, wanted = desc_dtype
    if kind == "local" and stored != wanted:
        raise ConfigError(f"{root} stores {stored} descriptors, not {wanted}; {fix}")


def _run(extractor: FeatureExtractor, writer: FeatureStoreWriter, paths: list[str | os.PathLike[str]],
         ids: list[str], *, batch_size: int, progress: bool, load_fn: Callable[[Any], Any], workers: int) -> None:
    """Extract items ``len(writer):`` batch by batch, appending each batch."""
    done = len(writer)
    batches = [range(start, min(start + batch_size, len(ids))) for start in range(done, len(ids), batch_size)]
    bar = progress_bar(total=len(ids), initial=done, desc=f"extract {extractor.name}", enabled=progress)
    try:
        for rows, batch in zip(batches, iter_collated(extractor, paths, batches, load_fn=load_fn, workers=workers)):
            writer.append(ids[rows.start:rows.stop], extract_checked(extractor, batch, len(rows)))
            bar.update(len(rows))
    finally:
        bar.close()


def extract_checked(extractor: FeatureExtractor, batch: Any, count: int) -> Any:
    """``extractor.extract_collated(batch)``, checked to hold ``count`` rows.

    Raises:
        ShapeError: the extractor returned another number of rows.
    """
    features = extractor.extract_collated(batch)
    if len(features) != count:
        raise ShapeError(f"extractor {extractor.name!r} returned {len(features)} rows for "
                         f"{count} images; it must return one row per image")
    return features


def progress_bar(*, total: int, initial: int, desc: str, enabled: bool) -> Any:
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
