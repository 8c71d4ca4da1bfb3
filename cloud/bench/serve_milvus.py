"""The Milvus rows of ``bench serve``: the same gallery, queries and timings, served from a Milvus collection.

For each faiss factory in ``milvus_factories`` the gallery goes into a collection with the matching
Milvus index (``milvus:<factory>`` rows; :meth:`MilvusIndexConfig.from_factory`) the way
``index build --backend milvus`` loads it (insert in batches, flush, index, load: ``build_s``), and
a searcher over ``milvus://...`` is timed exactly like the faiss rows. ``bytes_per_image`` is the
embedded server's resident memory grown while building, divided by ``n`` (0 for an external server);
the snapshot column (``index_bytes_per_image``) does not apply and is 0.

With AMES the synthetic packed codes go once into a descriptor collection, and the rows' notes
hold the **AMES-locals fetch latency**: p50 / p99 ms to fetch one query's top-100 candidates'
codes from Milvus (:meth:`MilvusLocals.for_keys`), next to reading the same rows from the
memory-mapped packed store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.index.index_meta import KEY_FIELD, IndexMeta
from asymfuse.cloud.index.milvus_client import connect
from asymfuse.cloud.index.milvus_config import MilvusIndexConfig, MilvusTarget
from asymfuse.cloud.index.milvus_index import MilvusIndex
from asymfuse.edge.errors import ConfigError

BATCH = 10_000


@dataclass(frozen=True)
class MilvusEndpoint:
    """The server the rows use; ``embedded`` when the bench started it."""

    uri: str
    embedded: Any = None

    def rss_bytes(self) -> int:
        return int(self.embedded.rss_bytes()) if self.embedded is not None else 0


@contextmanager
def milvus_endpoint(setting: str, *, info: dict[str, Any], log: Callable[[str], Any] = print
                    ) -> Iterator[MilvusEndpoint | None]:
    """``off``: None; ``embedded``: a server started here and stopped after (None, logged, when it cannot
    start: no ``milvus`` extra, or another embedded server runs); else the ``http(s)://`` URI given.

    ``info`` receives the embedded server's start time and idle memory (or why it was skipped).

    Raises:
        ConfigError: another setting.
    """
    if setting == "off":
        yield None
        return
    if setting != "embedded":
        if not setting.startswith(("http://", "https://")):
            raise ConfigError(f"milvus={setting!r}: use embedded, off, or http://host:port of a running server")
        info.update(uri=setting)
        yield MilvusEndpoint(uri=setting)
        return
    from asymfuse.cloud.index.milvus_server import EmbeddedMilvus, MilvusStartError
    from asymfuse.edge.errors import MissingDependencyError

    try:
        server = EmbeddedMilvus.start()
    except (MissingDependencyError, MilvusStartError) as exc:  # the faiss rows still run
        info.update(skipped=str(exc).splitlines()[0])
        log(f"[bench serve] no Milvus rows: {info['skipped']} (--set milvus=off skips them quietly)")
        yield None
        return
    info.update(embedded="milvus 2.3.5 (pip wheel)", start_s=round(server.start_s, 1),
                idle_rss_mb=round(server.rss_bytes() / 2**20))
    log(f"[bench serve] embedded Milvus up in {server.start_s:.1f} s ({info['idle_rss_mb']} MB)")
    try:
        yield MilvusEndpoint(uri=server.uri, embedded=server)
    finally:
        info.update(peak_rss_mb=round(server.rss_bytes() / 2**20))
        server.stop()


def milvus_rows(server: MilvusEndpoint, *, n: int, xb: np.ndarray, factories: Sequence[str], space: str,
                ames_files: tuple[Path, Path] | None, lq: int, lx: int, queries: np.ndarray, k: int, threads: int,
                measure: Callable[..., list[Any]], log: Callable[[str], Any] = print) -> list[Any]:
    """The rows of every factory (see the module docstring); ``measure(searcher, port, factory=..., build_s=...,
    per_img=..., idx_per_img=..., notes=...)`` times one served index. Collections are dropped after."""
    from asymfuse.cloud.index.milvus_build import ames_entry, load_locals

    base = f"bench_serve_{n}_{uuid.uuid4().hex[:8]}"
    keys = [f"img{i}" for i in range(n)]
    first = MilvusTarget(uri=server.uri, collection=base, timeout_s=60)
    entry = None
    rows: list[Any] = []
    try:
        if ames_files is not None:
            t0 = time.perf_counter()
            entry = ames_entry(ames_files[0], ames_files[1], keys=keys, lq=lq, lx=lx, lam=None, gamma=None,
                               name=f"{base}_ames")
            load_locals(first.sibling(entry["collection"]), ames_files[1], entry, set(keys), log=lambda _l: None)
            log(f"[bench serve] n={n} milvus: AMES codes loaded in {time.perf_counter() - t0:.1f} s")
        for factory in factories:
            target = first.sibling(f"{base}_{factory.replace(',', '_')}")
            rows += _factory_rows(server, target, factory, xb=xb, keys=keys, space=space, entry=entry,
                                  ames_files=ames_files, queries=queries, k=k, threads=threads, measure=measure,
                                  log=log)
    finally:
        _drop(first, prefix=base)
    return rows


def _factory_rows(server: MilvusEndpoint, target: MilvusTarget, factory: str, *, xb: np.ndarray, keys: list[str],
                  space: str, entry: dict[str, Any] | None, ames_files: tuple[Path, Path] | None,
                  queries: np.ndarray, k: int, threads: int, measure: Callable[..., list[Any]],
                  log: Callable[[str], Any]) -> list[Any]:
    from asymfuse.cloud.service.config import ServerConfig
    from asymfuse.cloud.service.loader import open_searcher
    from asymfuse.cloud.service.server import create_server

    n = xb.shape[0]
    config = MilvusIndexConfig.from_factory(factory)
    log(f"[bench serve] n={n} milvus:{factory} ({config.index_type}): building")
    rss0, t0 = server.rss_bytes(), time.perf_counter()
    meta = IndexMeta(dim=xb.shape[1], config=config.to_dict(), embedding_space_id=space, count=n, ames=entry)
    with MilvusIndex.create(target, meta=meta, ready=False) as index:
        for lo in range(0, n, BATCH):
            hi = min(lo + BATCH, n)
            index.insert_new(np.arange(lo, hi), xb[lo:hi], [{KEY_FIELD: keys[i]} for i in range(lo, hi)])
        index.finish_build()
    build_s = time.perf_counter() - t0
    per_img = max(server.rss_bytes() - rss0, 0) / n
    settings = ServerConfig(index_dir=target.url, ames_checkpoint=str(ames_files[0]) if entry and ames_files else None,
                            snapshot_interval_s=0, threads=threads, max_k=max(1000, k))
    searcher = open_searcher(settings)
    grpc_server, port = create_server(settings, searcher=searcher)
    try:
        notes = fetch_latency(searcher, queries, k=k, packed=ames_files[1]) if entry and ames_files else {}
        if notes:
            log(f"[bench serve]   AMES codes of the top {k}: Milvus fetch p50 {notes['ames_fetch_p50_ms']:.2f} ms, "
                f"p99 {notes['ames_fetch_p99_ms']:.2f} ms (packed store p50 {notes['packed_fetch_p50_ms']:.3f} ms)")
        return measure(searcher, port, factory=f"milvus:{factory}", build_s=build_s, per_img=per_img,
                       idx_per_img=0.0, notes=notes)
    finally:
        grpc_server.stop(0)


def fetch_latency(searcher: Any, queries: np.ndarray, *, k: int, packed: Path) -> dict[str, float]:
    """p50 / p99 ms to fetch the AMES codes of each query's top-``k`` candidates from the Milvus
    descriptor collection, and (the baseline) from the memory-mapped packed store."""
    from asymfuse.cloud.ames.packed_store import PackedLocalStore

    milvus_ms, packed_ms, missing = [], [], 0
    with PackedLocalStore.open(packed, verify=False) as store:
        row_of = {key: r for r, key in enumerate(store.ids)}
        for q in queries:
            _, I = searcher.index.search(q[None, :], k=k)
            keys = [m.get(KEY_FIELD, "") for m in searcher.index.metadata(I[0][I[0] >= 0].tolist())]
            t0 = time.perf_counter()
            source, rows = searcher.reranker.packed.for_keys(keys)
            milvus_ms.append((time.perf_counter() - t0) * 1e3)
            missing += int((rows < 0).sum())  # 0: every bench image has codes
            t0 = time.perf_counter()
            store.get(np.array([row_of[key] for key in keys]))
            packed_ms.append((time.perf_counter() - t0) * 1e3)
    m50, m99 = np.percentile(milvus_ms, [50, 99])
    p50, p99 = np.percentile(packed_ms, [50, 99])
    return {"ames_fetch_p50_ms": float(m50), "ames_fetch_p99_ms": float(m99), "packed_fetch_p50_ms": float(p50),
            "packed_fetch_p99_ms": float(p99), "fetched": int(k), "fetch_missing": missing}


def _drop(target: MilvusTarget, *, prefix: str) -> None:
    client = connect(target)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
    finally:
        client.close()


def milvus_report_lines(report: Mapping[str, Any]) -> list[str]:
    """The Milvus rows' notes: server, and the AMES-locals fetch latency of the top 100."""
    info = report["info"].get("milvus") or {}
    rows = [r for r in report["rows"] if str(r["factory"]).startswith("milvus:")]
    if not rows:
        return []
    lines = ["Milvus rows (`milvus:<factory>`): the Milvus counterpart of the faiss factory on "
             + (f"an embedded Milvus 2.3.5 (started in {info.get('start_s')} s, {info.get('idle_rss_mb')} MB idle, "
                f"{info.get('peak_rss_mb')} MB at the end)" if info.get("embedded") else f"{info.get('uri')}")
             + "; bytes_per_image: the server's resident memory grown while building / n.", ""]
    for r in rows:
        notes = r.get("notes") or {}
        if "ames_fetch_p50_ms" in notes and r["ames"]:
            lines.append(f"- {r['factory']}: AMES codes of the top {notes['fetched']} fetched from Milvus in "
                         f"p50 {notes['ames_fetch_p50_ms']:.2f} / p99 {notes['ames_fetch_p99_ms']:.2f} ms (packed "
                         f"store: p50 {notes['packed_fetch_p50_ms']:.3f} / p99 {notes['packed_fetch_p99_ms']:.3f} ms)")
    return lines + [""]
