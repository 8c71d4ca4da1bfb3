"""The demo's phone-side stage: the torch-free edge SDK against the running searcher.

After the export stage, the exported int8 TFLite query net is loaded by
:class:`~asymfuse.edge.embedder.ImageEmbedder` (LiteRT, preprocessing from the ModelSpec inside the
file), the serving stage's index folder is served again on a free loopback port, and each test
query photo (cropped to its bbx, as the phone's camera frame) is embedded on "the phone" and sent
with its SIFT descriptors, as in the serving stage. The row holds the mAP of those answers, its
drop against the torch query net's row through the same searcher (the export gate allows 1 point),
the number of queries whose whole ranking equals the torch query net's (which equals the offline
evaluation, checked by the serving stage), and the end-to-end latency per query (embed + gRPC +
AMES), p50 / p99.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.data.records import RetrievalDataset

EDGE_KIND = "edge SDK → gRPC"
MAP_TOLERANCE = 1.0  # points of mAP Medium, the export gate's allowance


@dataclass(frozen=True)
class EdgeStageResult:
    """The stage's row and what it measured."""

    row: dict[str, Any]
    model: Path
    map_drop: float
    rankings_equal: int
    p50_ms: float
    p99_ms: float

    def info(self) -> dict[str, Any]:
        return {"model": str(self.model), "map_drop": round(self.map_drop, 2), "within_gate": self.within_gate,
                "rankings_equal_torch": self.rankings_equal,
                "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2)}

    @property
    def within_gate(self) -> bool:
        return self.map_drop <= MAP_TOLERANCE


def run_edge_stage(*, test: RetrievalDataset, model: Path, index_dir: Path, query_locals: Any, top_m: int, lq: int,
                   torch_row: dict[str, Any], torch_ranks: np.ndarray, label: str) -> EdgeStageResult:
    """Embed every test query with the edge SDK, search over gRPC, score (see the module docstring).

    Args:
        model: the exported file (``.tflite`` or ``.onnx``); index_dir: the serving stage's folder.
        query_locals: an ``ArrayLocals`` of the test queries; top_m, lq: as in the serving stage.
        torch_row, torch_ranks: the serving stage's row and ``(nb, nq)`` ranks (torch query vectors
            through the same searcher).
        label: the row label.
    """
    from asymfuse.cloud.eval.evaluate import evaluate_ranking
    from asymfuse.cloud.service.config import ServerConfig
    from asymfuse.cloud.service.server import create_server
    from asymfuse.edge.embedder import ImageEmbedder
    from asymfuse.edge.options import ImageEmbedderOptions
    from asymfuse.edge.search_client import ClientConfig, SearchClient

    position = {key: j for j, key in enumerate(test.gallery_ids)}
    ranks = np.zeros((test.nb, test.nq), dtype=np.int64)
    latencies = []
    config = ServerConfig(index_dir=str(index_dir), rerank_top_m=top_m, max_k=max(1000, test.nb),
                          snapshot_interval_s=0)
    server, port = create_server(config)
    try:
        with ImageEmbedder.create_from_options(ImageEmbedderOptions(model_path=str(model), num_threads=2)) as phone:
            client_config = ClientConfig(target=f"127.0.0.1:{port}", timeout_s=120, check_on_connect=True,
                                         embedding_space_id=phone.model_spec.embedding_space_id)
            with SearchClient(client_config) as client:
                for i in range(test.nq):
                    image = test.load_query_image(i)
                    desc, pad = query_locals.descriptors([i], length=lq)
                    t0 = time.perf_counter()
                    vector = phone.embed(image).embedding
                    hits = client.search(vector, k=test.nb, locals_=desc[0], pad=pad[0], rerank_top_m=top_m)
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    ranks[:, i] = [position[h.metadata["key"]] for h in hits]
    finally:
        server.stop(0)
    metrics = evaluate_ranking(ranks, test)
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
    drop = float(torch_row["mAP_medium"]) - float(metrics["mAP_medium"])
    equal = int(sum(np.array_equal(ranks[:, i], torch_ranks[:, i]) for i in range(test.nq)))
    row = {"feature": label, "kind": EDGE_KIND, "dim": int(vector.shape[0]), "p50_ms": round(p50, 1),
           "p99_ms": round(p99, 1), "map_drop_vs_torch": round(drop, 2),
           "rankings_equal_torch": f"{equal}/{test.nq}",
           **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return EdgeStageResult(row=row, model=model, map_drop=drop, rankings_equal=equal, p50_ms=p50, p99_ms=p99)
