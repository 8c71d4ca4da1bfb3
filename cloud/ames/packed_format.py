"""File checks of the packed AMES store (:mod:`asymfuse.cloud.ames.packed_store`): manifest, ids, arrays.

Every problem with files on disk is a :class:`CorruptDataError` whose message says to rebuild the
store; a missing folder or a folder that is no store is a :class:`ConfigError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.features.store_format import sha256_file
from asymfuse.edge.errors import ConfigError, CorruptDataError

FORMAT_NAME = "asymfuse-ames-packed"
FORMAT_VERSION = 1
MANIFEST = "ames_store.json"
FILES = {"ids": "ids.json", "codes": "codes.npy", "counts": "counts.npy"}
REBUILD = "rebuild it with build_packed_store from its feature store"


def corrupt(root: Path, problem: str) -> CorruptDataError:
    return CorruptDataError(f"packed local store {root}: {problem}; {REBUILD}")


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ConfigError(f"no packed local store at {root}: the folder does not exist; check the path")
    if not path.is_file():
        if any((root / name).exists() for name in FILES.values()):
            raise corrupt(root, f"{MANIFEST} is missing next to its data files")
        raise ConfigError(f"{root} is not a packed local store (no {MANIFEST}); build one with build_packed_store")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(root, f"{MANIFEST} is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise corrupt(root, f"{MANIFEST} is not a {FORMAT_NAME!r} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{path} has format version {manifest.get('version')!r}; this asymfuse reads version "
                          f"{FORMAT_VERSION}: upgrade asymfuse or {REBUILD}")
    try:
        check_manifest_fields(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(root, f"{MANIFEST} is inconsistent ({type(exc).__name__}: {exc})") from exc
    return manifest


def check_manifest_fields(m: dict[str, Any]) -> None:
    for key in ("num_items", "max_local", "bits", "bytes_per_descriptor"):
        if not isinstance(m[key], int) or isinstance(m[key], bool) or m[key] < (0 if key == "num_items" else 1):
            raise ValueError(f"{key}={m[key]!r} is not a valid count")
    if m["bits"] % 8 or m["bytes_per_descriptor"] != m["bits"] // 8:
        raise ValueError(f"bits={m['bits']} and bytes_per_descriptor={m['bytes_per_descriptor']} disagree")
    if not isinstance(m["projection_sha256"], str):
        raise ValueError("projection_sha256 is not a string")
    for key, name in FILES.items():  # fixed names: nothing outside the folder is ever read
        info = m["files"][key]
        if info["file"] != name or not isinstance(info["bytes"], int) or not isinstance(info["sha256"], str):
            raise ValueError(f"files.{key} is {info!r}, expected file {name!r} with bytes and sha256")


def check_file(root: Path, manifest: dict[str, Any], key: str, *, check_sha: bool) -> None:
    info = manifest["files"][key]
    path = root / info["file"]
    size = path.stat().st_size
    if size != info["bytes"]:
        raise corrupt(root, f"{path.name} has {size} bytes, the manifest records {info['bytes']} "
                             "(truncated or overwritten)")
    if check_sha and sha256_file(path) != info["sha256"]:
        raise corrupt(root, f"{path.name} fails its sha256 checksum")


def load_ids(root: Path) -> list[str]:
    path = root / FILES["ids"]
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise corrupt(root, f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(root, f"{path.name} is unreadable ({exc})") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise corrupt(root, f"{path.name} is not a list of string ids")
    return ids


def load_npy(root: Path, key: str, *, mmap: bool) -> np.ndarray:
    path = root / FILES[key]
    if not path.is_file():
        raise corrupt(root, f"{path.name} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise corrupt(root, f"{path.name} is unreadable ({exc})") from exc


def check_sizes(root: Path, m: dict[str, Any], ids: list[str], codes: np.ndarray, counts: np.ndarray) -> None:
    n = len(ids)
    want = (m["max_local"], m["bytes_per_descriptor"])
    if codes.dtype != np.uint8 or codes.ndim != 3 or codes.shape[1:] != want:
        raise corrupt(root, f"codes.npy holds {codes.dtype} {codes.shape}, expected uint8 (N, {want[0]}, {want[1]})")
    if counts.dtype != np.int32 or counts.ndim != 1:
        raise corrupt(root, f"counts.npy holds {counts.dtype} {counts.shape}, expected int32 (N,)")
    if not codes.shape[0] == counts.shape[0] == n == m["num_items"]:
        raise corrupt(root, f"its size does not match its index: codes.npy has {codes.shape[0]} rows, counts.npy "
                             f"{counts.shape[0]}, ids.json {n} ids, the manifest says {m['num_items']} items")
    if counts.size and (counts.min() < 0 or counts.max() > m["max_local"]):
        raise corrupt(root, f"counts.npy has values outside [0, {m['max_local']}]")
