"""VLAD against a per-descriptor brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.features.aggregate import VladCodebook, train_vlad_codebook, vlad
from asymfuse.edge.errors import ShapeError


def reference_vlad(desc, mask, centroids):
    k, d = centroids.shape
    out = []
    for img, m in zip(desc, mask):
        v = np.zeros((k, d))
        for x, pad in zip(img, m):
            if pad:
                continue
            j = int(np.argmin(((centroids - x) ** 2).sum(1)))
            v[j] += x - centroids[j]
        n = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.where(n > 0, v / np.where(n > 0, n, 1), 0).ravel()
        v = np.sign(v) * np.sqrt(np.abs(v))
        nv = np.linalg.norm(v)
        out.append(v / nv if nv > 0 else v)
    return np.array(out)


def test_vlad_matches_brute_force():
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(3, 20, 8)).astype(np.float32)
    mask = rng.random((3, 20)) < 0.3
    mask[2] = True  # an image with no descriptors
    book = train_vlad_codebook(desc[~mask], k=4, seed=1)
    got = vlad(desc, mask, book)
    np.testing.assert_allclose(got, reference_vlad(desc, mask, book.centroids), atol=1e-5)
    assert got.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(got[:2], axis=1), 1.0, atol=1e-5)
    assert np.all(got[2] == 0)


def test_codebook_and_shape_errors():
    with pytest.raises(ShapeError, match="lower k"):
        train_vlad_codebook(np.zeros((3, 4), np.float32), k=8)
    book = VladCodebook(np.zeros((2, 4), np.float32))
    with pytest.raises(ShapeError, match="codebook"):
        vlad(np.zeros((1, 3, 5), np.float32), np.zeros((1, 3), bool), book)
