"""``asymfuse index build``: a searcher's index folder from fused gallery stores (and AMES).

The folder holds ``meta.json``, ``snapshot.afs`` and ``wal.log`` (see
:mod:`asymfuse.cloud.index.durable`), and, with AMES, ``ames.pt`` (a copy of the checkpoint) and
``ames_packed/`` (the packed binary store of ``index pack-ames``: a symlink, or a copy with
``copy_packed``; memory-mapped at serve time).

Ids: the rows of the given stores, in order, become ids ``0 .. N-1``; each item's ``key``
metadata is its image id in the store (the searcher finds its packed AMES codes by it, and
clients see it in every hit). The folder is written beside ``out`` and renamed into place, so a
failed build leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.features.store_format import sha256_file
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.cloud.index.durable import SNAPSHOT_FILE, DurableIndex
from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig
from asymfuse.cloud.index.index_meta import KEY_FIELD, IndexMeta
from asymfuse.edge.errors import ConfigError

AMES_FILE = "ames.pt"
PACKED_DIR = "ames_packed"
ADD_BATCH = 65536


def store_space(store: FeatureStore) -> str:
    """The embedding space of a store: its ``embedding_space_id``, else its extractor id."""
    meta = store.meta
    space = meta.get("embedding_space_id") or meta.get("extractor_id")
    if not space:
        raise ConfigError(f"{store.root} records no embedding space or extractor id; index a store written by "
                          "`asymfuse index fuse` or `asymfuse extract`")
    return str(space)


def open_stores(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[FeatureStore], str]:
    """``(stores, embedding space)`` of fused global stores of one space (closed again on a refusal).

    Raises:
        ConfigError: no paths, stores of two spaces or two dims, or a local store.
    """
    if not paths:
        raise ConfigError("give at least one fused feature store (--features)")
    stores = [FeatureStore.open(p) for p in paths]
    spaces, dims = {store_space(s) for s in stores}, {s.dim for s in stores}
    problem = ""
    if len(spaces) > 1:
        problem = (f"the stores are in different embedding spaces ({sorted(spaces)}); index stores fused by "
                   "one mixer (or extracted by one model) together")
    elif any(s.kind != "global" for s in stores):
        problem = "index build takes global (fused) feature stores; run `asymfuse index fuse` first"
    elif len(dims) > 1:
        problem = f"the stores have different dims {sorted(dims)}; index one space at a time"
    if problem:
        for s in stores:
            s.close()
        raise ConfigError(problem)
    return stores, spaces.pop()


def build_index(features: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                config: IndexConfig | None = None, ames: str | os.PathLike[str] | None = None,
                packed: str | os.PathLike[str] | None = None, copy_packed: bool = False,
                lq: int | None = None, lx: int | None = None, lam: float | None = None,
                gamma: float | None = None) -> IndexMeta:
    """Build the index folder ``out`` (must not exist); see the module docstring.

    ``lam`` / ``gamma`` override the AMES checkpoint's ensemble weights (e.g. chosen on a val split for
    this gallery's global search); ``lq`` / ``lx`` cap the descriptors AMES reads per query / image.

    Raises:
        ConfigError: ``out`` exists, stores of two spaces, mixed dims, ``ames`` without ``packed``,
            or a packed store built with another AMES checkpoint.
    """
    config = IndexConfig() if config is None else config
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new --out folder (or delete the old index)")
    if (ames is None) != (packed is None):
        raise ConfigError("give --ames and --packed together (the checkpoint and its `index pack-ames` store)")
    stores, space = open_stores(features)
    try:
        dim = stores[0].dim
        vectors = np.concatenate([s.global_features() for s in stores]) if stores else None
        keys = [k for s in stores for k in s.ids]
        model_spec = stores[0].meta.get("query_spec")
        built_from = [os.fspath(s.root) for s in stores]
    finally:
        for s in stores:
            s.close()
    if len(set(keys)) != len(keys):
        raise ConfigError("an image id appears in two stores; index each image once")
    index = FaissIndex.create(config=config, dim=dim)
    index.train(vectors)
    for start in range(0, len(keys), ADD_BATCH):
        stop = min(start + ADD_BATCH, len(keys))
        index.upsert(np.arange(start, stop, dtype=np.int64), vectors[start:stop],
                     [{KEY_FIELD: k} for k in keys[start:stop]])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ames_meta = _stage_ames(tmp, ames, packed, copy_packed=copy_packed, keys=keys, lq=lq, lx=lx, lam=lam,
                                gamma=gamma) if ames else None
        meta = IndexMeta(dim=dim, config=config.to_dict(), embedding_space_id=space, model_spec=model_spec,
                         built_from=";".join(built_from), count=len(keys), ames=ames_meta)
        DurableIndex.create(tmp, meta=meta, index=index).close(snapshot=False)
        checksums = {SNAPSHOT_FILE: sha256_file(tmp / SNAPSHOT_FILE)}
        if ames_meta:
            checksums[AMES_FILE] = sha256_file(tmp / AMES_FILE)
        meta = IndexMeta(**{**meta.__dict__, "checksums": checksums})
        meta.save(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


@dataclass(frozen=True)
class CheckedAMES:
    """An AMES checkpoint and its packed store, checked against a gallery (:func:`check_ames`)."""

    model: Any
    options: Any  # RerankOptions with the overrides applied
    overlap: int  # gallery keys that have packed locals
    max_local: int
    bits: int
    projection_sha256: str


def check_ames(ames: str | os.PathLike[str], packed: str | os.PathLike[str], *, keys: list[str], lq: int | None,
               lx: int | None, lam: float | None, gamma: float | None) -> CheckedAMES:
    """Load ``ames`` (binary), apply the λ/γ overrides, and check that ``packed`` holds its codes for
    some of ``keys`` (shared by the faiss folder and the Milvus collection builds).

    Raises:
        ConfigError: bad overrides, codes of another checkpoint, or no packed image in the gallery.
    """
    from asymfuse.cloud.ames.checkpoint import load_ames
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.packed_store import PackedLocalStore

    model, info = load_ames(ames, variant="binary")
    base = RerankOptions.from_info(info, lq=lq, lx=lx)
    options = RerankOptions(lam=base.lam if lam is None else lam, gamma=base.gamma if gamma is None else gamma,
                            lq=lq, lx=lx)  # validates the overrides
    with PackedLocalStore.open(packed, model=model) as store:  # refuses codes of another checkpoint
        overlap = len(set(store.ids) & set(keys))
        max_local, bits, digest = store.max_local, store.bits, store.projection_sha256
    if overlap == 0:
        raise ConfigError(f"none of the packed store's images are in the fused gallery; pack the same gallery's "
                          f"local features (`asymfuse index pack-ames --store ...`) for {packed}")
    return CheckedAMES(model=model, options=options, overlap=overlap, max_local=max_local, bits=bits,
                       projection_sha256=digest)


def _stage_ames(folder: Path, ames: str | os.PathLike[str], packed: str | os.PathLike[str], *, copy_packed: bool,
                keys: list[str], lq: int | None, lx: int | None, lam: float | None, gamma: float | None) -> dict:
    checked = check_ames(ames, packed, keys=keys, lq=lq, lx=lx, lam=lam, gamma=gamma)
    shutil.copyfile(ames, folder / AMES_FILE)
    target = folder / PACKED_DIR
    if copy_packed:
        shutil.copytree(packed, target)
    else:
        os.symlink(Path(packed).resolve(), target)
    return {"checkpoint": AMES_FILE, "packed": PACKED_DIR, "local_dim": int(checked.model.cfg.local_dim),
            "lam": checked.options.lam, "gamma": checked.options.gamma, "lq": lq, "lx": lx,
            "items_with_locals": checked.overlap}
