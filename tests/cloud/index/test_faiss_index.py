"""FaissIndex against NumPy brute force: ids, updates, deletes, HNSW tombstones, filters, recall."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig, UnknownIdError
from asymfuse.edge.errors import ConfigError, ShapeError


def unit(n, d, *, seed, clusters=100):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d))
    x = c[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(xb, ids, xq, k, allowed=None):
    s = xq @ xb.T
    if allowed is not None:
        s = np.where(np.isin(ids, allowed)[None, :], s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(s, order, axis=1)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_writes_then_search_equal_brute_force_of_the_live_set(factory):
    xb, xq = unit(2000, 16, seed=0), unit(10, 16, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3  # user ids, not positions
    index = FaissIndex.create(config=IndexConfig(factory=factory, nprobe=16), dim=16)
    index.train(xb)
    index.upsert(ids, xb, [{"shop": "ab"[i % 2]} for i in range(2000)])
    new = unit(50, 16, seed=2)
    index.upsert(ids[:50], new)  # replace: same ids, new vectors, metadata cleared
    index.delete(ids[100:150])
    live = np.concatenate([ids[:100], ids[150:]])
    vecs = np.concatenate([new, xb[50:100], xb[150:]])
    assert index.size == live.size == len(index.ids())
    want_i, want_d = exact(vecs, live, xq, 20)
    D, I = index.search(xq, k=20)
    if factory == "HNSW32":  # approximate, but every id is live and recall is high
        assert np.isin(I, live).all() and index.tombstones == 100
        assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(I, want_i)]) > 0.95
        assert index.compact() and index.tombstones == 0
        D, I = index.search(xq, k=20)
    np.testing.assert_array_equal(I, want_i)
    np.testing.assert_allclose(D, want_d, atol=1e-5)
    # filter: shop "a" items only (replaced items lost their metadata)
    allowed = ids[50:][(np.arange(50, 2000) % 2 == 0)]
    allowed = allowed[np.isin(allowed, live)]
    want_i, _ = exact(vecs, live, xq, 5, allowed)
    _, I = index.search(xq, k=5, filter_field="shop", filter_values=["a"])
    np.testing.assert_array_equal(I, want_i)


def test_k_above_size_pads_and_bytes_round_trip():
    xb = unit(5, 8, seed=3)
    index = FaissIndex.create(config=IndexConfig(), dim=8)
    index.upsert([10, 11, 12, 13, 14], xb, [{"key": f"k{i}"} for i in range(5)])
    D, I = index.search(xb[:1], k=8)
    assert I[0, :5].tolist()[0] == 10 and (I[0, 5:] == -1).all() and np.isneginf(D[0, 5:]).all()
    blob, meta = index.to_bytes()
    again = FaissIndex.from_bytes(config=index.config, index_bytes=blob, metadata_bytes=meta)
    np.testing.assert_array_equal(again.search(xb, k=3)[1], index.search(xb, k=3)[1])
    assert again.metadata(12) == {"key": "k2"}


def test_bad_input_is_refused_before_any_change():
    index = FaissIndex.create(config=IndexConfig(), dim=4)
    index.upsert([1, 2], unit(2, 4, seed=0))
    with pytest.raises(ShapeError, match="dim 5"):
        index.upsert([3], np.ones((1, 5)))
    with pytest.raises(ShapeError, match="NaN"):
        index.upsert([3], np.full((1, 4), np.nan))
    with pytest.raises(ShapeError, match="duplicates"):
        index.upsert([3, 3], np.ones((2, 4)))
    with pytest.raises(ShapeError, match="-1"):
        index.upsert([-1], np.ones((1, 4)))
    with pytest.raises(UnknownIdError, match=r"\[7\]"):
        index.delete([1, 7])
    assert index.size == 2 and 1 in index
    with pytest.raises(ConfigError, match="factory"):
        IndexConfig(factory="LSH")
    ivf = FaissIndex.create(config=IndexConfig(factory="IVF64,Flat"), dim=4)
    with pytest.raises(ConfigError, match="at least 64 training vectors"):
        ivf.train(unit(10, 4, seed=0))
    with pytest.raises(ConfigError, match="not trained"):
        ivf.upsert([1], unit(1, 4, seed=0))


@pytest.mark.parametrize("factory", ["HNSW32", "IVF128,Flat"])
def test_recall_at_100_on_20k_synthetic_vectors(factory):
    xb, xq = unit(20_000, 64, seed=0, clusters=200), unit(100, 64, seed=1, clusters=200)
    index = FaissIndex.create(config=IndexConfig(factory=factory), dim=64)
    index.train(xb)
    index.upsert(np.arange(20_000), xb)
    want, _ = exact(xb, np.arange(20_000), xq, 100)
    _, got = index.search(xq, k=100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, want)])
    print(f"{factory}: recall@100 vs exact = {recall:.4f}")
    assert recall >= 0.95
