"""bench serve end to end on a tiny gallery: every column filled, exact rows exact, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asymfuse.cloud.bench.serve_bench import ServeBenchConfig, _factory_for, run_serve_bench, synthetic_vectors
from asymfuse.edge.errors import ConfigError


def test_tiny_run_fills_every_column(tmp_path):
    cfg = ServeBenchConfig.preset("quick").with_overrides({
        "sizes": [3000], "dim": 64, "factories": ["Flat", "HNSW32", "IVF4096,SQ8"], "queries": 30, "clients": 2,
        "ames_queries": 2, "lq": 8, "lx": 6, "local_dim": 16, "milvus": "off"})
    result = run_serve_bench(cfg, out_dir=tmp_path, log=lambda *_: None)
    rows = result["rows"]
    assert [(r.factory, r.ames) for r in rows] == [("Flat", False), ("Flat", True), ("HNSW32", False),
                                                   ("HNSW32", True), ("IVF76,SQ8", False), ("IVF76,SQ8", True)]
    flat = rows[0]
    assert flat.recall_at_100 == pytest.approx(1.0)  # exact search is exact
    for r in rows:
        assert r.qps > 0 and 0 < r.inproc_p50_ms <= r.inproc_p99_ms and 0 < r.grpc_p50_ms <= r.grpc_p99_ms
        assert r.build_s > 0 and r.index_bytes_per_image > 0
    assert rows[1].inproc_p50_ms > rows[0].inproc_p50_ms  # AMES re-ranking costs time
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["rows"]) == 6 and "| 3000 | Flat |" in (tmp_path / "report.md").read_text()


@pytest.mark.slow  # ~30 s: two collections and AMES codes on the embedded Milvus
def test_tiny_run_adds_milvus_rows(tmp_path, milvus_server):
    cfg = ServeBenchConfig.preset("quick").with_overrides({
        "sizes": [2000], "dim": 32, "factories": ["Flat"], "milvus_factories": ["Flat", "HNSW32"], "queries": 20,
        "clients": 2, "ames_queries": 2, "lq": 8, "lx": 6, "local_dim": 16, "milvus": milvus_server.uri})
    result = run_serve_bench(cfg, out_dir=tmp_path, log=lambda *_: None)
    rows = result["rows"]
    assert [(r.factory, r.ames) for r in rows] == [("Flat", False), ("Flat", True), ("milvus:Flat", False),
                                                   ("milvus:Flat", True), ("milvus:HNSW32", False),
                                                   ("milvus:HNSW32", True)]
    assert rows[2].recall_at_100 == pytest.approx(1.0) and rows[4].recall_at_100 > 0.9
    for r in rows[2:]:
        assert r.qps > 0 and 0 < r.grpc_p50_ms <= r.grpc_p99_ms and r.build_s > 0
        assert r.notes["ames_fetch_p50_ms"] > 0 and r.notes["fetch_missing"] == 0
    text = (tmp_path / "report.md").read_text()
    assert "| 2000 | milvus:HNSW32 |" in text and "AMES codes of the top 100 fetched from Milvus" in text


def test_config_and_helpers():
    with pytest.raises(ConfigError, match="unknown bench serve setting"):
        ServeBenchConfig.preset("quick").with_overrides({"nope": 1})
    with pytest.raises(ConfigError, match="tier"):
        ServeBenchConfig.preset("huge")
    one = ServeBenchConfig.preset("quick").with_overrides({"sizes": 5000, "factories": "IVF64,SQ8"})
    assert (one.sizes, one.factories) == ((5000,), ("IVF64,SQ8",))  # `--set sizes=5000`: one value
    assert _factory_for("IVF4096,PQ64", 100_000, True) == "IVF2564,PQ64"
    assert _factory_for("OPQ64,IVF4096,PQ64", 10**6, True) == "OPQ64,IVF4096,PQ64"
    x = synthetic_vectors(10, 8, seed=0, chunk=3)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
