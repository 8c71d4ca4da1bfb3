"""The feature store's on-disk format: layout record, manifest I/O, atomic writes, checksums.

Shared by the writer (:mod:`asymfuse.cloud.features.store`) and the reader
(:mod:`asymfuse.cloud.features.store_reader`). The format itself is documented in
``STORE_FORMAT.md`` next to this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from asymfuse.cloud.features.base import Features, GlobalFeatures, LocalFeatures
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError
from asymfuse.edge.fileio import atomic_path

FORMAT_NAME = "asymfuse-feature-store"
FORMAT_VERSION = 1
MANIFEST = "store.json"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
DESC_DTYPES = ("float16", "float32")
SHARD_FILE = re.compile(r"^shard-\d+\.(ids\.json|[a-z]+\.npy)$")


@dataclass(frozen=True)
class StoreLayout:
    """What one store holds: ``kind``, descriptor ``dim`` (D or d), ``max_local`` (L, local only)
    and the on-disk dtype of local descriptors (``float32`` or ``float16``; global is float32)."""

    kind: str
    dim: int
    max_local: int | None = None
    desc_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in ("global", "local"):
            raise ConfigError(f"store kind must be 'global' or 'local', got {self.kind!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"store dim must be a positive int, got {self.dim!r}")
        if self.kind == "local" and (not isinstance(self.max_local, int) or self.max_local < 1):
            raise ConfigError(f"a local store needs max_local >= 1, got {self.max_local!r}")
        if self.kind == "global" and self.max_local is not None:
            raise ConfigError("a global store has no max_local; pass max_local=None")
        if self.desc_dtype not in DESC_DTYPES or (self.kind == "global" and self.desc_dtype != "float32"):
            raise ConfigError(f"desc_dtype {self.desc_dtype!r} not allowed for a {self.kind} store; "
                              "use 'float32' (or 'float16' for local stores)")

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-array ``(row shape, dtype name)``; rows are prepended with the item count."""
        if self.kind == "global":
            return {"features": ((self.dim,), "float32")}
        n_loc = int(self.max_local or 0)
        return {"descriptors": ((n_loc, self.dim), self.desc_dtype), "weights": ((n_loc,), "float32"),
                "mask": ((n_loc,), "bool"), "xy": ((n_loc, 2), "float32"), "scale": ((n_loc,), "float32")}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "max_local": self.max_local, "desc_dtype": self.desc_dtype}


# ---------------------------------------------------------------- atomic file helpers


class _HashingFile:
    """File wrapper that hashes and counts every byte written (np.save only needs ``write``)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        return self._f.write(view)


def atomic_write(root: Path, name: str, write: Callable[[_HashingFile], object]) -> tuple[str, int]:
    """Write ``root/name`` via a temp file in ``root``, fsync, ``os.replace``.

    Returns:
        ``(sha256 hex digest, size in bytes)`` of what was written.
    """
    with atomic_path(root / name, tmp_prefix=TMP_PREFIX) as tmp, open(tmp, "wb") as f:
        hf = _HashingFile(f)
        write(hf)
    return hf.sha.hexdigest(), hf.size


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_error(root: Path, shard: str, problem: str) -> CorruptDataError:
    return CorruptDataError(
        f"feature store {root}: {problem}; delete the files of shard {shard} ({root / shard}.*) and "
        "re-run extraction with resume=True, which recomputes that shard and the ones after it")


def remove_store_files(root: str | os.PathLike[str]) -> None:
    """Delete the store files in ``root`` (manifest, shard files, temp files), nothing else."""
    path = Path(root)
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.name == MANIFEST or entry.name.startswith(TMP_PREFIX) or SHARD_FILE.match(entry.name):
            entry.unlink(missing_ok=True)


# ---------------------------------------------------------------- manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    atomic_write(root, MANIFEST, lambda f: f.write(text))


def _bad_manifest(path: Path, what: str) -> CorruptDataError:
    return CorruptDataError(f"{path} is not a valid feature-store manifest ({what}); "
                            "delete the folder and re-run extraction")


def read_manifest(root: str | os.PathLike[str]) -> tuple[dict[str, Any], StoreLayout]:
    """Load and validate ``root/store.json``.

    Raises:
        ConfigError: ``root`` is missing, is not a store, or was written by a newer format version.
        CorruptDataError: the manifest is missing next to shard files, unreadable or inconsistent.
    """
    path = Path(root) / MANIFEST
    if not path.parent.is_dir():
        raise ConfigError(f"no feature store at {path.parent}: the folder does not exist; check the path")
    if not path.is_file():
        if any(SHARD_FILE.match(p.name) for p in path.parent.iterdir()):
            raise CorruptDataError(f"{path} is missing but shard files exist; the store cannot be "
                                   "trusted: delete the folder and re-run extraction")
        raise ConfigError(f"{path.parent} is not a feature store (no {MANIFEST}); "
                          "build one with extract_to_store or create_store_from_arrays")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_manifest(path, str(exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _bad_manifest(path, f"format is not {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{path} has format version {manifest.get('version')!r}; this asymfuse reads "
                          f"version {FORMAT_VERSION}: upgrade asymfuse or re-extract the store")
    try:
        layout = StoreLayout(kind=manifest["kind"], dim=manifest["dim"], max_local=manifest["max_local"],
                             desc_dtype=manifest["desc_dtype"])
        _check_shards(manifest, layout)
    except (KeyError, TypeError, ConfigError) as exc:
        raise _bad_manifest(path, f"{type(exc).__name__}: {exc}") from exc
    return manifest, layout


def _check_shards(manifest: dict[str, Any], layout: StoreLayout) -> None:
    start, keys = 0, {"ids", *layout.arrays()}
    if not isinstance(manifest["shard_size"], int) or manifest["shard_size"] < 1:
        raise ConfigError(f"shard_size {manifest['shard_size']!r} is not a positive int")
    for shard in manifest["shards"]:
        if shard["start"] != start or not isinstance(shard["count"], int) or shard["count"] < 1:
            raise ConfigError(f"shard {shard.get('name')!r} has start/count out of sequence")
        if set(shard["files"]) != keys:
            raise ConfigError(f"shard {shard['name']!r} lists files {sorted(shard['files'])}, expected {sorted(keys)}")
        for info in shard["files"].values():  # plain names only: no paths outside the store folder
            if not SHARD_FILE.match(str(info["file"])) or not str(info["file"]).startswith(shard["name"] + "."):
                raise ConfigError(f"shard {shard['name']!r} lists a bad file name {info['file']!r}")
        start += shard["count"]
    if not isinstance(manifest["meta"], dict) or manifest["num_items"] != start:
        raise ConfigError(f"num_items {manifest['num_items']!r} does not match the shards ({start})")


def check_features(layout: StoreLayout, features: Features) -> dict[str, np.ndarray]:
    """Validate a batch against the layout; return its arrays keyed as on disk."""
    want = GlobalFeatures if layout.kind == "global" else LocalFeatures
    if not isinstance(features, want):
        raise ShapeError(f"this is a {layout.kind} store; append {want.__name__}, got {type(features).__name__}")
    if isinstance(features, GlobalFeatures):
        arrays = {"features": features.features}
        got = features.features.shape[1]
    else:
        arrays = {k: getattr(features, k) for k in ("descriptors", "weights", "mask", "xy", "scale")}
        got = features.descriptors.shape[2]
        if features.descriptors.shape[1] != layout.max_local:
            raise ShapeError(f"store max_local is {layout.max_local} but features have "
                             f"L={features.descriptors.shape[1]}; use a store with the extractor's max_local")
    if got != layout.dim:
        raise ShapeError(f"store dim is {layout.dim} but features have dim {got}; "
                         "write to a store created for this extractor")
    out = {}
    for key, (_, dtype) in layout.arrays().items():
        with np.errstate(over="ignore"):  # float16 overflow shows up as inf, rejected just below
            arr = np.array(arrays[key], dtype=dtype, order="C", copy=True)  # the caller may reuse its buffer
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ShapeError(f"features.{key} contains NaN or inf (after casting to {dtype}); "
                             "fix the extractor output before storing it")
        out[key] = arr
    return out


# ---------------------------------------------------------------- lock


def acquire_lock(root: Path) -> int | None:
    """Take the store's advisory writer lock (``root/.lock``); the OS drops it if the process dies.

    Raises:
        ConfigError: another writer holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single-writer rule is not enforced
        return None
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"another writer is open on feature store {root}; close it first "
                          "(one writer per store)") from None
    return fd


def release_lock(fd: int | None) -> None:
    """Release a lock taken by :func:`acquire_lock` (``None`` is a no-op)."""
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def intact_prefix(root: Path, shards: list[dict[str, Any]]) -> int:
    """Number of leading shards whose files all exist with the recorded sizes."""
    for n, shard in enumerate(shards):
        for f in shard["files"].values():
            p = root / f["file"]
            if not p.is_file() or p.stat().st_size != f["bytes"]:
                return n
    return len(shards)


def verify_file(root: Path, shard: dict[str, Any], key: str, *, check_sha: bool) -> Path:
    """Check that a shard file exists with its recorded size (and sha256 if ``check_sha``).

    Raises:
        CorruptDataError: naming the file, the shard and the fix.
    """
    info = shard["files"][key]
    path = root / info["file"]
    if not path.is_file():
        raise shard_error(root, shard["name"], f"shard file {info['file']} is missing")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise shard_error(root, shard["name"], f"shard file {info['file']} has {size} bytes, the manifest "
                           f"records {info['bytes']} (truncated or overwritten)")
    if check_sha and sha256_file(path) != info["sha256"]:
        raise shard_error(root, shard["name"], f"shard file {info['file']} fails its sha256 checksum")
    return path


def read_ids(root: Path, shard: dict[str, Any], *, check_sha: bool) -> list[str]:
    """Load a shard's ``count`` ids.

    Raises:
        CorruptDataError: the ids file is missing, truncated, fails its checksum or is malformed.
    """
    path = verify_file(root, shard, "ids", check_sha=check_sha)
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise shard_error(root, shard["name"], f"shard file {path.name} is unreadable ({exc})") from exc
    if not isinstance(ids, list) or len(ids) != shard["count"] or not all(isinstance(i, str) for i in ids):
        raise shard_error(root, shard["name"], f"shard file {path.name} does not hold {shard['count']} string ids")
    return ids
