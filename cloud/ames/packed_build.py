"""Write a binary AMES gallery store (the layout is described in :mod:`asymfuse.cloud.ames.packed_store`).

:func:`build_packed_store` binarises a local feature store with a binary AMES model's projection
and writes the packed folder atomically (temp folder beside it, fsync, rename).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asymfuse.cloud.ames.binary import pack_signs
from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.packed_format import FILES, FORMAT_NAME, FORMAT_VERSION, MANIFEST
from asymfuse.cloud.ames.packed_store import PackedLocalStore, _require_binary, projection_digest
from asymfuse.cloud.device import resolve_device
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store_format import sha256_file
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError
from asymfuse.edge.fileio import fsync_dir

TMP_PREFIX = ".tmp-"

def build_packed_store(model: AMES, local: FeatureStore, out: str | os.PathLike[str], *, max_local: int,
                       batch_size: int = 64, device: str | torch.device = "cpu",
                       overwrite: bool = False) -> PackedLocalStore:
    """Binarise and pack the local features of ``local`` with ``model``'s ``W`` into folder ``out``.

    Args:
        model: a binary AMES; only ``remap_local[0].W`` is used (training mode is irrelevant).
        local: a local feature store with ``model.cfg.local_dim``-d descriptors.
        max_local: L, descriptors kept per image (the first L valid slots, in store order).
        overwrite: replace an existing packed store at ``out``.

    Returns:
        The new store, opened.

    Raises:
        ConfigError: fp model, not a local store, bad options, or ``out`` exists (and not
            ``overwrite``, or it is not a packed store).
        ShapeError: the descriptor dimension is not the model's ``local_dim``.
        CorruptDataError: NaN/inf in a valid descriptor (the message names the item); nothing is
            left at ``out`` or in temp files.
    """
    _require_binary(model, "build_packed_store")
    if local.kind != "local":
        raise ConfigError(f"build_packed_store needs a local feature store, {local.root} is {local.kind}")
    if local.dim != model.cfg.local_dim:
        raise ShapeError(f"feature store {local.root} holds {local.dim}-d descriptors but the model expects "
                         f"{model.cfg.local_dim}-d; use the local feature the model was trained on")
    for name, value in (("max_local", max_local), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    target = Path(out)
    _check_target(target, overwrite=overwrite)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}.{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_folder(model, local, tmp, max_local=max_local, batch_size=batch_size, device=resolve_device(device))
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackedLocalStore.open(target, model=model)


def _check_target(target: Path, *, overwrite: bool) -> None:
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise ConfigError(f"cannot write {target}: folder {target.parent} is missing or not writable")
    if not target.exists():
        return
    if not overwrite:
        raise ConfigError(f"{target} already exists; pass overwrite=True to replace it or choose another folder")
    if not target.is_dir() or any(p.name not in {MANIFEST, *FILES.values()} for p in target.iterdir()):
        raise ConfigError(f"{target} is not a packed local store (it holds other files); refusing to replace "
                          "it: choose another folder")


def _move_into_place(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f"{TMP_PREFIX}old-{target.name}.{secrets.token_hex(4)}"
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_folder(model: AMES, local: FeatureStore, folder: Path, *, max_local: int, batch_size: int,
                  device: torch.device) -> None:
    ids = local.ids
    bits = model.cfg.model_dim
    shape = (len(ids), max_local, bits // 8)
    codes = (np.lib.format.open_memmap(folder / FILES["codes"], mode="w+", dtype=np.uint8, shape=shape)
             if ids else np.zeros(shape, np.uint8))
    counts = np.zeros(len(ids), dtype=np.int32)
    w = model.remap_local[0].W.detach().to(device=device, dtype=torch.float32)
    start = 0
    for batch_ids, feats in local.iter_batches(batch_size):
        if not isinstance(feats, LocalFeatures):
            raise ConfigError(f"build_packed_store needs a local feature store, {local.root} is not one")
        stop = start + len(batch_ids)
        codes[start:stop], counts[start:stop] = _encode(feats, w, batch_ids, max_local=max_local, root=local.root)
        start = stop
    if isinstance(codes, np.memmap):
        codes.flush()
        del codes
    else:
        np.save(folder / FILES["codes"], codes)
    _finish_folder(folder, model, ids, counts, max_local=max_local, meta=local.meta)


def _finish_folder(folder: Path, model: AMES, ids: Sequence[str], counts: np.ndarray, *, max_local: int,
                   meta: dict) -> None:
    """Counts, ids and the manifest (after ``codes.npy`` is written), every file fsynced."""
    bits = model.cfg.model_dim
    np.save(folder / FILES["counts"], np.asarray(counts, dtype=np.int32))
    (folder / FILES["ids"]).write_text(json.dumps(list(ids)), encoding="utf-8")
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_items": len(ids), "max_local": max_local,
                "bits": bits, "bytes_per_descriptor": bits // 8, "projection_sha256": projection_digest(model),
                "local_feature": meta.get("extractor_name"), "extractor_id": meta.get("extractor_id"),
                "files": {}}
    for key, name in FILES.items():
        path = folder / name
        _fsync(path)
        manifest["files"][key] = {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    _fsync(folder / MANIFEST)
    fsync_dir(folder)


def write_packed_codes(model: AMES, out: str | os.PathLike[str], *, ids: Sequence[str], codes: np.ndarray,
                       counts: np.ndarray, meta: dict | None = None) -> PackedLocalStore:
    """A packed store from codes already binarised (e.g. synthetic codes for ``bench serve``).

    Args:
        codes: ``(N, max_local, bits // 8)`` uint8 packed signs, valid slots first, zeros after ``counts``.
        counts: ``(N,)`` valid descriptors per item.

    Raises:
        ConfigError: ``out`` exists, or shapes that do not match ``model``'s bit width.
    """
    codes = np.asarray(codes)
    counts = np.asarray(counts)
    bits = model.cfg.model_dim
    if codes.ndim != 3 or codes.dtype != np.uint8 or codes.shape[0] != len(ids) or codes.shape[2] != bits // 8:
        raise ConfigError(f"codes must be uint8 ({len(ids)}, max_local, {bits // 8}), got {codes.dtype} {codes.shape}")
    if counts.shape != (len(ids),) or (counts < 0).any() or (counts > codes.shape[1]).any():
        raise ConfigError(f"counts must be ({len(ids)},) in [0, {codes.shape[1]}]")
    target = Path(out)
    _check_target(target, overwrite=False)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}.{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        np.save(tmp / FILES["codes"], codes)
        _finish_folder(tmp, model, ids, counts, max_local=int(codes.shape[1]), meta=dict(meta or {}))
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackedLocalStore.open(target, model=model)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _encode(feats: LocalFeatures, w: torch.Tensor, ids: Sequence[str], *, max_local: int,
            root: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch -> (codes ``(b, max_local, bits // 8)`` uint8, counts ``(b,)`` int32)."""
    desc, pad = feats.descriptors, feats.mask
    bad = ~pad & ~np.isfinite(desc).all(axis=-1)
    if bad.any():
        row, slot = (int(v[0]) for v in np.nonzero(bad))
        raise CorruptDataError(f"feature store {root}: item {ids[row]!r} has NaN/inf in local descriptor slot "
                               f"{slot}; the store is corrupt: re-extract it, then build the packed store again")
    x = torch.from_numpy(np.array(desc, dtype=np.float32)).to(w.device)  # copies: the store's maps are read-only
    p = torch.from_numpy(np.array(pad, dtype=np.bool_)).to(w.device)
    x = F.normalize(x.masked_fill(p[..., None], 0.0), dim=-1)
    packed = pack_signs(((x @ w) >= 0).cpu().numpy())  # (b, L_src, nbytes)
    order = np.argsort(pad, axis=1, kind="stable")  # valid slots first, in store order
    packed = np.take_along_axis(packed, order[..., None], axis=1)
    counts = np.minimum((~pad).sum(axis=1), max_local).astype(np.int32)
    out = np.zeros((len(ids), max_local, packed.shape[-1]), dtype=np.uint8)
    keep = min(max_local, packed.shape[1])
    out[:, :keep] = packed[:, :keep]
    out[np.arange(max_local)[None, :] >= counts[:, None]] = 0
    return out, counts
