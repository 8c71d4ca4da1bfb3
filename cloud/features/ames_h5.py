"""Import and export of local-feature stores in the AMES HDF5 layout.

The AMES code (Suma et al., ECCV 2024) reads one HDF5 dataset ``features`` of shape
``(N, L, 5 + d)``, float32 (float16 also occurs), whose last axis holds per slot::

    column 0: x        keypoint x in pixels
    column 1: y        keypoint y in pixels
    column 2: scale    keypoint scale
    column 3: mask     1 = padding slot, 0 = valid
    column 4: weight   detector weight
    columns 5..: the d-dim descriptor

Exports also add an ``ids`` dataset (UTF-8 strings, ignored by AMES) so a round trip keeps ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store import FeatureStore, new_store
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError, missing_dependency
from asymfuse.edge.fileio import atomic_path

AMES_COLUMNS = ("x", "y", "scale", "mask", "weight")
N_META = len(AMES_COLUMNS)
H5_DTYPES = ("float32", "float16")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise missing_dependency("h5py", "cloud") from exc
    return h5py


def pack_ames(features: LocalFeatures, *, dtype: str = "float32") -> np.ndarray:
    """Pack a batch into AMES rows.

    Returns:
        ``(B, L, 5 + d)`` array of ``dtype``: x, y, scale, mask (1 = pad), weight, descriptor.
    """
    b, n_loc, d = features.descriptors.shape
    out = np.empty((b, n_loc, N_META + d), dtype=dtype)
    out[..., 0:2] = features.xy
    out[..., 2] = features.scale
    out[..., 3] = features.mask
    out[..., 4] = features.weights
    out[..., N_META:] = features.descriptors
    return out


def unpack_ames(rows: np.ndarray, *, where: str = "AMES rows") -> LocalFeatures:
    """Unpack and validate AMES rows; padding slots come back zeroed.

    Args:
        rows: ``(B, L, 5 + d)`` float16/float32, d >= 1.
        where: names the source in error messages.

    Raises:
        CorruptDataError: wrong rank or width, a mask value not in {0, 1}, or NaN/inf in a valid slot.
    """
    if rows.ndim != 3 or rows.shape[2] < N_META + 1:
        raise CorruptDataError(f"{where}: expected shape (N, L, 5 + d) with d >= 1, got {rows.shape}; "
                               "this is not an AMES local-feature file")
    rows = rows.astype(np.float32)
    mask_col = rows[..., 3]
    bad = ~((mask_col == 0) | (mask_col == 1))
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise CorruptDataError(f"{where}: mask column (3) must be 0 or 1, found {mask_col[i, j]!r} at "
                               f"image {i}, slot {j}; check the column order (x, y, scale, mask, weight, desc)")
    mask = mask_col == 1
    finite = np.isfinite(rows).all(axis=2)
    if (~finite & ~mask).any():
        i, j = (int(v[0]) for v in np.nonzero(~finite & ~mask))
        raise CorruptDataError(f"{where}: NaN or inf in valid slot {j} of image {i}; re-extract the file")
    rows[mask] = 0.0
    return LocalFeatures(descriptors=np.ascontiguousarray(rows[..., N_META:]),
                         weights=np.ascontiguousarray(rows[..., 4]), mask=mask,
                         xy=np.ascontiguousarray(rows[..., 0:2]), scale=np.ascontiguousarray(rows[..., 2]))


def export_ames_h5(store: FeatureStore, path: str | os.PathLike[str], *, dtype: str = "float32",
                   batch_size: int = 256) -> Path:
    """Write a local store as an AMES HDF5 file (atomically: temp file, fsync, rename).

    Args:
        store: an open local store.
        path: the ``.h5``/``.hdf5`` file to write (replaced if it exists).
        dtype: ``"float32"`` (AMES default) or ``"float16"``.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ShapeError: ``store`` holds global features.
        ConfigError: bad ``dtype``/``batch_size``.
        MissingDependencyError: h5py is not installed.
        CorruptDataError: a shard of ``store`` is damaged.
    """
    if store.kind != "local":
        raise ShapeError(f"only local stores can be exported to AMES HDF5; {store.root} holds "
                         f"global (N, {store.dim}) features")
    if dtype not in H5_DTYPES or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"need dtype in {H5_DTYPES} and batch_size >= 1, got {dtype!r}, {batch_size!r}")
    h5py = _h5py()
    out = Path(path)
    shape = (len(store), int(store.max_local or 0), N_META + store.dim)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("features", shape=shape, dtype=dtype)
            ds.attrs["columns"] = ",".join([*AMES_COLUMNS, "descriptor"])
            f.create_dataset("ids", data=np.array(store.ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            start = 0
            for ids, feats in store.iter_batches(batch_size):
                ds[start:start + len(ids)] = pack_ames(feats, dtype=dtype)
                start += len(ids)
    return out


def import_ames_h5(path: str | os.PathLike[str], root: str | os.PathLike[str], *, ids: Sequence[str] | None = None,
                   meta: dict[str, Any] | None = None, shard_size: int = 1024, batch_size: int = 256,
                   overwrite: bool = False) -> FeatureStore:
    """Read an AMES HDF5 file into a new local store at ``root``.

    Descriptors keep the file's dtype on disk (float16 or float32); the other columns become
    float32 and the mask bool. Padding slots are zeroed.

    Args:
        ids: ``N`` item ids; default: the file's ``ids`` dataset, else ``"0" .. "N-1"``.

    Raises:
        CorruptDataError: the file is missing, not HDF5, lacks ``features``, has the wrong
            shape/dtype, a mask value not in {0, 1} or NaN/inf in a valid slot (no store is left).
        ConfigError: ``ids`` has the wrong length or duplicates, or ``root`` holds a store and
            ``overwrite`` is False.
        MissingDependencyError: h5py is not installed.
    """
    h5py = _h5py()
    src = Path(path)
    if not src.is_file():
        raise CorruptDataError(f"AMES file {src} does not exist; check the path")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise CorruptDataError(f"{src} is not a readable HDF5 file ({exc}); re-download or re-export it") from exc
    with f:
        ds = _features_dataset(f, src)
        n, n_loc, width = ds.shape
        item_ids = _resolve_ids(f, src, n, ids)
        with new_store(root, kind="local", dim=width - N_META, max_local=n_loc, desc_dtype=str(ds.dtype),
                       meta={**(meta or {}), "source": "ames_h5", "source_file": src.name},
                       shard_size=shard_size, overwrite=overwrite) as writer:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                feats = unpack_ames(ds[start:stop], where=f"{src} rows {start}:{stop}")
                writer.append(item_ids[start:stop], feats)
    return FeatureStore.open(root)


def _features_dataset(f: Any, src: Path) -> Any:
    if "features" not in f:
        raise CorruptDataError(f"{src} has no 'features' dataset; this is not an AMES local-feature file")
    ds = f["features"]
    if len(ds.shape) != 3 or ds.shape[2] < N_META + 1 or ds.shape[1] < 1:
        raise CorruptDataError(f"{src}: 'features' must have shape (N, L, 5 + d) with L, d >= 1, got {ds.shape}")
    if str(ds.dtype) not in H5_DTYPES:
        raise CorruptDataError(f"{src}: 'features' has dtype {ds.dtype}; AMES files are float32 or float16")
    return ds


def _resolve_ids(f: Any, src: Path, n: int, ids: Sequence[str] | None) -> list[str]:
    if ids is not None:
        out = list(ids)
        if len(out) != n:
            raise ConfigError(f"got {len(out)} ids for the {n} images in {src}; pass one id per image")
        return out
    if "ids" not in f:
        return [str(i) for i in range(n)]
    raw = f["ids"][()]
    out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(raw).reshape(-1)]
    if len(out) != n:
        raise CorruptDataError(f"{src}: 'ids' holds {len(out)} entries for {n} images; pass ids= explicitly")
    return out
