"""``asymfuse bench serve``: the searcher at 100k / 1M synthetic vectors, in-process and over gRPC.

For each gallery size and faiss factory it builds a real index folder (:func:`build_searcher_folder`:
train, add, snapshot), then measures

- **build time** (train + add + first snapshot) and **memory per image**: the process's resident
  memory grown while building, divided by the gallery size (the faiss index, the id set and the
  metadata), next to the serialised index's bytes per image;
- **recall@100** against exact inner-product search (NumPy/faiss flat ground truth);
- **in-process** p50 / p99 of :meth:`Searcher.search` (one query at a time, k = 100);
- **gRPC** QPS and p50 / p99 on 127.0.0.1 with ``clients`` concurrent client threads.

With ``ames`` the same index also serves AMES re-ranking of the top 100 with a random binary AMES
checkpoint (128-d locals, the published architecture) over a packed store of synthetic codes
(``lx`` = 48 per image); queries send ``lq`` synthetic local descriptors.

Unless ``milvus="off"``, the same gallery is also served from Milvus collections (``milvus:<factory>``
rows, :mod:`asymfuse.cloud.bench.serve_milvus`), on an embedded server started for the run or a
given one.

Vectors are a Gaussian mixture on the unit sphere (clustered, like real embeddings), dim 512.
"""

from __future__ import annotations

import functools
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.bench.overrides import apply_overrides, preset_config
from asymfuse.cloud.bench.report_common import markdown_head, report_head, report_paths
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.cloud.index.durable import SNAPSHOT_FILE, DurableIndex
from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig
from asymfuse.cloud.index.index_meta import KEY_FIELD, IndexMeta
from asymfuse.edge.fileio import atomic_write_text

SPACE = "bench-serve-synthetic"
DESCRIPTION = ("Synthetic unit vectors (Gaussian mixture, 1000 clusters), real index folders (faiss + write-ahead "
               "log), searched one query at a time in-process and by concurrent clients over gRPC on 127.0.0.1 "
               "(clients and server share one Python process). k = 100; recall@100 against exact search; AMES rows "
               "re-rank the top 100 with a random binary AMES (synthetic codes, L_x = 48; L_q = 64). milvus:<factory> "
               "rows: the same gallery in a Milvus collection with the matching index, served over milvus://.")
QUICK: dict[str, Any] = {"sizes": (100_000,)}
DEFAULT: dict[str, Any] = {"sizes": (100_000, 1_000_000)}
TIERS = {"quick": QUICK, "default": DEFAULT}
COLUMNS = ("n", "factory", "ames", "build_s", "bytes_per_image", "index_bytes_per_image", "recall_at_100", "qps",
           "grpc_p50_ms", "grpc_p99_ms", "inproc_p50_ms", "inproc_p99_ms")


@dataclass(frozen=True)
class ServeBenchConfig:
    """One bench run; build it with :meth:`preset`.

    Attributes:
        sizes: gallery sizes; dim: vector dimension; factories: faiss factory strings.
        queries: global-search queries timed per row; k: results per query (recall@k).
        clients: concurrent gRPC clients; ames: add AMES rows; ames_queries: queries timed per AMES row.
        lq, lx: AMES query / gallery descriptors; local_dim: AMES descriptor dimension.
        nlist_cap: IVF lists are capped at ``n / 39`` (faiss wants >= 39 training points per list).
        milvus: Milvus rows: ``embedded`` (start the ``milvus`` wheel's server in a temp folder),
            ``off``, or the ``http://host:port`` of a running server.
        milvus_factories: faiss factories whose Milvus counterparts get rows (``milvus:<factory>``).
    """

    tier: str = "quick"
    sizes: tuple[int, ...] = (100_000,)
    dim: int = 512
    factories: tuple[str, ...] = ("Flat", "HNSW32", "IVF4096,PQ64", "IVF4096,SQ8")
    queries: int = 500
    k: int = 100
    clients: int = 4
    ames: bool = True
    ames_queries: int = 20
    lq: int = 64
    lx: int = 48
    local_dim: int = 128
    seed: int = 0
    nlist_cap: bool = True
    milvus: str = "embedded"
    milvus_factories: tuple[str, ...] = ("Flat", "HNSW32", "IVF4096,SQ8")

    @classmethod
    def preset(cls, tier: str, **overrides: Any) -> ServeBenchConfig:
        return preset_config(cls, tier, TIERS, what="bench serve", **overrides)

    def with_overrides(self, values: Mapping[str, Any]) -> ServeBenchConfig:
        """``--set`` values; tuple settings take a JSON list or one value (sizes=100000)."""
        return apply_overrides(self, values, what="bench serve")


@dataclass(frozen=True)
class ServeRow:
    """One table row (see the module docstring for the columns)."""

    n: int
    factory: str
    ames: bool
    build_s: float
    bytes_per_image: float
    index_bytes_per_image: float
    recall_at_100: float
    qps: float
    grpc_p50_ms: float
    grpc_p99_ms: float
    inproc_p50_ms: float
    inproc_p99_ms: float
    status: str = "ok"
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- data
def synthetic_vectors(n: int, dim: int, *, seed: int, clusters: int = 1000, chunk: int = 100_000) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors from a Gaussian mixture (generated in chunks)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(10_000 + seed).standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = centres[rng.integers(0, clusters, stop - start)] + 0.6 * rng.standard_normal((stop - start, dim),
                                                                                          dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """``(nq, k)`` exact inner-product neighbours (faiss flat, the brute force)."""
    import faiss

    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    return flat.search(xq, k)[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _factory_for(factory: str, n: int, cap: bool) -> str:
    """Cap ``IVF{nlist}`` at ``n // 39`` lists (faiss's minimum points per list) for small galleries."""
    if not cap:
        return factory
    parts = factory.split(",")
    for i, part in enumerate(parts):
        if part.startswith("IVF"):
            nlist = int(part[3:])
            parts[i] = f"IVF{max(1, min(nlist, n // 39))}"
    return ",".join(parts)


def build_searcher_folder(xb: np.ndarray, folder: Path, *, factory: str, space: str = SPACE
                          ) -> tuple[float, float, float]:
    """Index ``xb`` (ids = rows, ``key`` = ``img<row>``) into ``folder`` as embedding space ``space``;
    returns ``(seconds, resident bytes per image, snapshot bytes per image)``."""
    rss0 = _rss_bytes()
    start = time.perf_counter()
    index = FaissIndex.create(config=IndexConfig(factory=factory), dim=xb.shape[1])
    index.train(xb)
    for lo in range(0, xb.shape[0], 65536):
        hi = min(lo + 65536, xb.shape[0])
        index.upsert(np.arange(lo, hi), xb[lo:hi], [{KEY_FIELD: f"img{i}"} for i in range(lo, hi)])
    meta = IndexMeta(dim=xb.shape[1], config=index.config.to_dict(), embedding_space_id=space, count=xb.shape[0])
    DurableIndex.create(folder, meta=meta, index=index).close(snapshot=False)
    seconds = time.perf_counter() - start
    resident = (_rss_bytes() - rss0) / xb.shape[0]
    del index
    return seconds, resident, (folder / SNAPSHOT_FILE).stat().st_size / xb.shape[0]


def synthetic_ames(folder: Path, n: int, *, cfg: ServeBenchConfig) -> dict[str, Any]:
    """:func:`synthetic_ames_files` in an index folder, with the ``ames`` entry added to its ``meta.json``."""
    entry = synthetic_ames_files(folder, n, cfg=cfg)
    meta = IndexMeta.load(folder)
    IndexMeta(**{**meta.__dict__, "ames": entry}).save(folder)
    return entry


def synthetic_ames_files(folder: Path, n: int, *, cfg: ServeBenchConfig) -> dict[str, Any]:
    """A random binary AMES checkpoint ``folder/ames.pt`` and a packed store ``folder/ames_packed`` of random
    codes for ids ``img0..``; returns the index meta's ``ames`` entry (paths relative to ``folder``)."""
    from asymfuse.cloud.ames.checkpoint import save_ames
    from asymfuse.cloud.ames.model import create_ames
    from asymfuse.cloud.ames.packed_build import write_packed_codes

    model = create_ames(local_dim=cfg.local_dim, binary=True, seed=cfg.seed).eval()
    save_ames(model, folder / "ames.pt")
    rng = np.random.default_rng(cfg.seed + 1)
    nbytes = model.cfg.model_dim // 8
    codes = rng.integers(0, 256, size=(n, cfg.lx, nbytes), dtype=np.uint8)
    counts = np.full(n, cfg.lx, dtype=np.int32)
    write_packed_codes(model, folder / "ames_packed", ids=[f"img{i}" for i in range(n)], codes=codes,
                       counts=counts, meta={"extractor_name": "synthetic"}).close()
    return {"checkpoint": "ames.pt", "packed": "ames_packed", "local_dim": cfg.local_dim, "lq": cfg.lq,
            "lx": cfg.lx}


# ---------------------------------------------------------------------------- timing
def _percentiles(ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(ms), [50, 99])
    return float(p50), float(p99)


def time_in_process(searcher: Any, xq: np.ndarray, *, k: int, locals_: np.ndarray | None = None
                    ) -> tuple[float, float, np.ndarray]:
    """p50 / p99 ms of one-at-a-time searches and the ``(nq, k)`` ids returned."""
    ms, ids = [], []
    for i, q in enumerate(xq):
        loc = None if locals_ is None else locals_[i]
        t0 = time.perf_counter()
        result = searcher.search(q, k=k, locals_=loc, pad=None if loc is None else np.zeros(len(loc), bool))
        ms.append((time.perf_counter() - t0) * 1e3)
        row = [h.id for h in result.hits] + [-1] * (k - len(result.hits))
        ids.append(row)
    p50, p99 = _percentiles(ms)
    return p50, p99, np.asarray(ids)


def time_grpc(port: int, xq: np.ndarray, *, k: int, clients: int, locals_: np.ndarray | None = None
              ) -> tuple[float, float, float]:
    """``(QPS, p50 ms, p99 ms)`` of ``clients`` threads splitting ``xq`` over loopback gRPC."""
    from asymfuse.edge.search_client import ClientConfig, SearchClient

    per: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            with SearchClient(ClientConfig(target=f"127.0.0.1:{port}", embedding_space_id=SPACE, retries=0,
                                           timeout_s=120)) as c:
                for i in range(slot, len(xq), clients):
                    loc = None if locals_ is None else locals_[i]
                    t0 = time.perf_counter()
                    c.search(xq[i], k=k, locals_=loc)
                    per[slot].append((time.perf_counter() - t0) * 1e3)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    ms = [x for p in per for x in p]
    p50, p99 = _percentiles(ms)
    return len(ms) / wall, p50, p99


# ---------------------------------------------------------------------------- the bench
@dataclass(frozen=True)
class Workload:
    """One gallery size's data: gallery ``xb``, queries ``xq``, exact ``truth``, AMES query ``q_locals``."""

    n: int
    xb: np.ndarray
    xq: np.ndarray
    truth: np.ndarray
    q_locals: np.ndarray


def measure_served(cfg: ServeBenchConfig, data: Workload, searcher: Any, port: int, *, factory: str,
                   build_s: float, per_img: float, idx_per_img: float, log: Any = print,
                   notes: Mapping[str, Any] | None = None) -> list[ServeRow]:
    """The rows of one served index (global, then AMES): recall, in-process and gRPC latency."""
    rows = []
    for with_ames in ((False, True) if cfg.ames else (False,)):
        nq = cfg.ames_queries if with_ames else cfg.queries
        loc = data.q_locals if with_ames else None
        log(f"[bench serve] n={data.n} {factory} ames={with_ames}: timing {nq} queries")
        p50, p99, got = time_in_process(searcher, data.xq[:nq], k=cfg.k, locals_=loc)
        if with_ames:
            got = time_in_process(searcher, data.xq[:nq], k=cfg.k)[2]
        recall = _recall(got, data.truth[:nq])
        qps, g50, g99 = time_grpc(port, data.xq[:nq], k=cfg.k, clients=cfg.clients, locals_=loc)
        rows.append(ServeRow(n=data.n, factory=factory, ames=with_ames, build_s=build_s, bytes_per_image=per_img,
                             index_bytes_per_image=idx_per_img, recall_at_100=recall, qps=qps, grpc_p50_ms=g50,
                             grpc_p99_ms=g99, inproc_p50_ms=p50, inproc_p99_ms=p99,
                             notes={"queries": nq, "lq": cfg.lq if with_ames else None,
                                    "lx": cfg.lx if with_ames else None, **(notes or {})}))
        log(f"[bench serve]   recall@{cfg.k} {recall:.4f}, in-process p50 {p50:.2f} ms, "
            f"gRPC {qps:.0f} QPS p99 {g99:.2f} ms")
    return rows


def _faiss_rows(cfg: ServeBenchConfig, data: Workload, work: Path, log: Any) -> list[ServeRow]:
    from asymfuse.cloud.service.config import ServerConfig
    from asymfuse.cloud.service.loader import open_searcher
    from asymfuse.cloud.service.server import create_server

    rows: list[ServeRow] = []
    for factory in cfg.factories:
        real = _factory_for(factory, data.n, cfg.nlist_cap)
        folder = work / f"{data.n}-{real.replace(',', '_')}"
        log(f"[bench serve] n={data.n} {real}: building")
        build_s, per_img, idx_per_img = build_searcher_folder(data.xb, folder, factory=real)
        if cfg.ames:
            synthetic_ames(folder, data.n, cfg=cfg)
        config = ServerConfig(index_dir=str(folder), snapshot_interval_s=0, threads=max(4, cfg.clients),
                              max_k=max(1000, cfg.k))
        searcher = open_searcher(config)
        server, port = create_server(config, searcher=searcher)
        try:
            rows += measure_served(cfg, data, searcher, port, factory=real, build_s=build_s, per_img=per_img,
                                   idx_per_img=idx_per_img, log=log)
        finally:
            server.stop(0)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def run_serve_bench(cfg: ServeBenchConfig, *, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """Run every row; write ``report.md`` and ``report.json`` into ``out_dir``; returns the report."""
    from asymfuse.cloud.bench.serve_milvus import milvus_endpoint, milvus_rows

    t_start = time.perf_counter()
    rows: list[ServeRow] = []
    work = Path(tempfile.mkdtemp(prefix="asymfuse-bench-serve-"))
    milvus_info: dict[str, Any] = {}
    try:
        with milvus_endpoint(cfg.milvus, info=milvus_info, log=log) as server:
            for n in cfg.sizes:
                xb = synthetic_vectors(n, cfg.dim, seed=cfg.seed)
                xq = synthetic_vectors(cfg.queries, cfg.dim, seed=cfg.seed + 7)
                data = Workload(n=n, xb=xb, xq=xq, truth=exact_top_k(xb, xq, cfg.k),
                                q_locals=np.random.default_rng(cfg.seed + 3).standard_normal(
                                    (cfg.ames_queries, cfg.lq, cfg.local_dim)).astype(np.float32))
                rows += _faiss_rows(cfg, data, work, log)
                if server is not None:
                    ames_files = None
                    if cfg.ames:
                        (work / f"milvus-ames-{n}").mkdir()
                        synthetic_ames_files(work / f"milvus-ames-{n}", n, cfg=cfg)
                        ames_files = (work / f"milvus-ames-{n}" / "ames.pt", work / f"milvus-ames-{n}" / "ames_packed")
                    factories = [_factory_for(f, n, cfg.nlist_cap) for f in cfg.milvus_factories]
                    measure = functools.partial(measure_served, cfg, data, log=log)
                    rows += milvus_rows(server, n=n, xb=xb, factories=factories, space=SPACE, ames_files=ames_files,
                                        lq=cfg.lq, lx=cfg.lx, queries=data.xq[:cfg.ames_queries], k=cfg.k,
                                        threads=max(4, cfg.clients), measure=measure, log=log)
                del xb, data
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runtime = time.perf_counter() - t_start
    info = {"description": DESCRIPTION, "config": asdict(cfg), "machine": _machine(), "milvus": milvus_info}
    report = report_head(rows, title=f"bench serve ({cfg.tier})", runtime_s=runtime, info=info)
    markdown = render_markdown(report)
    paths = report_paths(out_dir, {"markdown": "report.md", "json": "report.json"})
    atomic_write_text(paths["markdown"], markdown)
    write_json(paths["json"], report)
    return {"rows": rows, "markdown": markdown, "paths": paths, "runtime_s": runtime}


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(g[:k].tolist()) & set(t.tolist())) / k for g, t in zip(got, truth)]))


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = markdown_head(report["title"], report["info"])
    cells = [{**r, "ames": "top-100" if r["ames"] else "-", "bytes_per_image": round(r["bytes_per_image"]),
              "index_bytes_per_image": round(r["index_bytes_per_image"])} for r in report["rows"]]
    lines += [markdown_table(cells, COLUMNS, digits=2), "",
              f"Runtime {report['runtime_s']:.0f} s on {report['info']['machine']['cpus']} CPUs. "
              "bytes_per_image: resident memory grown while building / n; index_bytes_per_image: the snapshot.",
              "Goal at 1M x 512: global p99 < 5 ms with recall@100 >= 0.95.", ""]
    from asymfuse.cloud.bench.serve_milvus import milvus_report_lines

    lines += milvus_report_lines(report)
    return "\n".join(lines)

