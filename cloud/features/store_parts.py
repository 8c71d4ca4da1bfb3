"""Per-shard part stores of a sharded (multi-process) extraction, and their merge into one store.

Layout while a sharded job runs (``STORE_FORMAT.md``, "Sharded extraction")::

    <root>/.parts/job.json            the job: layout, shard_size, num_items, meta (rank 0 writes it)
    <root>/.parts/shard-00007/        shard 7 as a one-shard feature store (its own manifest,
                                      checksums, lock), written by whichever rank extracts it

A part is complete when its manifest lists one shard holding exactly the shard's ids and every
file passes its sha256. The merge hard-links each part's files into ``<root>`` under the final
shard names (no data is copied; a rename where the file system has no hard links), writes
``<root>/store.json`` (atomic) listing the shards in order, then deletes ``.parts``. The result is
the store a single-process run writes: same manifest, same shard files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymfuse.cloud.features.store import FeatureStoreWriter
from asymfuse.cloud.features.store_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    TMP_PREFIX,
    StoreLayout,
    acquire_lock,
    read_manifest,
    release_lock,
    verify_file,
    write_manifest,
)
from asymfuse.edge.errors import AsymfuseError, ConfigError, CorruptDataError
from asymfuse.edge.fileio import atomic_write_text, fsync_dir

PARTS_DIR = ".parts"
JOB_FILE = "job.json"


@dataclass(frozen=True)
class ShardedJob:
    """What a sharded extraction writes: the store layout, ``shard_size``, ``num_items`` and the
    store ``meta`` (extractor id, ids digest, ...); equal to the final manifest minus its shards."""

    layout: StoreLayout
    shard_size: int
    num_items: int
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        for key in ("shard_size", "num_items"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ShardedJob.{key} must be a positive int, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **self.layout.to_json(),
                "shard_size": self.shard_size, "num_items": self.num_items, "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardedJob:
        layout = StoreLayout(kind=data["kind"], dim=data["dim"], max_local=data["max_local"],
                             desc_dtype=data["desc_dtype"])
        return cls(layout=layout, shard_size=data["shard_size"], num_items=data["num_items"], meta=data["meta"])


def parts_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / PARTS_DIR


def shard_name(shard: int) -> str:
    """``shard-00007``: the name a single-process writer gives its shard number ``shard``."""
    return f"shard-{shard:05d}"


def part_dir(root: str | os.PathLike[str], shard: int) -> Path:
    return parts_dir(root) / shard_name(shard)


def write_job(root: str | os.PathLike[str], job: ShardedJob) -> None:
    """Record ``job`` in ``<root>/.parts/job.json`` (atomic)."""
    folder = parts_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / JOB_FILE, json.dumps(job.to_json(), indent=1, sort_keys=True))


def read_job(root: str | os.PathLike[str]) -> ShardedJob | None:
    """The job recorded in ``root`` (None when there is none).

    Raises:
        CorruptDataError: the job file is unreadable or malformed.
    """
    path = parts_dir(root) / JOB_FILE
    if not path.is_file():
        return None
    try:
        return ShardedJob.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise CorruptDataError(f"{path} is unreadable ({exc}); delete {parts_dir(root)} (its shards are "
                               "recomputed) or re-run with --no-resume") from exc


def part_is_complete(root: str | os.PathLike[str], job: ShardedJob, shard: int, ids: list[str]) -> bool:
    """True when part ``shard`` holds exactly ``ids`` for ``job``, every file matching its sha256."""
    folder = part_dir(root, shard)
    if not (folder / MANIFEST).is_file():
        return False
    try:
        manifest, layout = read_manifest(folder)
        shards = manifest["shards"]
        if layout != job.layout or manifest["meta"] != job.meta or len(shards) != 1 or shards[0]["count"] != len(ids):
            return False
        for key in shards[0]["files"]:
            verify_file(folder, shards[0], key, check_sha=True)
        return json.loads((folder / shards[0]["files"]["ids"]["file"]).read_text(encoding="utf-8")) == ids
    except (AsymfuseError, OSError, ValueError, KeyError):
        return False


def open_part_writer(root: str | os.PathLike[str], job: ShardedJob, shard: int) -> FeatureStoreWriter:
    """A writer for part ``shard`` (anything left there by an interrupted run is removed first).

    Raises:
        ConfigError: another process holds the part's lock.
    """
    lay = job.layout
    return FeatureStoreWriter.create(part_dir(root, shard), kind=lay.kind, dim=lay.dim, max_local=lay.max_local,
                                     desc_dtype=lay.desc_dtype, meta=job.meta, shard_size=job.shard_size,
                                     overwrite=True)


def merge_parts(root: str | os.PathLike[str], job: ShardedJob, bounds: list[tuple[int, int]]) -> None:
    """Link every part's files into ``root`` as shards ``0..len(bounds)-1``, write the manifest,
    delete ``.parts``. Safe to re-run after a crash at any point.

    Raises:
        CorruptDataError: a part is missing or does not hold its shard (re-run the job to redo it).
        ConfigError: another writer holds the store's lock.
    """
    path = Path(root)
    lock = acquire_lock(path)
    try:
        entries = [_link_part(path, shard, start, stop) for shard, (start, stop) in enumerate(bounds)]
        fsync_dir(path)
        write_manifest(path, {**job.to_json(), "shards": entries})
    finally:
        release_lock(lock)
    shutil.rmtree(parts_dir(path), ignore_errors=True)


def _link_part(root: Path, shard: int, start: int, stop: int) -> dict[str, Any]:
    """Link part ``shard``'s files to ``root/shard-XXXXX.*``; its manifest entry in the final store."""
    folder = part_dir(root, shard)
    try:
        manifest, _ = read_manifest(folder)
        (entry,) = manifest["shards"]
    except (AsymfuseError, ValueError) as exc:
        raise CorruptDataError(f"part {folder} is not a one-shard store ({exc}); re-run the extraction, which "
                               "recomputes it") from exc
    if entry["count"] != stop - start:
        raise CorruptDataError(f"part {folder} holds {entry['count']} items, shard {shard} has {stop - start}; "
                               "re-run the extraction, which recomputes it")
    name, files = shard_name(shard), {}
    for key, info in entry["files"].items():
        final = name + info["file"][len(entry["name"]):]  # shard-00000.features.npy -> shard-00007.features.npy
        _link(folder / info["file"], root / final)
        files[key] = {**info, "file": final}
    return {"name": name, "start": start, "count": stop - start, "files": files}


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` the file ``src`` (hard link; rename where links are not supported), atomically."""
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.{secrets.token_hex(4)}")
    try:
        os.link(src, tmp)
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{src} is missing; re-run the extraction, which recomputes its shard") from exc
    except OSError:  # no hard links on this file system: move the file instead (still no copy)
        os.replace(src, dst)
        return
    os.replace(tmp, dst)


def remove_parts(root: str | os.PathLike[str]) -> None:
    """Delete ``<root>/.parts`` (a sharded job's work in progress)."""
    shutil.rmtree(parts_dir(root), ignore_errors=True)
