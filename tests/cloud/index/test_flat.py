"""Exact inner-product search against NumPy brute force."""

from __future__ import annotations

import os

import numpy as np
import pytest
from asymfuse.cloud.index import flat
from asymfuse.cloud.eval.evaluate import rank_features
from asymfuse.cloud.index.flat import FlatIndex, search
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError


def _brute_force(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: scores xq @ xb.T, order by decreasing score then increasing gallery index."""
    S = xq.astype(np.float64) @ xb.astype(np.float64).T
    I = np.array([np.lexsort((np.arange(xb.shape[0]), -row))[:k] for row in S], dtype=np.int64)
    I = I.reshape(xq.shape[0], min(k, xb.shape[0]))
    return np.take_along_axis(S, I, axis=1), I


def _int_vectors(rng, n, d, lo=-2, hi=3):
    """Small integers: every inner product is exact in float32, so ties are exact ties."""
    return rng.integers(lo, hi, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 37, 80])
def test_search_matches_brute_force_with_ties(k):
    rng = np.random.default_rng(k)
    xb, xq = _int_vectors(rng, 80, 3), _int_vectors(rng, 31, 3)  # d=3 -> many exact ties
    D, I = search(xq, xb, k=k)
    D_ref, I_ref = _brute_force(xq, xb, k)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (31, k)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref.astype(np.float32))


def test_boundary_ties_return_lowest_indices():
    # 12 identical gallery vectors: every score ties; k=5 must give indices 0..4 in order.
    xb = np.ones((12, 4), dtype=np.float32)
    xq = np.ones((25, 4), dtype=np.float32)  # >= 20 queries takes faiss's BLAS path too
    _, I = search(xq, xb, k=5)
    np.testing.assert_array_equal(I, np.tile(np.arange(5), (25, 1)))
    _, I = search(xq[:1], xb, k=5)  # single query: faiss's sequential path
    np.testing.assert_array_equal(I, [np.arange(5)])


def test_tie_resolution_searches_deeper(monkeypatch):
    # A fake faiss index that, among tied scores, keeps the HIGHEST indices at the cut-off,
    # to prove the rule does not depend on faiss's own tie behaviour.
    scores = np.array([[5.0, 3, 3, 3, 3, 3, 3, 3, 1]], dtype=np.float32)

    class Adversarial:
        ntotal = scores.shape[1]

        def search(self, xq, k):
            order = np.lexsort((-np.arange(self.ntotal), -scores[0]))[:k]
            return scores[:, order].repeat(len(xq), 0), np.tile(order, (len(xq), 1))

    D, I = flat._search_index(Adversarial(), np.zeros((2, 1), np.float32), 3)
    np.testing.assert_array_equal(I, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(D, [[5, 3, 3], [5, 3, 3]])


def test_search_float_data_matches_brute_force():
    rng = np.random.default_rng(7)
    xb = rng.standard_normal((300, 32)).astype(np.float32)
    xq = rng.standard_normal((40, 32))  # float64 input is converted
    D, I = search(xq, xb, k=10)
    S = xq.astype(np.float32).astype(np.float64) @ xb.astype(np.float64).T
    # The scores faiss returns are the true scores of the returned items ...
    np.testing.assert_allclose(D, np.take_along_axis(S, I, axis=1), rtol=0, atol=1e-4)
    # ... and they are the top 10 (up to float32 rounding).
    kth = np.sort(S, axis=1)[:, ::-1][:, 9]
    assert np.all(D[:, -1] >= kth - 1e-4)
    assert np.all(np.diff(D, axis=1) <= 0)


def test_k_larger_than_nb_is_clipped():
    rng = np.random.default_rng(1)
    xb, xq = _int_vectors(rng, 6, 4), _int_vectors(rng, 3, 4)
    D, I = search(xq, xb, k=50)
    assert D.shape == I.shape == (3, 6)
    np.testing.assert_array_equal(I, _brute_force(xq, xb, 6)[1])
    assert (I >= 0).all()


def test_rank_features_is_the_brute_force_ranking_in_revisitop_layout():
    rng = np.random.default_rng(2)
    xb, xq = _int_vectors(rng, 50, 3), _int_vectors(rng, 9, 3)
    ranks = rank_features(xq, xb)
    assert ranks.shape == (50, 9) and ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, _brute_force(xq, xb, 50)[1].T)
    # every column is a permutation of the gallery
    np.testing.assert_array_equal(np.sort(ranks, axis=0), np.tile(np.arange(50)[:, None], (1, 9)))


def test_empty_query_batch():
    D, I = search(np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32), k=2)
    assert D.shape == I.shape == (0, 2)


@pytest.mark.parametrize("xq, xb, k, err, match", [
    (np.ones((2, 3)), np.ones((4, 5)), 1, ShapeError, "xq has d=3 but xb has d=5"),
    (np.ones(3), np.ones((4, 3)), 1, ShapeError, "2-D"),
    (np.array([[np.nan, 0, 0]]), np.ones((4, 3)), 1, ShapeError, "NaN"),
    (np.ones((1, 3)), np.array([[np.inf, 0, 0]]), 1, ShapeError, "NaN or inf"),
    (np.ones((1, 3)), np.zeros((0, 3)), 1, ShapeError, "empty"),
    (np.ones((1, 3)), np.ones((4, 3)), 0, ConfigError, "positive int"),
    (np.array([["a", "b"]]), np.ones((4, 2)), 1, ShapeError, "numeric"),
])
def test_bad_inputs(xq, xb, k, err, match):
    with pytest.raises(err, match=match):
        search(xq, xb, k=k)


# ---- FlatIndex ----------------------------------------------------------------------------

def test_flat_index_add_search_and_misuse():
    rng = np.random.default_rng(3)
    xb, xq = _int_vectors(rng, 40, 3), _int_vectors(rng, 5, 3)
    with FlatIndex(3) as index:
        with pytest.raises(ConfigError, match="empty"):
            index.search(xq, k=2)
        index.add(xb[:25])
        index.add(xb[25:])  # appended after the first batch
        assert index.ntotal == 40 and index.d == 3
        D, I = index.search(xq, k=7)
        np.testing.assert_array_equal(I, _brute_force(xq, xb, 7)[1])
        with pytest.raises(ShapeError, match="xb has d=4 but the index has d=3"):
            index.add(np.ones((2, 4)))
        with pytest.raises(ShapeError, match="xq has d=2 but the index has d=3"):
            index.search(np.ones((2, 2)), k=1)
    with pytest.raises(ConfigError, match="closed"):
        index.search(xq, k=1)
    with pytest.raises(ConfigError, match="closed"):
        _ = index.ntotal
    index.close()  # twice is fine
    with pytest.raises(ConfigError, match="positive int"):
        FlatIndex(0)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    xb, xq = _int_vectors(rng, 30, 5), _int_vectors(rng, 4, 5)
    path = tmp_path / "gallery.faiss"
    with FlatIndex(5) as index:
        index.add(xb)
        expected = index.search(xq, k=6)
        index.save(path)
    assert os.listdir(tmp_path) == ["gallery.faiss"]  # no temp file left behind
    with FlatIndex.load(path) as loaded:
        assert loaded.ntotal == 30 and loaded.d == 5
        got = loaded.search(xq, k=6)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "gallery.faiss"
    with FlatIndex(2) as index:
        index.add(np.ones((3, 2)))
        index.save(path)
    before = path.read_bytes()
    faiss = flat._faiss()

    def broken_write(idx, fname):
        with open(fname, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with FlatIndex(2) as index:
        index.add(np.ones((5, 2)))
        with pytest.raises(CorruptDataError, match="disk full"):
            index.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["gallery.faiss"]


def test_load_rejects_missing_corrupt_and_wrong_metric(tmp_path):
    with pytest.raises(CorruptDataError, match="no index file"):
        FlatIndex.load(tmp_path / "none.faiss")
    junk = tmp_path / "junk.faiss"
    junk.write_bytes(b"not a faiss index")
    with pytest.raises(CorruptDataError, match="not a readable faiss index"):
        FlatIndex.load(junk)
    faiss = flat._faiss()
    l2 = faiss.IndexFlatL2(3)
    faiss.write_index(l2, str(tmp_path / "l2.faiss"))
    with pytest.raises(CorruptDataError, match="IndexFlatIP"):
        FlatIndex.load(tmp_path / "l2.faiss")
    with FlatIndex(2) as index, pytest.raises(ConfigError, match="does not exist"):
        index.save(tmp_path / "missing-dir" / "x.faiss")
