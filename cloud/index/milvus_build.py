"""``asymfuse index build --backend milvus``: fused gallery stores (and AMES codes) into Milvus collections.

Ids and metadata are those of the faiss build (:mod:`asymfuse.cloud.index.build`): store rows in
order become ids ``0 .. N-1``, each with the metadata ``key`` = its image id. The collection is
made in state ``loading`` with the full :class:`IndexMeta`; vectors go in batches, then the
collection is flushed, indexed and loaded and marked ``ready`` (flushing first matters: rows not
flushed when the index is built are left out of it).

**Resume.** Every acknowledged insert is durable in Milvus, and rows go in strictly in id order (one
insert call at a time), so the rows present always form a prefix ``0 .. m-1``. Rerunning the same
command finds the collection still ``loading`` with the same meta, flushes it and reads its row
count ``m`` (a collection being built has no index yet, so it cannot be loaded and queried), and
continues from row ``m``: an interrupted build picks up where it stopped, without duplicates. The
descriptor collection resumes the same way. A ``ready`` collection with the same meta is left as it
is; one with another meta (other stores, config or AMES checkpoint) is refused.

With AMES (``ames`` + ``packed``), the packed codes of the gallery's images go into the descriptor
collection (:mod:`asymfuse.cloud.index.milvus_locals`), resumed the same way by key, and the meta's
``ames`` entry records the checkpoint's sha256, the λ/γ/``lq``/``lx`` options and the projection
digest; ``asymfuse serve --ames`` must be given that checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.features.store_format import sha256_file
from asymfuse.cloud.index.build import check_ames, open_stores
from asymfuse.cloud.index.index_meta import KEY_FIELD, IndexMeta
from asymfuse.cloud.index.milvus_client import READY, connect, flushed_rows, read_meta, translated
from asymfuse.cloud.index.milvus_config import MAX_TOP_K, MilvusIndexConfig, MilvusTarget
from asymfuse.cloud.index.milvus_index import MilvusIndex
from asymfuse.cloud.index.milvus_locals import (
    create_locals_collection,
    finish_locals,
    insert_locals,
    locals_collection,
)
from asymfuse.edge.errors import ConfigError

BATCH = 10_000
LOCALS_BATCH = 2_000


def build_milvus_index(features: Sequence[str | os.PathLike[str]], target: MilvusTarget, *,
                       config: MilvusIndexConfig | None = None, ames: str | os.PathLike[str] | None = None,
                       packed: str | os.PathLike[str] | None = None, lq: int | None = None, lx: int | None = None,
                       lam: float | None = None, gamma: float | None = None, batch_size: int = BATCH,
                       log: Callable[[str], Any] = print) -> IndexMeta:
    """Load ``features`` into ``target.collection`` (see the module docstring); returns the meta.

    Raises:
        ConfigError: stores of two spaces or dims, ``ames`` without ``packed``, a bad batch size, or a
            collection that holds another build.
        IndexUnavailableError: the server cannot be reached (rerun to resume).
    """
    config = MilvusIndexConfig() if config is None else config
    if (ames is None) != (packed is None):
        raise ConfigError("give --ames and --packed together (the checkpoint and its `index pack-ames` store)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_TOP_K:
        raise ConfigError(f"batch_size={batch_size!r} must be an int in [1, {MAX_TOP_K}]")
    stores, space = open_stores(features)
    try:
        dim = stores[0].dim
        config.check_dim(dim)
        keys = [k for s in stores for k in s.ids]
        if len(set(keys)) != len(keys):
            raise ConfigError("an image id appears in two stores; index each image once")
        entry = ames_entry(ames, packed, keys=keys, lq=lq, lx=lx, lam=lam, gamma=gamma,
                           name=locals_collection(target.collection)) if ames else None
        meta = IndexMeta(dim=dim, config=config.to_dict(), embedding_space_id=space,
                         model_spec=stores[0].meta.get("query_spec"),
                         built_from=";".join(os.fspath(s.root) for s in stores), count=len(keys), ames=entry)
        index, resuming = _open_or_create(target, meta, log)
        if index is None:
            return meta
        with index:
            start = time.perf_counter()
            first = index.flushed_rows() if resuming else 0
            _load_vectors(index, stores, keys, batch_size=batch_size, first=first, log=log)
            if entry:
                load_locals(target.sibling(entry["collection"]), packed, entry, set(keys), log=log)
            log(f"[index build] flushing, building the {config.index_type} index and loading {target.collection}")
            index.finish_build()
            log(f"[index build] {target.url}: {len(keys)} items ready in {time.perf_counter() - start:.1f} s")
        return meta
    finally:
        for s in stores:
            s.close()


def _open_or_create(target: MilvusTarget, meta: IndexMeta, log: Callable[[str], Any]
                    ) -> tuple[MilvusIndex | None, bool]:
    """``(index, resuming)``; ``(None, False)`` when the same build is already ``ready``."""
    client = connect(target)
    try:
        found = read_meta(client, target, target.collection)
    finally:
        client.close()
    if found is None:
        return MilvusIndex.create(target, meta=meta, ready=False), False
    old, state = found
    if old.to_dict() != meta.to_dict():
        raise ConfigError(f"collection {target.collection!r} on {target.uri} holds another build (from "
                          f"{old.built_from!r}, config {old.config}, space {old.embedding_space_id!r}); choose another "
                          "--collection, or drop that one first")
    if state == READY:
        log(f"[index build] {target.url} is already built from these stores; nothing to do")
        return None, False
    log(f"[index build] resuming the unfinished build of {target.url}")
    return MilvusIndex(connect(target), target, old), True


def _load_vectors(index: MilvusIndex, stores: list, keys: list[str], *, batch_size: int, first: int,
                  log: Callable[[str], Any]) -> None:
    """Insert rows ``first ..`` of the stores (ids = global row numbers), ``batch_size`` at a time."""
    n, offset, done = len(keys), 0, first
    t0 = time.perf_counter()
    for store in stores:
        x = store.global_features()
        for lo in range(max(first - offset, 0), x.shape[0], batch_size):
            hi = min(lo + batch_size, x.shape[0])
            ids = np.arange(offset + lo, offset + hi, dtype=np.int64)
            index.insert_new(ids, np.ascontiguousarray(x[lo:hi], dtype=np.float32),
                             [{KEY_FIELD: keys[i]} for i in ids.tolist()])
            done += ids.size
            rate = (done - first) / max(time.perf_counter() - t0, 1e-9)
            log(f"[index build] vectors {done}/{n} ({first} already there), {rate:.0f}/s")
        offset += x.shape[0]


def ames_entry(ames: str | os.PathLike[str], packed: str | os.PathLike[str], *, keys: list[str], lq: int | None,
                lx: int | None, lam: float | None, gamma: float | None, name: str) -> dict[str, Any]:
    c = check_ames(ames, packed, keys=keys, lq=lq, lx=lx, lam=lam, gamma=gamma)
    return {"checkpoint_sha256": sha256_file(ames), "collection": name, "local_dim": int(c.model.cfg.local_dim),
            "lam": c.options.lam, "gamma": c.options.gamma, "lq": lq, "lx": lx,
            "max_local": min(c.max_local, lx) if lx else c.max_local, "bits": c.bits,
            "projection_sha256": c.projection_sha256, "items_with_locals": c.overlap}


def load_locals(target: MilvusTarget, packed: str | os.PathLike[str], entry: dict[str, Any], gallery: set[str], *,
                 log: Callable[[str], Any]) -> None:
    """The gallery's packed codes into the descriptor collection, in packed-store order (resumable by count)."""
    from asymfuse.cloud.ames.packed_store import PackedLocalStore

    max_local = int(entry["max_local"])
    client = connect(target)
    try:
        with translated(target, f"describe {target.collection}"):
            exists = client.has_collection(target.collection, timeout=target.timeout_s)
        if not exists:
            create_locals_collection(client, target, max_local=max_local, bits=int(entry["bits"]))
        first = flushed_rows(client, target) if exists else 0
        with PackedLocalStore.open(packed, verify=False) as store:
            ids = store.ids
            rows = np.array([r for r, k in enumerate(ids) if k in gallery], dtype=np.int64)
            for lo in range(first, rows.size, LOCALS_BATCH):
                chunk = rows[lo:lo + LOCALS_BATCH]
                codes, counts = store.get(chunk)
                insert_locals(client, target, [ids[r] for r in chunk], codes[:, :max_local],
                              np.minimum(counts, max_local))
                log(f"[index build] AMES descriptors {lo + chunk.size}/{rows.size} images ({first} already there)")
        finish_locals(client, target)
    finally:
        client.close()
