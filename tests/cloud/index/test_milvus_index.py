"""The Milvus backend on a real (embedded) Milvus 2.3.5 server: brute-force oracle, HNSW recall,
the faiss backend's write and filter semantics, reopening, and misuse. Config checks need no server."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from asymfuse.cloud.index.base import Index, IndexUnavailableError
from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig, UnknownIdError
from asymfuse.cloud.index.index_meta import IndexMeta
from asymfuse.cloud.index.milvus_config import MilvusIndexConfig, MilvusTarget, is_milvus_url
from asymfuse.cloud.index.milvus_index import MilvusIndex, filter_expr
from asymfuse.edge.errors import ClosedError, ConfigError, ShapeError


def unit_vectors(n: int, d: int, *, seed: int, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bulk_index(target: MilvusTarget, xb: np.ndarray, config: MilvusIndexConfig, *, keys: bool = True) -> MilvusIndex:
    """``index build``'s path: create, insert, flush, then index and load."""
    meta = IndexMeta(dim=xb.shape[1], config=config.to_dict(), embedding_space_id="space-m")
    index = MilvusIndex.create(target, meta=meta, ready=False)
    ids = np.arange(xb.shape[0], dtype=np.int64)
    index.insert_new(ids, xb, [{"key": f"img{i}"} if keys else {} for i in ids])
    index.finish_build()
    return index


def assert_ranks_like(D, I, want_scores, want_ids, *, atol=1e-5):
    """Same scores; same ids except where two neighbours' scores are within float32 noise."""
    np.testing.assert_allclose(D, want_scores, atol=atol)
    for d_row, got, want in zip(want_scores, I, want_ids):
        differ = np.flatnonzero(got != want)
        for j in differ:  # a swap is fine only among (near-)equal scores
            close = np.abs(d_row - d_row[j]) <= atol
            assert got[j] in set(want[close].tolist()), (got, want)


# ---------------------------------------------------------------------------------------- no server
def test_config_checks_and_factory_translation():
    for bad, match in (("DISKANN", "DISKANN is refused.*crashed"), ("SCANN", "unknown Milvus index type"),
                       ("hnsw", "unknown Milvus index type")):
        with pytest.raises(ConfigError, match=match):
            MilvusIndexConfig(index_type=bad)
    with pytest.raises(ConfigError, match="IP or COSINE"):
        MilvusIndexConfig(metric="L2")
    with pytest.raises(ConfigError, match="hnsw_m"):
        MilvusIndexConfig(hnsw_m=0)
    with pytest.raises(ConfigError, match="divide the dim"):
        MilvusIndexConfig(index_type="IVF_PQ", pq_m=48).check_dim(100)
    assert MilvusIndexConfig.from_factory("Flat").index_type == "FLAT"
    hnsw = MilvusIndexConfig.from_factory("HNSW16", ef_search=64)
    assert (hnsw.index_type, hnsw.hnsw_m, hnsw.search_params(100)) == ("HNSW", 16, {"ef": 100})
    pq = MilvusIndexConfig.from_factory("IVF256,PQ16x4")
    assert (pq.index_type, pq.build_params()) == ("IVF_PQ", {"nlist": 256, "m": 16, "nbits": 4})
    assert MilvusIndexConfig.from_factory("IVF64,SQ8", nprobe=500).search_params(10) == {"nprobe": 64}
    with pytest.raises(ConfigError, match="no Milvus counterpart"):
        MilvusIndexConfig.from_factory("OPQ16,IVF64,PQ16")
    assert MilvusIndexConfig.from_dict(hnsw.to_dict()) == hnsw


def test_urls_and_targets():
    t = MilvusTarget.from_url("milvus://db.local:19531/gallery_v2", token="u:p")
    assert (t.uri, t.collection, t.url) == ("http://db.local:19531", "gallery_v2", "milvus://db.local:19531/gallery_v2")
    assert "u:p" not in repr(t)
    assert MilvusTarget.from_url("milvus+https://db.example.com/g").uri == "https://db.example.com:19530"
    assert is_milvus_url("milvus://h:1/c") and not is_milvus_url("runs/index")
    for bad in ("http://h:1/c", "milvus://h:1/", "milvus:///c"):
        with pytest.raises(ConfigError):
            MilvusTarget.from_url(bad)
    with pytest.raises(ConfigError, match="collection name"):
        MilvusTarget(uri="http://h:1", collection="1bad-name")
    with pytest.raises(ConfigError, match="Session or Strong"):
        MilvusTarget(uri="http://h:1", collection="c", consistency="Eventually")
    assert filter_expr('we"ird', ['a"b', "c\\d"]) == 'meta["we\\"ird"] in ["a\\"b", "c\\\\d"]'


def test_an_unreachable_server_fails_fast_with_a_clear_error():
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'asymfuse[milvus]'")
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(IndexUnavailableError, match=f"127.0.0.1:{port} is unreachable.*docker-compose"):
        MilvusIndex.open(MilvusTarget(uri=f"http://127.0.0.1:{port}", collection="g", timeout_s=2))
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------------------------------- embedded server
def test_flat_top_k_equals_numpy_brute_force(milvus_target):
    xb = unit_vectors(2000, 32, seed=0)
    xq = unit_vectors(20, 32, seed=1)
    with bulk_index(milvus_target, xb, MilvusIndexConfig(index_type="FLAT")) as index:
        assert isinstance(index, Index) and index.size == 2000 and index.dim == 32
        D, I = index.search(xq, k=50)
        scores = xq @ xb.T
        want = np.lexsort((np.broadcast_to(np.arange(2000), scores.shape), -scores), axis=-1)[:, :50]
        assert_ranks_like(D, I, np.take_along_axis(scores, want, axis=1), want)
        assert index.metadata(I[0, :3].tolist()) == [{"key": f"img{i}"} for i in I[0, :3]]
        D, I = index.search(xq[:2], k=3000)  # more than the collection holds: padded
        assert (I[:, 2000:] == -1).all() and np.isneginf(D[:, 2000:]).all() and (I[:, :2000] >= 0).all()


def test_hnsw_recall_at_100_on_20k_vectors(milvus_target):
    xb = unit_vectors(20_000, 64, seed=2, clusters=200)
    xq = unit_vectors(100, 64, seed=3, clusters=200)
    config = MilvusIndexConfig(index_type="HNSW", hnsw_m=32, ef_construction=200, ef_search=400)
    with bulk_index(milvus_target, xb, config, keys=False) as index:
        _, I = index.search(xq, k=100)
    truth = np.argsort(-(xq @ xb.T), axis=1)[:, :100]
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 100 for a, b in zip(I, truth)])
    assert recall >= 0.95, recall


@pytest.mark.slow  # ~8 s each: a flush, an IVF build and a load per type
@pytest.mark.parametrize("index_type", ["IVF_FLAT", "IVF_SQ8", "IVF_PQ"])
def test_ivf_index_types_build_and_search(milvus_target, index_type):
    xb = unit_vectors(3000, 32, seed=4)
    config = MilvusIndexConfig(index_type=index_type, nlist=32, nprobe=32, pq_m=8)
    with bulk_index(milvus_target, xb, config) as index:
        _, I = index.search(xb[:20], k=10)
    assert np.mean(I[:, 0] == np.arange(20)) >= 0.9  # each vector finds itself (PQ: approximately)


def test_writes_and_filters_match_the_faiss_backend(milvus_target):
    x = unit_vectors(300, 16, seed=5)
    meta = [{"key": f"img{i}", "shop": "ab"[i % 2]} for i in range(300)]
    faiss_index = FaissIndex.create(config=IndexConfig(factory="Flat"), dim=16)
    milvus = MilvusIndex.create(milvus_target, meta=IndexMeta(dim=16, config=MilvusIndexConfig().to_dict(),
                                                              embedding_space_id="s"))
    new = unit_vectors(4, 16, seed=6)
    with milvus:
        for index in (faiss_index, milvus):
            index.upsert(np.arange(300), x, meta)
            index.upsert([7, 1000, 1001, 1002], new, [{"shop": "c"}, {"shop": "a"}, {}, {"shop": "b", "x": "y"}])
            index.delete([3, 4, 1001])
            with pytest.raises(UnknownIdError, match="nothing was deleted"):
                index.delete([5, 3])  # 3 is gone: all or nothing, 5 stays
        assert milvus.size == faiss_index.size == 300 and 5 in milvus and 3 not in milvus and 1001 not in milvus
        xq = np.concatenate([unit_vectors(5, 16, seed=7), new])
        for field, values in (("", ()), ("shop", ["a"]), ("shop", ["c", "b"]), ("x", ["y"]), ("shop", ["none"]),
                              ("nofield", ["a"])):
            want = faiss_index.search(xq, k=20, filter_field=field, filter_values=values)
            got = milvus.search(xq, k=20, filter_field=field, filter_values=values)
            assert_ranks_like(got[0], got[1], *want)
            ids = [int(i) for i in got[1][0] if i >= 0]
            assert milvus.metadata(ids) == [faiss_index.metadata(i) for i in ids]
        assert milvus.metadata([7, 1001, 99_999]) == [{"shop": "c"}, {}, {}]  # a query, not the last search


def test_reopening_keeps_every_acknowledged_write(milvus_target):
    x = unit_vectors(50, 8, seed=8)
    meta = IndexMeta(dim=8, config=MilvusIndexConfig(index_type="HNSW").to_dict(), embedding_space_id="s",
                     model_spec={"name": "q"})
    with MilvusIndex.create(milvus_target, meta=meta) as index:
        seqs = [index.upsert(np.arange(50), x, [{"key": str(i)} for i in range(50)]),
                index.upsert([50], x[:1] * -1, [{"key": "neg"}]), index.delete([0, 1])]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
    with pytest.raises(ClosedError, match="closed"):
        index.search(x[:1], k=1)
    with MilvusIndex.open(milvus_target) as again:  # a new client
        assert again.size == 49 and 0 not in again and 50 in again
        assert again.meta.model_spec == {"name": "q"} and again.config.index_type == "HNSW"
        _, I = again.search(x[2:3], k=1)
        assert I[0, 0] == 2 and again.metadata([50]) == [{"key": "neg"}]


def test_bad_input_is_refused_before_anything_is_written(milvus_target):
    meta = IndexMeta(dim=8, config=MilvusIndexConfig().to_dict(), embedding_space_id="s")
    x = unit_vectors(3, 8, seed=9)
    with MilvusIndex.create(milvus_target, meta=meta) as index:
        with pytest.raises(ShapeError, match="dim 9 but the index has dim 8"):
            index.upsert([1], np.ones((1, 9), np.float32))
        with pytest.raises(ShapeError, match="NaN"):
            index.upsert([1, 2], np.full((2, 8), np.nan, np.float32))
        with pytest.raises(ShapeError, match="duplicates"):
            index.upsert([1, 1], x[:2])
        with pytest.raises(ShapeError, match="metadata"):
            index.upsert([1], x[:1], [{"a": 1}])
        with pytest.raises(ShapeError, match="dim 4"):
            index.search(np.ones((1, 4), np.float32), k=1)
        with pytest.raises(ShapeError, match="NaN"):
            index.search(np.full((1, 8), np.nan, np.float32), k=1)
        with pytest.raises(ConfigError, match="16384"):
            index.search(x[:1], k=20_000)
        assert index.size == 0
        with pytest.raises(ConfigError, match="already exists"):
            MilvusIndex.create(milvus_target, meta=meta)
    with pytest.raises(ConfigError, match="no collection .*asymfuse index build"):
        MilvusIndex.open(milvus_target.sibling(milvus_target.collection + "_missing"))


def test_an_unfinished_build_is_not_served(milvus_target):
    meta = IndexMeta(dim=8, config=MilvusIndexConfig().to_dict(), embedding_space_id="s")
    MilvusIndex.create(milvus_target, meta=meta, ready=False).close()
    with pytest.raises(ConfigError, match="still being built.*resume"):
        MilvusIndex.open(milvus_target)
