"""The demo's serving stage: the phone flow through a real gRPC searcher.

It does what the README tells a cloud team to do: ``index fuse`` the test gallery with the AFF
mixer, ``index build`` it with the AMES checkpoint and the packed test gallery (λ/γ as chosen for
the asymmetric search), then starts the searcher in-process on a free loopback port. Each test
query is sent the way a phone sends it: the query net's vector, its local descriptors, and the
query net's embedding space id. The stage checks that the gRPC rankings equal the offline
evaluation (:func:`~asymfuse.cloud.ames.evaluate.evaluate_ames` on the same vectors) and adds a row
with the mAP measured from the gRPC answers and the per-query latency (p50 / p99).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.data.records import RetrievalDataset

GRPC_KIND = "gRPC searcher"


@dataclass(frozen=True)
class ServeStageResult:
    """The stage's row and what it checked."""

    row: dict[str, Any]
    index_dir: Path
    rankings_equal: int
    queries: int
    p50_ms: float
    p99_ms: float
    ranks: np.ndarray  # (nb, nq) gallery positions per query, as answered over gRPC (= offline)

    def info(self) -> dict[str, Any]:
        return {"index_dir": str(self.index_dir), "rankings_equal": self.rankings_equal, "queries": self.queries,
                "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2)}


def run_serve_stage(*, test: RetrievalDataset, xq: np.ndarray, mixer: Path, gallery_stores: list[Path],
                    ames_checkpoint: Path, packed: Path, query_locals: Any, lam: float, gamma: float, top_m: int,
                    lq: int, lx: int, label: str, out_dir: Path, space: str) -> ServeStageResult:
    """Build, serve, query over gRPC and compare (see the module docstring).

    Args:
        xq: ``(nq, d)`` the query net's test vectors; query_locals: an ``ArrayLocals`` of the test queries.
        gallery_stores: the test gallery's feature stores in the mixer's order.
        label: the row label of the asymmetric search (the row is ``"<label> + AMES via gRPC"``).
    """
    import shutil

    from asymfuse.cloud.ames.checkpoint import load_ames
    from asymfuse.cloud.ames.evaluate import evaluate_ames
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.packed_store import PackedLocalStore
    from asymfuse.cloud.ames.scorer import AMESScorer
    from asymfuse.cloud.eval.evaluate import evaluate_ranking
    from asymfuse.cloud.index.build import build_index
    from asymfuse.cloud.index.fuse import fuse_stores
    from asymfuse.cloud.service.config import ServerConfig
    from asymfuse.cloud.service.server import create_server
    from asymfuse.edge.search_client import ClientConfig, SearchClient

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    fused = fuse_stores(mixer, gallery_stores, out_dir / "fused-test-gallery")
    fused.close()
    index_dir = out_dir / "index"
    build_index([fused.root], index_dir, ames=ames_checkpoint, packed=packed, lq=lq, lx=lx, lam=lam, gamma=gamma)
    model, _ = load_ames(ames_checkpoint, variant="binary")
    options = RerankOptions(top_m=top_m, lam=lam, gamma=gamma, lq=lq, lx=lx)
    position = {key: j for j, key in enumerate(test.gallery_ids)}
    xb = fused_vectors(fused.root, order=test.gallery_ids)
    with PackedLocalStore.open(packed, model=model) as gallery:
        offline = evaluate_ames(dataset=test, xq=xq, xb=xb, query_locals=query_locals, gallery=gallery,
                                scorer=AMESScorer(model), options=options)
    config = ServerConfig(index_dir=str(index_dir), rerank_top_m=top_m, max_k=max(1000, test.nb),
                          snapshot_interval_s=0)
    server, port = create_server(config)
    ranks = np.zeros((test.nb, test.nq), dtype=np.int64)
    latencies = []
    equal = 0
    try:
        with SearchClient(ClientConfig(target=f"127.0.0.1:{port}", embedding_space_id=space, timeout_s=120)) as client:
            for i in range(test.nq):
                desc, pad = query_locals.descriptors([i], length=lq)
                t0 = time.perf_counter()
                hits = client.search(xq[i], k=test.nb, locals_=desc[0], pad=pad[0], rerank_top_m=top_m)
                latencies.append((time.perf_counter() - t0) * 1e3)
                order = np.array([position[h.metadata["key"]] for h in hits], dtype=np.int64)
                ranks[:, i] = order
                equal += int(np.array_equal(order, offline.ames_ranks[:, i]))
    finally:
        server.stop(0)
    metrics = evaluate_ranking(ranks, test)
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
    row = {"feature": f"{label} + AMES via gRPC", "kind": GRPC_KIND, "dim": int(xq.shape[1]),
           "rankings_equal_offline": f"{equal}/{test.nq}", "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
           **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return ServeStageResult(row=row, index_dir=index_dir, rankings_equal=equal, queries=test.nq, p50_ms=p50,
                            p99_ms=p99, ranks=ranks)


def fused_vectors(root: Path, *, order: list[str]) -> np.ndarray:
    """``(len(order), d)`` the fused store's vectors, rows in ``order`` (image ids)."""
    from asymfuse.cloud.features.store_reader import FeatureStore

    with FeatureStore.open(root) as store:
        x = np.asarray(store.global_features())
        row = {key: i for i, key in enumerate(store.ids)}
        return np.ascontiguousarray(x[[row[key] for key in order]])
